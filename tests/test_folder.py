"""A folder of images as a dataset: what counts, what is skipped and why, the manifest, the
stratified split, class choices by name, shapes a model can be built for, and the data keys a
checkpoint records. The whole pipeline on such folders, in real DVC: test_folder_pipeline.py."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from shapes import CLASSES, write_shapes
from vaepipe.config import parse_params, training_data
from vaepipe.data.arrays import load_split, read_class_names, save_arrays
from vaepipe.data.catalog import DataError, DataFormatError
from vaepipe.data.folder import ingest_folder
from vaepipe.data.names import resolve_classes
from vaepipe.data.split import stratified_split, write_split
from vaepipe.evaluate.classifier import Classifier
from vaepipe.models.vae import build_model


@pytest.fixture
def messy(tmp_path):
    """Three shape classes of 12 RGB images each, plus every kind of file that must be skipped
    or converted."""
    root = tmp_path / "shapes"
    write_shapes(root, 12, size=40)
    (root / "circle" / "notes.txt").write_text("not an image")
    good = (root / "square" / "square_0000.png").read_bytes()
    (root / "square" / "cut.png").write_bytes(good[:len(good) // 2])  # truncated
    (root / "square" / "empty.png").write_bytes(b"")
    (root / "stray.png").write_bytes(good)  # beside the class folders
    (root / "circle" / ".DS_Store").write_bytes(b"\0\1")
    os.symlink(tmp_path / "outside.png", root / "triangle" / "link.png")
    (tmp_path / "outside.png").write_bytes(good)
    os.symlink(root / "circle" / "circle_0000.png", root / "circle" / "inside.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA").save(
        root / "triangle" / "wide_alpha.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(
        root / "triangle" / "grey.jpg")
    return root


def test_a_folder_is_decoded_and_every_file_is_listed_used_or_skipped(messy, tmp_path):
    manifest = ingest_folder(messy, tmp_path / "raw", 32)
    assert manifest["class_names"] == list(CLASSES) and manifest["layout"] == "classes"
    assert manifest["channels"] == 3  # colour images are there
    skipped = {e["path"]: e["reason"] for e in manifest["skipped"]}
    assert skipped == {
        "circle/notes.txt": "not an image file by its extension (.txt)",
        "circle/.DS_Store": "hidden",
        "square/cut.png": skipped["square/cut.png"],
        "square/empty.png": skipped["square/empty.png"],
        "stray.png": "beside the class folders, in no class",
        "triangle/link.png": "a symlink to a place outside the folder (not followed)",
    }
    assert skipped["square/cut.png"].startswith("not a readable image (")
    assert skipped["square/empty.png"].startswith("not a readable image (")
    used = {e["path"]: e for e in manifest["files"]}
    assert len(used) == 12 * 3 + 3 and "circle/inside.png" in used  # a link inside is used
    for entry in used.values():
        data = (messy / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    counts = manifest["counts"]
    assert counts["per_class"] == {"circle": 13, "square": 12, "triangle": 14}
    assert counts["modes"] == {"L": 1, "RGB": 37, "RGBA": 1}
    assert counts["sizes"] == {"40x40": 37, "50x30": 1, "64x64": 1}
    assert counts["used"] == 39 and counts["skipped"] == 6

    raw = np.load(tmp_path / "raw" / "images.npz")
    assert raw["images"].shape == (39, 3, 32, 32) and raw["images"].dtype == np.uint8
    assert np.bincount(raw["labels"]).tolist() == [13, 12, 14]
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text()) == manifest
    again = ingest_folder(messy, tmp_path / "raw2", 32)
    assert again == manifest
    assert (tmp_path / "raw2" / "images.npz").read_bytes() == \
        (tmp_path / "raw" / "images.npz").read_bytes()  # the same folder, the same bytes


def test_channels_follow_the_images_unless_set_and_a_flat_folder_is_one_class(tmp_path):
    grey = tmp_path / "grey"
    write_shapes(grey, 4, size=28, mode="L")
    assert ingest_folder(grey, tmp_path / "a", 28)["channels"] == 1
    forced = ingest_folder(grey, tmp_path / "b", 64, channels=3)
    assert forced["channels"] == 3
    assert np.load(tmp_path / "b" / "images.npz")["images"].shape == (12, 3, 64, 64)

    flat = tmp_path / "cats"
    flat.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 30), (i * 40, 10, 10)).save(flat / f"{i}.png")
    manifest = ingest_folder(flat, tmp_path / "c", 32)
    assert manifest["layout"] == "flat" and manifest["class_names"] == ["cats"]
    assert manifest["counts"]["per_class"] == {"cats": 5}


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such folder"),
    (lambda p: p.write_text("x"), "not a folder"),
    (lambda p: p.mkdir(), "no image files in this folder"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no image files in this folder"),
    (lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"junk")), "none of its 1 image files"),
])
def test_a_folder_with_no_usable_image_is_a_one_line_error_naming_it(tmp_path, make, message):
    path = tmp_path / "images"
    make(path)
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "kept.txt").write_text("an earlier good copy")
    with pytest.raises(DataError) as info:
        ingest_folder(path, dest, 32)
    text = str(info.value)
    assert text.startswith(f"data.path: {path}: ") and message in text and "\n" not in text
    assert [p.name for p in dest.iterdir()] == ["kept.txt"]  # nothing lost or half-written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_split_is_stratified_seeded_and_a_small_class_is_named(tmp_path):
    labels = np.repeat([0, 1, 2], [50, 20, 10])
    train, val, test = stratified_split(labels, ["a", "b", "c"], 0.2, 0.1, seed=3)
    assert [np.bincount(labels[s]).tolist() for s in (train, val, test)] == \
        [[36, 14, 7], [4, 2, 1], [10, 4, 2]]
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(80))
    again = stratified_split(labels, ["a", "b", "c"], 0.2, 0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    other = stratified_split(labels, ["a", "b", "c"], 0.2, 0.1, seed=4)
    assert not np.array_equal(test, other[2])
    with pytest.raises(DataError, match=r"class 'c' has 2 image\(s\); data.test_fraction 0.2 "
                                        r"and data.val_fraction 0.1 need at least 3 per class"):
        stratified_split(np.repeat([0, 1, 2], [50, 20, 2]), ["a", "b", "c"], 0.2, 0.1, 0)


def test_write_split_of_a_folder_keeps_its_class_names_and_shape(messy, tmp_path):
    ingest_folder(messy, tmp_path / "raw", 64)
    manifest = write_split(tmp_path / "raw", tmp_path / "out", "folder", 0.1, 42, 0.25)
    assert manifest["class_names"] == list(CLASSES)
    assert manifest["image_shape"] == [3, 64, 64]
    assert manifest["params"] == {"val_fraction": 0.1, "split_seed": 42, "test_fraction": 0.25}
    assert manifest["class_counts"]["test"] == {"0": 3, "1": 3, "2": 4}
    assert read_class_names(tmp_path / "out") == list(CLASSES)
    images, labels = load_split(tmp_path / "out", "test")
    assert images.shape == (10, 3, 64, 64) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 4


def test_load_split_takes_every_buildable_shape_and_names_the_others(tmp_path):
    for shape in ((1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 28, 28)):
        save_arrays(tmp_path / "train.npz", np.zeros((2, *shape), np.uint8), np.zeros(2, np.int64))
        assert load_split(tmp_path, "train")[0].shape[1:] == shape
    save_arrays(tmp_path / "train.npz", np.zeros((2, 3, 30, 30), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match=r"C 1 or 3 and S one of 28, 32, 64, got \(2, 3, "
                                              r"30, 30\)"):
        load_split(tmp_path, "train")


def test_sweep_classes_by_auto_index_or_name_and_a_missing_one_lists_the_classes():
    names = ["circle", "square", "triangle", "star"]
    assert resolve_classes("auto", names, "x") == [0, 1, 2]
    assert resolve_classes("auto", names[:2], "x") == [0, 1]
    assert resolve_classes(["star", 0], names, "x") == [3, 0]
    with pytest.raises(ValueError) as info:
        resolve_classes(["circle", "hexagon"], names, "data/processed/folder")
    assert str(info.value) == (
        "sweep.classes: 'hexagon' is not a class of data/processed/folder (its classes: "
        "0 'circle', 1 'square', 2 'triangle', 3 'star'); use auto, their indices or their names")
    with pytest.raises(ValueError, match="sweep.classes: 7 is not a class"):
        resolve_classes((0, 1, 7), names, "x")
    with pytest.raises(ValueError, match="names one class twice"):
        resolve_classes(["circle", 0], names, "x")


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("convs", [(4, 8), (4, 8, 8)])
def test_models_and_the_classifier_build_for_every_size(size, channels, convs):
    shape = (channels, size, size)
    x = torch.rand(2, *shape)
    for kind, args in (("conv", {"channels": convs}), ("mlp", {"hidden": (16,)})):
        model = build_model(kind, image_shape=shape, latent_dim=3, **args)
        mu, _ = model.encode(x)
        assert model.decode(mu).shape == (2, *shape)
    clf = Classifier(shape, num_classes=5, channels=convs[:2], features=8)
    assert clf(x).shape == (2, 5) and clf.features(x).shape == (2, 8)


def test_a_checkpoint_records_a_folders_keys_only_when_the_data_is_a_folder():
    named = training_data(parse_params({"data": {"image_size": 64, "path": "data/images/x"}}).data)
    assert named == {"dataset": "fashion-mnist", "val_fraction": 0.1, "split_seed": 42,
                     "split_order": "seeded", "dequantize": False, "binarize": "none",
                     "binarize_seed": None}
    folder = training_data(parse_params({"data": {"dataset": "folder", "path": "data/images/x",
                                                  "channels": 1}}).data)
    assert folder == {**named, "dataset": "folder", "path": "data/images/x", "image_size": 32,
                      "channels": 1, "test_fraction": 0.2}


def test_a_feature_classifier_near_chance_is_said_to_measure_little():
    from vaepipe.evaluate.summary import chance_warning
    warning = chance_warning({"test_accuracy": 0.40, "num_classes": 3})
    assert "near chance (33.3 % for 3 classes)" in warning and "classifier.epochs" in warning
    assert chance_warning({"test_accuracy": 0.52, "num_classes": 3}) == ""
    assert chance_warning({"test_accuracy": 0.9149, "num_classes": 10}) == ""
