"""fetch_raw: source order, verification, atomic replacement and error messages.

Every test pins the sources explicitly (standard_dirs, base_urls), and downloads only ever go
to a local http.server on 127.0.0.1, never to the internet.
"""
from __future__ import annotations

import gzip
import logging
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

import fakedata
from vaepipe.data import formats, sources
from vaepipe.data.catalog import DataError, DataSourceError
from vaepipe.data.sources import fetch_raw

NO_DOWNLOAD: tuple[str, ...] = ()


def tree(directory: Path) -> dict[str, bytes]:
    """File name -> bytes of every file in ``directory``."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def leftovers(parent: Path) -> list[str]:
    """Hidden temporary entries fetch_raw might have left in ``parent``."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_gz_and_plain_mirrors_give_identical_raw_files(tmp_path, idx_mirror) -> None:
    mirror_gz, md5s = idx_mirror
    mirror_plain = tmp_path / "plain"
    assert fakedata.write_idx_mirror(mirror_plain, 200, 50, gz=False) == {
        k: v for k, v in md5s.items() if not k.endswith(".gz")}
    dest_gz, dest_plain = tmp_path / "raw" / "a", tmp_path / "raw" / "b"
    used = fetch_raw("fashion-mnist", dest_gz, mirror_gz, standard_dirs=(),
                     base_urls=NO_DOWNLOAD, expected_md5=md5s)
    assert used == f"mirror {mirror_gz}"
    fetch_raw("fashion-mnist", dest_plain, mirror_plain, standard_dirs=(),
              base_urls=NO_DOWNLOAD, expected_md5=md5s)
    assert tree(dest_gz) == tree(dest_plain)
    assert sorted(tree(dest_gz)) == sorted(fakedata.IDX_FILES)
    assert {n: fakedata.md5_bytes(b) for n, b in tree(dest_gz).items()} == {
        n: md5s[n] for n in fakedata.IDX_FILES}
    assert leftovers(tmp_path / "raw") == []

    # a second fetch replaces the directory wholesale: stale files do not survive
    (dest_gz / "stale").write_text("old")
    fetch_raw("fashion-mnist", dest_gz, mirror_plain, standard_dirs=(),
              base_urls=NO_DOWNLOAD, expected_md5=md5s)
    assert tree(dest_gz) == tree(dest_plain)


def test_md5_mismatch_is_rejected_by_name_and_keeps_the_old_dest(tmp_path, idx_mirror) -> None:
    mirror, md5s = idx_mirror
    dest = tmp_path / "raw" / "fashion-mnist"
    fetch_raw("fashion-mnist", dest, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD,
              expected_md5=md5s)
    good = tree(dest)

    gz = mirror / "train-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[-1] ^= 0xFF  # same size and structure, different pixels
    gz.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataSourceError) as err:
        fetch_raw("fashion-mnist", dest, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD,
                  expected_md5=md5s)
    message = str(err.value)
    assert (f"{gz}: md5 of the decompressed content is {fakedata.md5_bytes(bytes(content))}, "
            f"expected {md5s['train-images-idx3-ubyte']}") in message
    assert tree(dest) == good
    assert leftovers(dest.parent) == []

    # a decompressed file with the wrong content is named too
    plain = tmp_path / "plain"
    fakedata.write_idx_mirror(plain, 200, 50, gz=False)
    (plain / "t10k-labels-idx1-ubyte").write_bytes(
        fakedata.idx_bytes(np.full(50, 3, np.uint8)))
    with pytest.raises(DataSourceError, match=rf"{plain}/t10k-labels-idx1-ubyte: md5 is \w+, "
                                              rf"expected {md5s['t10k-labels-idx1-ubyte']}"):
        fetch_raw("fashion-mnist", dest, plain, standard_dirs=(), base_urls=NO_DOWNLOAD,
                  expected_md5=md5s)
    assert tree(dest) == good


def test_truncated_gzip_is_rejected_by_name_and_leaves_nothing(tmp_path, idx_mirror) -> None:
    mirror, md5s = idx_mirror
    gz = mirror / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    dest = tmp_path / "raw" / "fashion-mnist"
    with pytest.raises(DataSourceError, match=rf"{gz}: truncated gzip"):
        fetch_raw("fashion-mnist", dest, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD,
                  expected_md5=md5s)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_structural_errors_are_named(tmp_path, idx_mirror) -> None:
    mirror, md5s = idx_mirror
    labels = mirror / "train-labels-idx1-ubyte.gz"
    bad = fakedata.idx_bytes(np.full(200, 12, np.uint8))  # labels outside 0..9
    labels.write_bytes(gzip.compress(bad))
    md5s = {**md5s, "train-labels-idx1-ubyte": fakedata.md5_bytes(bad)}
    with pytest.raises(DataSourceError, match=rf"{labels}: labels must lie in 0..9, found 12..12"):
        fetch_raw("fashion-mnist", tmp_path / "raw", mirror, standard_dirs=(),
                  base_urls=NO_DOWNLOAD, expected_md5=md5s)
    labels.write_bytes(b"this is not gzip data")
    with pytest.raises(DataSourceError, match=rf"{labels}: not a gzip file"):
        fetch_raw("fashion-mnist", tmp_path / "raw", mirror, standard_dirs=(),
                  base_urls=NO_DOWNLOAD, expected_md5=md5s)


