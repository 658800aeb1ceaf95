"""Hostile files and paths wherever a user hands one in: one line on stderr and exit status 2
with nothing written, or, in an image folder, a counted skip with its reason; never a traceback.

Images over Pillow's decompression-bomb limit are small PNGs with ``Image.MAX_IMAGE_PIXELS``
lowered for the test; every command runs in process through its ``main``.
"""
import json
import os
import subprocess
import warnings
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vizdata
from conftest import REPO_ROOT, load_stage
from vaepipe import compare
from vaepipe.data.folder import ingest_folder
from vaepipe.data.images import ImageInputError, image_header, load_image
from vaepipe.io import OutputPathError, atomic_path, write_bytes, write_json, write_npz
from vaepipe.models.vae import build_model
from vaepipe.sample import main as sample
from vaepipe.sample import out_of_range
from vaepipe.train.checkpoints import save_checkpoint

LIMIT = 1000  # pixels: a 40 x 40 image is over it, a 60 x 60 one over twice it
FIXTURE = Path(__file__).parent / "data" / "exp_show.json"


def png(path: Path, side: int, colour: bool = True) -> Path:
    rng = np.random.default_rng(side)
    shape = (side, side, 3) if colour else (side, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def one_line(capsys, *names: str) -> str:
    """The one stderr line of a failed command; it names each of ``names``."""
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for name in names:
        assert str(name) in captured.err, (name, captured.err)
    return captured.err


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "grey.pt"
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=3, hidden=(16,))
    save_checkpoint(path, model, {"epoch": 1, "metrics": {}})
    return path


# --------------------------------------------------------------------------------------------
# (a) images over the decompression-bomb limit


@pytest.mark.parametrize("side", [40, 60], ids=["over-the-limit", "over-twice-the-limit"])
def test_the_decoder_refuses_an_image_over_the_pixel_limit(tmp_path, small_limit, side):
    path = png(tmp_path / "big.png", side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        for read in (lambda: load_image(path, 3, (28, 28)), lambda: image_header(path)):
            with pytest.raises(ImageInputError, match="too large to decode") as caught:
                read()
            message = str(caught.value)
            assert message.startswith(f"{path}: ") and f"at most {LIMIT:,}" in message
            assert "MAX_IMAGE_PIXELS" in message and "\n" not in message
        assert load_image(png(tmp_path / "small.png", 31), 3, (28, 28)).shape == (3, 28, 28)


def test_a_folder_skips_images_it_cannot_use_with_the_reason_and_goes_on(tmp_path,
                                                                         small_limit):
    root = tmp_path / "pets"
    for name in ("cat", "dog"):
        for i in range(3):
            png(root / name / f"{i}.png", 20 + i, colour=False)
    png(root / "cat" / "scan.png", 40)       # over the limit: Pillow would only warn
    png(root / "dog" / "panorama.png", 60)   # over twice the limit: Pillow would raise
    os.mkfifo(root / "dog" / "pipe.png")      # reading it would wait for a writer forever
    manifest = ingest_folder(root, tmp_path / "raw", 28)
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"cat/scan.png", "dog/panorama.png", "dog/pipe.png"}
    assert reasons["cat/scan.png"].startswith("too large to decode (40 x 40 = 1,600 pixels")
    assert reasons["dog/panorama.png"].startswith("too large to decode (3,600 pixels")
    assert reasons["dog/pipe.png"] == "not a regular file (a pipe, socket or device)"
    assert manifest["counts"]["used"] == 6 and manifest["counts"]["skipped"] == 3
    assert manifest["channels"] == 1  # the colour images that were skipped decide nothing


def test_the_download_stage_counts_a_too_large_image_as_a_skip(tmp_path, small_limit,
                                                               monkeypatch, capsys):
    for i in range(3):
        png(tmp_path / "images" / "a" / f"{i}.png", 20 + i)
    png(tmp_path / "images" / "a" / "huge.png", 60)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(dataset="folder", path="images", image_size=28)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert load_stage("download.py").main(["--out", "raw"]) == 0
    assert "3 images of 1 class(es)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert [s["path"] for s in manifest["skipped"]] == ["a/huge.png"]
    (tmp_path / "file").write_text("mine")
    assert load_stage("download.py").main(["--out", "file"]) == 2
    one_line(capsys, "--out", "file", "exists and is not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_the_sample_command_refuses_a_too_large_image_in_one_line(tmp_path, small_limit,
                                                                  checkpoint, capsys):
    big, small = png(tmp_path / "big.png", 60), png(tmp_path / "small.png", 28)
    scan = png(tmp_path / "scan.png", 40)
    out = tmp_path / "out.png"
    for args in (["reconstruct", small, big], ["encode", tmp_path], ["interpolate", small, scan]):
        assert sample([str(checkpoint), *map(str, args), "--out", str(out)]) == 2
        one_line(capsys, "too large to decode")
        assert not out.exists()


