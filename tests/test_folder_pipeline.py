"""Your own images through the whole pipeline in real DVC: generated shape folders (RGB at 32
px, grey at 28, RGB at 64 with three conv layers, one class), tracked with `dvc add`; what
reruns when an image changes; bad folders stopped before any training."""
import functools
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from shapes import CLASSES, draw_shape, write_shapes
from tiny import ALL_STAGES, TINY_PIPELINE
from vaepipe.figures.report import figure_links
from vaepipe.train.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow
SHAPES = "data/images/shapes"


def ran(stdout: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def folder_params(path: str = SHAPES, **data) -> dict:
    return {**TINY_PIPELINE, "data": {"dataset": "folder", "path": path, **data},
            "sweep": {**TINY_PIPELINE["sweep"], "classes": "auto"}}


def with_bad_files(root, per_class=70, **kwargs):
    """Shape classes plus a text file, a truncated PNG and a symlink out of the folder."""
    write_shapes(root, per_class, **kwargs)
    (root / "circle" / "README.txt").write_text("not an image")
    (root / "square" / "cut.png").write_bytes((root / "square" / "square_0000.png")
                                              .read_bytes()[:60])
    (root / "triangle" / "escape.png").symlink_to("/etc/passwd")


def check_report(project, names):
    """Every stage's report holds every figure it links, and the class names."""
    text = (project.root / "reports/report.md").read_text()
    links = figure_links(text)
    assert len(links) >= 25 and all((project.root / "reports" / link).is_file()
                                    for link in links)
    assert all(name in text for name in names)
    assert (project.root / "reports/report.html").stat().st_size > 100_000


def test_a_colour_folder_runs_every_stage_and_reruns_only_what_an_image_changes(dvc_project):
    project = dvc_project(folder_params(), images=functools.partial(with_bad_files, size=40))
    # as the README runs it: an experiment, which checks out every output DVC tracks first
    # (a .dvc file DVC cannot find, e.g. under a git-ignored folder, loses its images here)
    first = project.dvc("exp", "run")
    assert ran(first.stdout) == ALL_STAGES

    raw = project.read_json("data/raw/folder/manifest.json")
    assert raw["class_names"] == list(CLASSES) and raw["channels"] == 3
    assert {e["path"]: e["reason"].split(" (")[0] for e in raw["skipped"]} == {
        "circle/README.txt": "not an image file by its extension",
        "square/cut.png": "not a readable image",
        # `dvc add` stores what a symlink points at, so in the project the link is a copy of
        # /etc/passwd (in process, tests/test_folder.py: a link is skipped, never followed)
        "triangle/escape.png": "not a readable image"}
    assert raw["counts"]["used"] == 210 and len(raw["files"]) == 210
    split = project.read_json("data/processed/folder/manifest.json")
    assert split["image_shape"] == [3, 32, 32]
    assert split["class_counts"]["test"] == {"0": 14, "1": 14, "2": 14}
    for kind in ("mlp", "conv"):
        model, ckpt = load_checkpoint(project.root / f"models/{kind}/best.pt")
        assert model.image_shape == (3, 32, 32)
        assert ckpt["params"]["data"] == {
            "dataset": "folder", "val_fraction": 0.1, "split_seed": 42, "split_order": "seeded",
            "dequantize": False, "binarize": "none", "binarize_seed": None, "path": SHAPES,
            "image_size": 32, "channels": "auto", "test_fraction": 0.2}
    evaluation = project.read_json("reports/evaluate.json")
    assert np.isfinite(evaluation["conv"]["best"]["fid"])
    assert project.read_json("reports/classifier.json")["test_accuracy"] >= 0.0
    assert "circle, square, triangle" in (project.root / "reports/sweep.md").read_text()
    check_report(project, CLASSES)
    with Image.open(project.root / "reports/sweep/beta_1.0/latent.gif") as gif:
        gif.seek(gif.n_frames - 1)
        strip = np.asarray(gif.convert("RGB"))[-60:]
    assert np.ptp(strip.astype(int), axis=2).max() > 60  # the strip shows colour, not grey

    # a trained folder model from the command line
    out = project.root / "recon.png"
    subprocess.run([sys.executable, "-m", "vaepipe.sample", "models/conv/best.pt",
                    "reconstruct", f"{SHAPES}/circle", "--out", str(out)],
                   cwd=project.root, env=project.env, check=True, capture_output=True)
    with Image.open(out) as picture:
        assert picture.mode == "RGB"

    project.git("add", "-A")
    project.git("commit", "-q", "-m", "reproduced")
    assert ran(project.dvc("repro").stdout) == set()  # an untouched folder reruns nothing

    # one image changed and one added: ingestion and everything after it rerun
    rng = np.random.default_rng(7)
    draw_shape("circle", 40, rng).save(project.root / SHAPES / "square" / "square_0003.png")
    draw_shape("triangle", 40, rng).save(project.root / SHAPES / "triangle" / "extra.png")
    project.dvc("add", "-q", SHAPES)
    assert ran(project.dvc("repro").stdout) == ALL_STAGES
    raw = project.read_json("data/raw/folder/manifest.json")
    assert raw["counts"]["per_class"] == {"circle": 70, "square": 70, "triangle": 71}

    # one removed: ingestion reruns
    (project.root / SHAPES / "circle" / "circle_0000.png").unlink()
    project.dvc("add", "-q", SHAPES)
    assert ran(project.dvc("repro", "split").stdout) == {"download", "split"}
    assert project.read_json("data/raw/folder/manifest.json")["counts"]["used"] == 210


@pytest.mark.parametrize("size,mode,channels,convs", [
    (28, "L", [1, 28, 28], [4, 8]),
    (64, "RGB", [3, 64, 64], [4, 8, 8]),
], ids=["grey-28", "rgb-64-three-conv-layers"])
def test_grey_28_and_colour_64_pixel_folders_run_every_stage(dvc_project, size, mode, channels,
                                                               convs):
    params = folder_params(image_size=size)
    params["conv"] = {**TINY_PIPELINE["conv"], "channels": convs}
    params["sweep"] = {**params["sweep"], "channels": convs}
    project = dvc_project(params, images=functools.partial(write_shapes, per_class=50, size=48,
                                                           mode=mode))
    assert ran(project.dvc("repro").stdout) == ALL_STAGES
    assert project.read_json("data/processed/folder/manifest.json")["image_shape"] == channels
    for kind in ("mlp", "conv"):
        model, _ = load_checkpoint(project.root / f"models/{kind}/best.pt")
        assert model.decode(torch.zeros(1, 4)).shape == (1, *channels)
    samples = np.load(project.root / "data/evaluate/conv/best.npz")["samples"]
    assert samples.shape[1:] == tuple(channels)
    check_report(project, CLASSES)


def test_a_one_class_folder_runs_with_the_class_dependent_numbers_skipped(dvc_project):
    def flat(root):
        root.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(150):
            draw_shape("circle", 36, rng, "L").save(root / f"{i:03d}.png")

    project = dvc_project(folder_params("data/images/circles"), images=flat)
    assert ran(project.dvc("repro").stdout) == ALL_STAGES
    assert project.read_json("data/processed/folder/manifest.json")["class_names"] == ["circles"]
    classifier = project.read_json("reports/classifier.json")
    assert classifier["classes"] == 1 and "one class" in classifier["skipped"]
    best = project.read_json("reports/evaluate.json")["conv"]["best"]
    for key in ("fid", "precision", "recall", "probe_accuracy", "silhouette", "fid_recon"):
        assert key not in best
    assert np.isfinite(best["bpd_8bit"]) and np.isfinite(best["frozen_diversity_sigma_0_5"])
    sweep = project.read_json("reports/sweep.json")["sweep"]["1.0"]
    assert "silhouette" not in sweep and np.isfinite(sweep["diversity"])
    text = (project.root / "reports/report.md").read_text()
    assert "the data has one class, so there is no classifier" in text
    assert "nan" not in text.lower().split()
    check_report(project, ["circles"])


def test_bad_folders_stop_before_any_training_with_one_line(dvc_project):
    project = dvc_project(folder_params(), images=lambda root: write_shapes(root, 2, size=32))
    failed = project.dvc("repro", check=False)
    assert failed.returncode != 0
    assert "error: class 'circle' has 2 image(s); data.test_fraction 0.2 and data.val_fraction " \
           "0.1 need at least 3 per class" in failed.stderr + failed.stdout
    assert ran(failed.stdout) == {"download", "split"}
    assert not (project.root / "models").exists()

    empty = project.root / "data/images/empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no images yet")
    params = project.params()
    params["data"]["path"] = "data/images/empty"
    (project.root / "params.yaml").write_text(json.dumps(params))
    failed = project.run(sys.executable, "stages/download.py", "--out", "data/raw/folder",
                         check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        "error: data.path: data/images/empty: no image files in this folder (extensions: "
        ".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp; 1 other entries)"]
