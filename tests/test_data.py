"""Readers, registry and split of vaepipe.data, on generated files."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import fakedata
from vaepipe.data import arrays, catalog, formats, split
from vaepipe.data.catalog import DataFormatError


def test_registry_matches_torchvision() -> None:
    """The archive/member md5s and URLs copied into the registry are torchvision's."""
    datasets = pytest.importorskip("torchvision.datasets")
    assert dict(catalog.FASHION_MNIST.archives) == dict(datasets.FashionMNIST.resources)
    assert dict(catalog.MNIST.archives) == dict(datasets.MNIST.resources)
    assert catalog.MNIST.base_urls[0] in datasets.MNIST.mirrors
    assert catalog.FASHION_MNIST.base_urls[0] in datasets.FashionMNIST.mirrors
    cifar = datasets.CIFAR10
    assert catalog.CIFAR10.base_urls[0] + next(iter(catalog.CIFAR10.archives)) == cifar.url
    assert catalog.CIFAR10.archives[cifar.filename] == cifar.tgz_md5
    members = {n: m for n, m in cifar.train_list + cifar.test_list}
    members[cifar.meta["filename"]] = cifar.meta["md5"]
    assert dict(catalog.CIFAR10.raw_md5) == members


def test_class_names() -> None:
    names = {k: spec.class_names for k, spec in catalog.DATASETS.items()}
    assert names["fashion-mnist"][0] == "T-shirt/top"
    assert names["fashion-mnist"][9] == "Ankle boot"
    assert names["mnist"] == tuple("0123456789")
    assert names["cifar10"] == fakedata.CIFAR_LABEL_NAMES
    assert all(len(v) == 10 for v in names.values())


def test_read_idx_round_trips(tmp_path) -> None:
    for name, array in fakedata.idx_arrays(30, 10, seed=3).items():
        path = tmp_path / name
        path.write_bytes(fakedata.idx_bytes(array))
        back = formats.read_idx(path)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_bad_magic_and_size(tmp_path) -> None:
    good = fakedata.idx_bytes(np.zeros((4, 28, 28), np.uint8))
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x00\x00\x0d" + good[3:])  # 0x0d: float data
    with pytest.raises(DataFormatError, match=r"bad-magic: bad IDX magic 00000d03"):
        formats.read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(good[:-5])
    with pytest.raises(DataFormatError, match=r"short: 3147 bytes, .* need 3152"):
        formats.read_idx(short)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(DataFormatError, match="empty: bad IDX magic"):
        formats.read_idx(empty)


def test_cifar_reader_round_trips_in_chw_order(tmp_path) -> None:
    batches = fakedata.cifar_batches(n_per_batch=7, seed=1)
    rows, labels = batches["data_batch_1"]
    rows[0, :] = 0
    rows[0, 1024 + 32 * 5 + 6] = 200  # green plane, row 5, column 6
    path = tmp_path / "data_batch_1"
    path.write_bytes(fakedata.cifar_batch_bytes("data_batch_1", rows, labels))
    images, got_labels = formats.read_cifar_batch(path)
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(images.reshape(7, -1), rows)
    np.testing.assert_array_equal(got_labels, labels)
    assert images[0, 1, 5, 6] == 200 and images[0].sum() == 200


def test_cifar_reader_reads_python3_pickles_too(tmp_path) -> None:
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": rows, b"labels": [4, 2]}, protocol=2))
    images, labels = formats.read_cifar_batch(path)
    np.testing.assert_array_equal(images.reshape(2, -1), rows)
    assert labels.tolist() == [4, 2]


def test_fake_cifar_pickles_read_like_the_real_ones() -> None:
    """Python 2 pickles load with encoding="bytes" (ours) and "latin1" (torchvision's)."""
    rows, labels = fakedata.cifar_batches(3, seed=4)["test_batch"]
    blob = fakedata.cifar_batch_bytes("test_batch", rows, labels)
    as_bytes = pickle.loads(blob, encoding="bytes")
    as_latin1 = pickle.loads(blob, encoding="latin1")
    np.testing.assert_array_equal(as_bytes[b"data"], rows)
    np.testing.assert_array_equal(as_latin1["data"], rows)
    assert as_bytes[b"labels"] == labels.tolist()
    assert b"numpy.core.multiarray" in blob and b"_codecs" not in blob


def test_cifar_reader_refuses_foreign_pickles(tmp_path) -> None:
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps({b"data": print}, protocol=2))  # a global other than numpy's
    with pytest.raises(DataFormatError, match="data_batch_1: not a readable CIFAR-10 pickle"):
        formats.read_cifar_batch(evil)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(pickle.dumps({b"labels": [1]}, protocol=2))
    with pytest.raises(DataFormatError, match=r"wrong: not a CIFAR-10 batch"):
        formats.read_cifar_batch(wrong)