def test_source_order_mirror_then_standard_then_download(tmp_path, idx_mirror,
                                                         http_server) -> None:
    mirror, md5s = idx_mirror
    standard = tmp_path / "usr-share"
    shutil.copytree(mirror, standard)
    shutil.copytree(mirror, http_server.root, dirs_exist_ok=True)
    kwargs = dict(standard_dirs=[standard], base_urls=[http_server.url], expected_md5=md5s)

    assert fetch_raw("fashion-mnist", tmp_path / "r1", mirror, **kwargs) == f"mirror {mirror}"
    assert fetch_raw("fashion-mnist", tmp_path / "r2", None, **kwargs) \
        == f"standard directory {standard}"
    assert http_server.requests == []

    kwargs["standard_dirs"] = [tmp_path / "absent"]
    assert fetch_raw("fashion-mnist", tmp_path / "r3", tmp_path / "no-mirror", **kwargs) \
        == f"download from {http_server.url}"
    assert {f"/{n}.gz" for n in fakedata.IDX_FILES} == set(http_server.requests)
    assert tree(tmp_path / "r1") == tree(tmp_path / "r2") == tree(tmp_path / "r3")


def test_bad_mirror_falls_through_loudly(tmp_path, idx_mirror, caplog) -> None:
    mirror, md5s = idx_mirror
    standard = tmp_path / "usr-share"
    shutil.copytree(mirror, standard)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with caplog.at_level(logging.WARNING, logger="vaepipe.data"):
        used = fetch_raw("fashion-mnist", tmp_path / "raw", mirror, standard_dirs=[standard],
                         base_urls=NO_DOWNLOAD, expected_md5=md5s)
    assert used == f"standard directory {standard}"
    assert f"{mirror} is incomplete: missing t10k-labels-idx1-ubyte (looked for " in caplog.text


def test_download_checks_the_archive_md5(tmp_path, idx_mirror, http_server) -> None:
    mirror, md5s = idx_mirror
    shutil.copytree(mirror, http_server.root, dirs_exist_ok=True)
    wrong = {**md5s, "train-labels-idx1-ubyte.gz": "0" * 32}
    url = f"{http_server.url}train-labels-idx1-ubyte.gz"
    with pytest.raises(DataSourceError,
                       match=rf"{url}: md5 of the download is {md5s['train-labels-idx1-ubyte.gz']}"
                             rf", expected 0{{32}}"):
        fetch_raw("fashion-mnist", tmp_path / "raw", None, standard_dirs=(),
                  base_urls=[http_server.url], expected_md5=wrong)
    assert not (tmp_path / "raw").exists()
    assert leftovers(tmp_path) == []


def test_all_sources_failing_lists_every_place_and_the_fixes(tmp_path, http_server) -> None:
    mirror, standard, refused = tmp_path / "no-mirror", tmp_path / "no-std", closed_port_url()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError) as err:
        fetch_raw("fashion-mnist", tmp_path / "raw", mirror,
                  standard_dirs=[standard, tmp_path / "empty"],
                  base_urls=[http_server.url, refused], expected_md5=None, timeout=10)
    message = str(err.value)
    assert f"mirror {mirror}: directory does not exist" in message
    assert f"standard directory {standard}: directory does not exist" in message
    assert f"standard directory {tmp_path / 'empty'}: no fashion-mnist files in it" in message
    assert f"{http_server.url}train-images-idx3-ubyte.gz: HTTP Error 404" in message
    assert f"{refused}train-images-idx3-ubyte.gz: <urlopen error" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "set data.mirror in params.yaml" in message
    assert "connect to the internet" in message
    assert not (tmp_path / "raw").exists() and leftovers(tmp_path) == []


def test_unconfigured_sources_are_listed_too(tmp_path) -> None:
    with pytest.raises(DataSourceError) as err:
        fetch_raw("cifar10", tmp_path / "raw", None, standard_dirs=None, base_urls=NO_DOWNLOAD)
    message = str(err.value)
    assert "mirror: none set (data.mirror is null)" in message
    assert "standard directory: none known for cifar10" in message
    assert "official download: not attempted" in message
    assert "apt-get" not in message  # no package ships CIFAR-10
    assert "cifar-10-python.tar.gz or data_batch_1" in message