# --------------------------------------------------------------------------------------------
# (b) output paths that are folders, or under a file


def test_writers_refuse_a_folder_and_a_parent_that_is_a_file(tmp_path):
    folder = tmp_path / "folder"
    (folder / "kept").mkdir(parents=True)
    (tmp_path / "file").write_text("mine")
    writes = (lambda p: write_bytes(p, b"x"), lambda p: write_json(p, {}),
              lambda p: write_npz(p, {"a": np.zeros(2)}))
    for write in writes:
        with pytest.raises(OutputPathError, match="is a folder"):
            write(folder)
        with pytest.raises(OutputPathError, match="is not a folder"):
            write(tmp_path / "file" / "sub" / "x")
    with pytest.raises(OutputPathError), atomic_path(folder):
        pytest.fail("the body must not run")
    assert sorted(p.name for p in folder.iterdir()) == ["kept"]
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_the_sample_command_checks_out_before_any_work(tmp_path, checkpoint, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (tmp_path / "notes").write_text("mine")
    cases = [(folder, "is a folder"), (tmp_path / "notes" / "x.png", "is not a folder")]
    for out, message in cases:
        for command in (["prior"], ["encode", str(png(tmp_path / "a.png", 28))]):
            assert sample([str(checkpoint), *command, "--out", str(out)]) == 2
            one_line(capsys, "--out", out, message)
    assert list(folder.iterdir()) == [] and (tmp_path / "notes").read_text() == "mine"


def test_interpolate_takes_two_files_not_folders(tmp_path, checkpoint, capsys):
    for i in range(3):
        png(tmp_path / "many" / f"{i}.png", 28)
    out = tmp_path / "walk.png"
    assert sample([str(checkpoint), "interpolate", str(tmp_path / "many"),
                   str(tmp_path / "many" / "0.png"), "--out", str(out)]) == 2
    one_line(capsys, "many", "is a folder; interpolate takes two image files")
    assert not out.exists()


def test_a_pipe_or_a_folder_as_checkpoint_is_one_line(tmp_path, checkpoint, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    out = tmp_path / "out.npz"
    assert sample([str(checkpoint), "encode", str(tmp_path / "pipe.png"), "--out", str(out)]) == 2
    one_line(capsys, "pipe.png", "not a regular file or folder")
    assert sample([str(tmp_path), "prior", "--out", str(out)]) == 2
    one_line(capsys, str(tmp_path), "not a loadable checkpoint")
    assert not out.exists()


def test_a_checkpoint_of_images_neither_grey_nor_rgb_is_one_line(tmp_path, capsys):
    path = tmp_path / "two.pt"
    model = build_model("mlp", image_shape=(2, 28, 28), latent_dim=3, hidden=(16,))
    save_checkpoint(path, model, {"epoch": 1})
    assert sample([str(path), "prior", "--out", str(tmp_path / "x.png")]) == 2
    one_line(capsys, "two.pt", "2-channel")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------
# (d) size-like flags


@pytest.mark.parametrize("args,flag,value,allowed", [
    (["prior", "--n", "640000"], "--n", "640,000", "from 1 to 10,000"),
    (["prior", "--n", "0"], "--n", "0", "from 1 to 10,000"),
    (["prior", "--cols", "80000"], "--cols", "80,000", "from 1 to 1,000"),
    (["prior", "--seed", str(2 ** 64)], "--seed", "18,446,744,073,709,551,616", "to 18,"),
    (["reconstruct", "x.png", "--cols", "-1"], "--cols", "-1", "from 1 to 1,000"),
    (["interpolate", "a.png", "b.png", "--steps", "100000"], "--steps", "100,000",
     "from 2 to 1,000"),
])
def test_size_flags_out_of_range_are_one_line(tmp_path, checkpoint, capsys, args, flag, value,
                                             allowed):
    out = tmp_path / "out.png"
    assert sample([str(checkpoint), *args, "--out", str(out)]) == 2
    one_line(capsys, flag, f"got {value}", allowed)
    assert not out.exists()


def test_the_bounds_themselves_are_allowed(tmp_path, checkpoint):
    edges = {"n": (1, 10_000), "cols": (1, 1_000), "steps": (2, 1_000),
             "seed": (-2 ** 63, 2 ** 64 - 1)}
    for end in (0, 1):
        assert out_of_range(Namespace(**{k: v[end] for k, v in edges.items()})) is None
    out = tmp_path / "grid.png"  # the most columns, drawn
    assert sample([str(checkpoint), "prior", "--n", "2", "--cols", "1000", "--seed",
                   str(2 ** 64 - 1), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (1000 * 30 + 2, 30 + 2)


# --------------------------------------------------------------------------------------------
# (c) `python -m vaepipe.compare --json` on files that are not `dvc exp show --json`


@pytest.mark.parametrize("content,message", [
    ({"rev": "workspace"}, "at the top: expected a list, found an object"),
    (["workspace", "abc"], "at [0]: expected an object, found a string"),
    ([{"name": "x"}], "at [0]: no \"rev\""),
    ([{"rev": 7}], "at [0].rev: expected a string, found an integer"),
    ([{"rev": "workspace", "data": []}], "at [0].data: expected an object, found a list"),
    ([{"rev": "workspace", "data": {"metrics": {"m.json": 3}}}],
     "at [0].data.metrics.m.json: expected an object, found an integer"),
    ([{"rev": "workspace", "data": {"params": {"params.yaml": {"data": "x"}}}}],
     "at [0].data.params.params.yaml.data: expected an object, found a string"),
    ([{"rev": "abc", "experiments": {"x": 1}}], "at [0].experiments: expected a list"),
    ([{"rev": "abc", "experiments": [{"revs": ["e1"]}]}],
     "at [0].experiments[0].revs[0]: expected an object, found a string"),
    ([{"rev": "abc", "experiments": [{"revs": [{"name": 5}]}]}],
     "revs[0].name: expected a string, found an integer"),
])
def test_compare_json_of_another_shape_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "shown.json"
    path.write_text(json.dumps(content))
    assert compare.main(["--json", str(path)]) == 2
    one_line(capsys, path, "not `dvc exp show --json` output", message)


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "not readable"),
    (lambda p: p.write_text("{"), "not JSON"),
    (lambda p: p.write_bytes(b"\x80\x81 junk"), "not JSON (not UTF-8 text)"),
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "not JSON"),
])
def test_compare_json_that_cannot_be_read_is_one_line(tmp_path, capsys, make, message):
    path = tmp_path / "shown.json"
    make(path)
    assert compare.main(["--json", str(path)]) == 2
    one_line(capsys, path, message)