def test_load_raw_idx(tmp_path) -> None:
    fakedata.write_idx_mirror(tmp_path, n_train=40, n_test=20, gz=False, seed=5)
    arrays = fakedata.idx_arrays(40, 20, seed=5)
    train_x, train_y, test_x, test_y = formats.load_raw("fashion-mnist", tmp_path)
    assert train_x.shape == (40, 1, 28, 28) and test_x.shape == (20, 1, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64 and test_y.dtype == np.int64
    np.testing.assert_array_equal(train_x[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y, arrays["t10k-labels-idx1-ubyte"])


def test_load_raw_cifar(tmp_path) -> None:
    fakedata.write_cifar_files(tmp_path, n_per_batch=6, seed=2)
    batches = fakedata.cifar_batches(6, seed=2)
    train_x, train_y, test_x, test_y = formats.load_raw("cifar10", tmp_path)
    assert train_x.shape == (30, 3, 32, 32) and test_x.shape == (6, 3, 32, 32)
    assert train_y.dtype == np.int64
    np.testing.assert_array_equal(train_x[6:12].reshape(6, -1), batches["data_batch_2"][0])
    np.testing.assert_array_equal(test_y, batches["test_batch"][1])


def test_split_train_val_is_seeded_sorted_and_disjoint() -> None:
    train, val = split.split_train_val(60000, 0.1, 42)
    assert len(train) == 54000 and len(val) == 6000
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(60000))
    train2, val2 = split.split_train_val(60000, 0.1, 42)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(train, train2)
    assert not np.array_equal(val, split.split_train_val(60000, 0.1, 43)[1])
    expected_val = np.sort(np.random.default_rng(42).permutation(60000)[:6000])
    np.testing.assert_array_equal(val, expected_val)
    assert len(split.split_train_val(60000, 0.2, 42)[1]) == 12000


@pytest.mark.parametrize("n,fraction", [(5, 0.1), (10, 0.0), (10, 1.0)])
def test_split_train_val_refuses_empty_splits(n, fraction) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split.split_train_val(n, fraction, 0)


def test_write_split_and_manifest(tmp_path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "processed"
    fakedata.write_idx_mirror(raw, n_train=200, n_test=50, gz=False, seed=7)
    manifest = split.write_split(raw, out, "fashion-mnist", 0.1, 42)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "test.npz", "train.npz", "val.npz"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["dataset"] == "fashion-mnist"
    assert manifest["counts"] == {"train": 180, "val": 20, "test": 50}
    assert manifest["image_shape"] == [1, 28, 28]
    assert manifest["params"] == {"val_fraction": 0.1, "split_seed": 42}
    assert manifest["class_names"][0] == "T-shirt/top"
    assert sum(manifest["class_counts"]["test"].values()) == 50
    assert manifest["class_counts"]["test"] == {str(c): 5 for c in range(10)}  # balanced

    train_x, train_y, test_x, test_y = formats.load_raw("fashion-mnist", raw)
    train_idx, val_idx = split.split_train_val(200, 0.1, 42)
    expected = {"train": (train_x[train_idx], train_y[train_idx]),
                "val": (train_x[val_idx], train_y[val_idx]), "test": (test_x, test_y)}
    for name, (x, y) in expected.items():
        images, labels = arrays.load_split(out, name)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, x)
        np.testing.assert_array_equal(labels, y)
        assert manifest["md5"][name] == {"images": fakedata.md5_bytes(images.tobytes()),
                                         "labels": fakedata.md5_bytes(labels.tobytes())}
        counts = np.bincount(labels, minlength=10)
        assert manifest["class_counts"][name] == {str(c): int(k) for c, k in enumerate(counts)}
    assert not list(out.glob(".*"))  # no temporary files left

    again = split.write_split(raw, tmp_path / "again", "fashion-mnist", 0.1, 42)
    assert again["md5"] == manifest["md5"]
    for name in ("train.npz", "val.npz", "test.npz"):  # byte-identical files: DVC stays cached
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    other = split.write_split(raw, tmp_path / "other", "fashion-mnist", 0.1, 1)
    assert other["md5"]["val"] != manifest["md5"]["val"]
    assert other["md5"]["test"] == manifest["md5"]["test"]


def test_load_split_names_the_bad_file(tmp_path) -> None:
    np.savez(tmp_path / "train.npz", images=np.zeros((3, 1, 28, 28), np.float32),
             labels=np.zeros(3, np.int64))
    with pytest.raises(DataFormatError, match=r"train\.npz: 'images' must be uint8"):
        arrays.load_split(tmp_path, "train")
    np.savez(tmp_path / "val.npz", images=np.zeros((3, 1, 28, 28), np.uint8),
             labels=np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match=r"val\.npz: 'labels' must be int64 \(3,\)"):
        arrays.load_split(tmp_path, "val")
    (tmp_path / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match=r"test\.npz: not a readable \.npz"):
        arrays.load_split(tmp_path, "test")
    with pytest.raises(DataFormatError, match=r"nowhere.*train\.npz: not found"):
        arrays.load_split(tmp_path / "nowhere", "train")