def test_env_hook_replaces_the_pinned_md5s(tmp_path, idx_mirror, monkeypatch) -> None:
    mirror, md5s = idx_mirror
    # pinned md5s: the tiny mirror is (rightly) rejected
    with pytest.raises(DataSourceError, match="expected f4a8712d7a061bf5bd6d2ca38dc4d50a"):
        fetch_raw("fashion-mnist", tmp_path / "raw", mirror, standard_dirs=(),
                  base_urls=NO_DOWNLOAD)
    # no pinned md5s for MNIST, but the official counts are enforced
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte.gz: 200 records, "
                                              "expected 60000"):
        fetch_raw("mnist", tmp_path / "raw", mirror, standard_dirs=(), base_urls=NO_DOWNLOAD)
    monkeypatch.setenv(sources.EXPECTED_MD5_ENV, str(fakedata.write_md5_json(tmp_path / "m.json",
                                                                          md5s)))
    for dataset in ("fashion-mnist", "mnist"):
        fetch_raw(dataset, tmp_path / dataset, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD)
        assert len(formats.load_raw(dataset, tmp_path / dataset)[0]) == 200

    monkeypatch.setenv(sources.EXPECTED_MD5_ENV, str(fakedata.write_md5_json(
        tmp_path / "partial.json", {"train-images-idx3-ubyte": "x"})))
    with pytest.raises(DataError, match="partial.json has no md5 for train-labels-idx1-ubyte"):
        fetch_raw("mnist", tmp_path / "raw", mirror, standard_dirs=(), base_urls=NO_DOWNLOAD)


def test_full_size_mnist_is_checked_structurally(tmp_path) -> None:
    mirror = tmp_path / "mnist"
    mirror.mkdir()
    for name, n in (("train", 60000), ("t10k", 10000)):
        (mirror / f"{name}-images-idx3-ubyte").write_bytes(
            fakedata.idx_bytes(np.zeros((n, 28, 28), np.uint8)))
        (mirror / f"{name}-labels-idx1-ubyte").write_bytes(
            fakedata.idx_bytes(np.arange(n, dtype=np.uint8) % 10))
    dest = tmp_path / "raw"
    fetch_raw("mnist", dest, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD)
    assert tree(dest) == tree(mirror)

    labels = mirror / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])  # images' magic
    with pytest.raises(DataSourceError, match=rf"{labels}: bad IDX magic|{labels}: .*bytes"):
        fetch_raw("mnist", dest, mirror, standard_dirs=(), base_urls=NO_DOWNLOAD)
    assert tree(dest)["t10k-labels-idx1-ubyte"] != labels.read_bytes()  # old copy kept


def test_cifar_from_tarball_plain_files_and_download(tmp_path, http_server) -> None:
    tar_mirror = tmp_path / "tar"
    md5s = fakedata.write_cifar_tarball(tar_mirror, n_per_batch=10)
    plain_mirror = tmp_path / "plain"
    assert fakedata.write_cifar_files(plain_mirror / "cifar-10-batches-py", 10) == {
        k: v for k, v in md5s.items() if not k.endswith(".tar.gz")}
    shutil.copytree(tar_mirror, http_server.root, dirs_exist_ok=True)
    opts = dict(standard_dirs=(), expected_md5=md5s)

    fetch_raw("cifar10", tmp_path / "a", tar_mirror, base_urls=NO_DOWNLOAD, **opts)
    fetch_raw("cifar10", tmp_path / "b", plain_mirror, base_urls=NO_DOWNLOAD, **opts)
    assert fetch_raw("cifar10", tmp_path / "c", None, base_urls=[http_server.url], **opts) \
        == f"download from {http_server.url}"
    assert sorted(tree(tmp_path / "a")) == sorted(fakedata.CIFAR_FILES)
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == tree(tmp_path / "c")
    train_x, _, test_x, _ = formats.load_raw("cifar10", tmp_path / "a")
    assert train_x.shape == (50, 3, 32, 32) and test_x.shape == (10, 3, 32, 32)

    tarball = tar_mirror / "cifar-10-python.tar.gz"
    tarball.write_bytes(tarball.read_bytes()[:-2000])
    with pytest.raises(DataSourceError, match=rf"{tarball}: (truncated|not a readable)"):
        fetch_raw("cifar10", tmp_path / "d", tar_mirror, base_urls=NO_DOWNLOAD, **opts)
    assert not (tmp_path / "d").exists()