def test_compare_without_a_working_dvc_is_one_line(monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "dvc")

    def failing(*args, **kwargs):
        raise subprocess.CalledProcessError(1, args[0], "", "ERROR: not a DVC repo\nline 2")

    for run in (missing, failing):
        monkeypatch.setattr(compare.subprocess, "run", run)
        assert compare.main([]) == 2
        one_line(capsys, "`dvc exp show --json`")


def test_compare_output_paths_are_checked_before_any_work(tmp_path, capsys):
    folder = tmp_path / "figs"
    folder.mkdir()
    (tmp_path / "file").write_text("mine")
    for args, names in ((["--png", str(folder)], ("--png", "is a folder")),
                        (["--noise", str(tmp_path / "file" / "n.json")],
                         ("--noise", "is not a folder"))):
        assert compare.main(["--json", str(FIXTURE), *args]) == 2
        one_line(capsys, *names)
    assert list(folder.iterdir()) == [] and (tmp_path / "file").read_text() == "mine"


def test_compare_ignores_a_standard_error_that_is_not_a_number(tmp_path, capsys):
    run = {"rev": "workspace", "data": {
        "metrics": {"m.json": {"data": {"conv": {"best": {"nelbo": 1.5, "nelbo_se": "n/a"}}}}},
        "params": {"params.yaml": {"data": {"seed": 1}}}}}
    path = tmp_path / "shown.json"
    path.write_text(json.dumps([run]))
    assert compare.main(["--json", str(path), "--metric", "conv.best.nelbo"]) == 0
    assert "(one seed; test-set SE –)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# stages: output paths, and the JSON and checkpoints visualize reads


def test_stage_output_paths_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("file").write_text("mine")
    Path("folder").mkdir()
    split = ["--raw", "raw", "--metrics", "m.json", "--baselines", "b.json"]
    sweep = ["--metrics", "m/*/x.json", "--histories", "m/*/h.csv", "--markdown", "s.md",
             "--json", "s.json", "--curves", "c.csv", "--data", "data"]
    cases = [("split.py", [*split, "--out", "file"], ("--out", "exists and is not a folder")),
             ("split.py", ["--out", "o", *split[:2], "--metrics", "folder", *split[4:]],
              ("--metrics", "is a folder")),
             ("sweep_table.py", [*sweep, "--csv", "file/t.csv"], ("--csv", "is not a folder")),
             ("train.py", ["--model", "mlp", "--data", "d", "--checkpoints", "file",
                           "--metrics", "m.json", "--history", "h.csv"],
              ("--checkpoints", "exists and is not a folder")),
             ("train.py", ["--model", "conv", "--data", "d", "--checkpoints", "c",
                           "--metrics", "m.json", "--history", "folder"],
              ("--history", "is a folder")),
             ("evaluate.py", ["--data", "d", "--models", "m", "--classifier", "c.pt",
                              "--arrays", "a", "--metrics", "e.json", "--details", "folder",
                              "--summary", "s.md", "--baselines", "b.json"],
              ("--details", "is a folder")),
             ("beta_sweep.py", ["--beta", "0.5", "--data", "d", "--checkpoint", "file/b.pt",
                                "--history", "h.csv", "--gif", "g.gif", "--metrics", "m.json"],
              ("--checkpoint", "is not a folder")),
             ("train_classifier.py", ["--data", "d", "--out", "folder", "--metrics", "m.json"],
              ("--out", "is a folder"))]
    for script, args, names in cases:
        assert load_stage(script).main(args) == 2
        one_line(capsys, *names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]
    assert Path("file").read_text() == "mine" and list(Path("folder").iterdir()) == []


def test_visualize_names_a_bad_json_checkpoint_or_output_in_one_line(tmp_path, monkeypatch,
                                                                      capsys):
    vizdata.write_inputs(tmp_path, sweep=False)
    monkeypatch.chdir(tmp_path)
    args = vizdata.stage_args(tmp_path)
    evaluate_json = tmp_path / "reports/evaluate.json"
    good = evaluate_json.read_text()
    noise = tmp_path / "noise.json"
    noise.write_text(json.dumps({"seeds": [1, 2], "metrics": {"best_val_loss": {
        "single_run_difference": 0.1}}}))
    cases = [
        (lambda: evaluate_json.write_text("[1, 2]"), args, "expected an object, found a list"),
        (lambda: evaluate_json.write_text('{"mlp": 3}'), args, "evaluate.json.mlp: expected"),
        (lambda: evaluate_json.write_text(good), [*args, "--noise", str(noise)],
         "noise.json: metrics.best_val_loss"),
        (lambda: (tmp_path / "reports/train/conv_history.csv").write_text("epoch\nx\n"), args,
         "conv_history.csv: not a training history"),
        (lambda: (tmp_path / "reports/train/mlp.json").write_text("{"), args,
         "mlp.json: not JSON"),
        (lambda: (tmp_path / "reports/report.md").mkdir(), args, "--report"),
    ]
    for corrupt, argv, message in cases:
        corrupt()
        assert vizdata.run_stage(tmp_path, argv) == 2
        one_line(capsys, message)
    (tmp_path / "reports/report.md").rmdir()
    (tmp_path / "reports/train/mlp.json").unlink()
    best = tmp_path / "models/mlp/best.pt"
    ckpt = torch.load(best, weights_only=True)
    del ckpt["params"]
    torch.save(ckpt, best)
    assert vizdata.run_stage(tmp_path) == 2
    one_line(capsys, "best.pt", "params.mlp.epochs")
    assert not (tmp_path / "reports/report.md").exists()
    assert not (tmp_path / "reports/figures").exists()


def test_a_checkpoint_whose_arguments_ask_for_a_huge_model_is_refused_before_building(
        tmp_path, capsys):
    # a billion-unit layer would take terabytes: the arguments are checked against the stored
    # weights on the meta device first, so nothing of that size is ever allocated
    model = build_model("mlp", image_shape=(1, 28, 28), latent_dim=2, hidden=(8,))
    path = tmp_path / "huge.pt"
    save_checkpoint(path, model, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"]["hidden"] = [10**9, 10**9]
    torch.save(ckpt, path)
    assert sample([str(path), "prior", "--n", "1", "--out", str(tmp_path / "p.png")]) == 2
    one_line(capsys, "huge.pt", "weights do not fit a mlp model", "mismatched tensors")
    assert not (tmp_path / "p.png").exists()
