"""Reliability: bad params and bad data stop the pipeline with one clear message and no damage.

Bad params, one case of each kind of failure, run through real DVC on copies (``tiny_repro``)
of the one tiny project whose whole pipeline this session reproduced and committed (conftest
``_tiny_baseline``): each case writes one bad value into params.yaml, runs ``dvc repro`` and
checks that the stage reading the key stopped before any work with one line naming the key and
what is allowed, that nothing DVC did not start was touched, and that ``git checkout -- . &&
dvc checkout`` gives back every recorded file byte for byte. The schema's other refusals go
through ``load_params``, the function each stage calls first. Bad data: raw files through the
download stage, processed arrays through train-mlp, mismatched checkpoints through the
evaluate stage, and CIFAR-10 archives whose members point outside the target.

Already covered elsewhere, and not repeated here: load_checkpoint refusing a wrong kind, wrong
shapes, an unknown format or pickled code (test_training.py); fetch_raw rejecting a truncated
gzip, an md5 mismatch, bad IDX structure and a truncated tarball in process
(test_data_fetch.py); load_split on a float32 file, mismatched labels and an unreadable .npz
(test_data.py); each params message in process (test_config.py). `device: cuda` through
`dvc repro train-conv` (test_train_pipeline.py) is here once more, as one params case among
the others, for the checks the others get.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import math
import re
import shutil
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import fakedata
from conftest import load_stage
from tiny import ALL_STAGES
from vaepipe.config import ConfigError, load_params
from vaepipe.data.arrays import load_split, load_splits, save_arrays
from vaepipe.data.baselines import baseline_rates
from vaepipe.data.catalog import DataFormatError, DataSourceError
from vaepipe.data.formats import Cifar
CIFAR_DIR = Cifar.folder
from vaepipe.data.sources import fetch_raw
from vaepipe.io import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_DIRS = ("data", "models", "reports")
RUNNING = re.compile(r"^Running stage '([^']+)':$", re.M)
# what the training loops print once they run: tqdm bars ("mlp epoch 1/2"), per-epoch lines
# ("mlp epoch   1: kl weight ...", "classifier epoch 1/1: loss ...")
PROGRESS = re.compile(r"\bepoch\s*\d")
# the lines DVC itself writes to stdout around a stage
DVC_STDOUT = re.compile(r"^(Stage '[^']+' didn't change, skipping|Running stage '[^']+':|> .*|)$")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under data/, models/, reports/ and of dvc.lock, by relative path."""
    files = [p for d in RECORDED_DIRS for p in (root / d).rglob("*") if p.is_file()]
    files.append(root / "dvc.lock")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file()}


def stage_of(path: str, outs: dict[str, list[str]]) -> str | None:
    """The stage whose output ``path`` is (dvc.lock's outs), or None (dvc.lock, .gitignore)."""
    for stage, paths in outs.items():
        if any(path == out or path.startswith(out + "/") for out in paths):
            return stage
    return None


def stage_lines(stderr: str) -> list[str]:
    """The stage's own lines in a failed repro's stderr: all but DVC's ERROR/WARNING lines."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("ERROR: ", "WARNING: "))]


# --------------------------------------------------------------------------------------------
# A. Bad params through `dvc repro`


@dataclass(frozen=True)
class Recorded:
    params: dict  # the committed params.yaml
    sha256: dict[str, str]  # path -> sha256 after the committed repro
    owner: dict[str, str | None]  # path -> the stage that writes it


@pytest.fixture(scope="module")
def recorded(_tiny_baseline) -> Recorded:
    """The session's tiny project as committed after its whole `dvc repro` (copies of it are
    byte-identical): params, every output's sha256 and the stage that writes it."""
    project = _tiny_baseline
    assert project.git("status", "--porcelain").stdout == ""
    sha256 = snapshot(project.root)
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    outs = {name: [o["path"] for o in stage.get("outs", [])] for name, stage in lock.items()}
    owner = {path: stage_of(path, outs) for path in sha256}
    # every stage has files to protect, so "untouched" below means something for each
    assert {s for s in owner.values() if s} == ALL_STAGES
    return Recorded(project.params(), sha256, owner)


@dataclass(frozen=True)
class Case:
    key: str  # dotted key set to the bad value
    value: Any
    stage: str  # the first stage DVC runs for this key: the one that must stop
    message: str  # in its one line (after the "error: " prefix)


def case(id_: str, key: str, value: Any, stage: str, message: str, gap: str = "",
         skip: tuple[bool, str] = (False, ""), slow: bool = False) -> Any:
    marks = [pytest.mark.skipif(skip[0], reason=skip[1] or "-")]
    if slow:  # a second case of a kind the fast suite already covers
        marks.append(pytest.mark.slow)
    if gap:  # a known hole, reported; strict, so the fix turns this into a failure to unmark
        marks += [pytest.mark.xfail(strict=True, reason=gap), pytest.mark.slow]
    return pytest.param(Case(key, value, stage, message), id=id_, marks=marks)


NO_CHECK = ("no stage declares this key as a param, so `dvc repro` runs nothing and exits 0; "
            "the typo is never reported (dvc.yaml lists keys one by one, e.g. sweep.*)")

# Through `dvc repro`: one case of each kind of failure (a value params.yaml's schema refuses,
# one that only the data can rule out, a device this machine lacks), the other data-dependent
# ones (slow) and the known gaps.
DVC_CASES = [
    case("beta-nan", "beta", math.nan, "train-mlp", "beta must be a finite number, got nan"),
    case("mlp-batch-size-over-data", "mlp.batch_size", 1000, "train-mlp",
         "mlp.batch_size must be <= 180 (the training images), got 1000"),
    case("device-cuda", "device", "cuda", "train-mlp",
         "device 'cuda' was requested (params.yaml: device) but is not available on this "
         "machine; available: cpu", skip=(torch.cuda.is_available(), "CUDA is present here")),
    case("sweep-batch-size-over-data", "sweep.batch_size", 1000, "beta-sweep@0.1",
         "sweep.batch_size must be <= 52 (the training images), got 1000", slow=True),  # of 0, 1, 7
    case("classifier-batch-size-over-data", "classifier.batch_size", 1000, "train-classifier",
         "classifier.batch_size must be <= 180 (the training images), got 1000", slow=True),
    # known gaps (strict xfail): see the reason
    case("top-level-key-misspelt", "bta", 0.5, "train-mlp",
         "unknown key bta; allowed keys in params.yaml", gap=NO_CHECK),
    case("sweep-key-misspelt", "sweep.gif_frame", 5, "beta-sweep@0.1",
         "unknown key sweep.gif_frame; allowed keys in sweep", gap=NO_CHECK),
]

# The schema's other refusals, through load_params: the function every stage calls first, so
# the stage's one line is "error: " and this message (as the DVC cases above show).
SCHEMA_CASES = [
    case("beta-negative", "beta", -0.5, "train-mlp", "beta must be >= 0, got -0.5"),
    case("beta-text", "beta", "one", "train-mlp", "beta must be a number, got 'one'"),
    case("seed-negative", "seed", -1, "train-mlp", "seed must be >= 0, got -1"),
    case("data-val-fraction-1.5", "data.val_fraction", 1.5, "split",
         "data.val_fraction must be > 0 and < 1, got 1.5"),
    case("data-val-fraction-0", "data.val_fraction", 0, "split",
         "data.val_fraction must be > 0 and < 1, got 0.0"),
    case("data-dataset-unknown", "data.dataset", "svhn", "download",
         "data.dataset must be one of fashion-mnist, mnist, cifar10, folder; got 'svhn'"),
    case("mlp-latent-dim-0", "mlp.latent_dim", 0, "train-mlp",
         "mlp.latent_dim must be >= 1, got 0"),
    case("mlp-epochs-0", "mlp.epochs", 0, "train-mlp", "mlp.epochs must be >= 1, got 0"),
    case("mlp-lr-0", "mlp.lr", 0, "train-mlp", "mlp.lr must be > 0 and <= 1, got 0.0"),
    case("mlp-activation-unknown", "mlp.activation", "gelu", "train-mlp",
         "mlp.activation must be one of relu, leaky_relu; got 'gelu'"),
    case("mlp-key-misspelt", "mlp.latnt_dim", 4, "train-mlp",
         "unknown key mlp.latnt_dim; allowed keys in mlp: likelihood, obs_std, prior, "
         "pseudo_inputs, kl_estimate, levels, gated, epochs"),
    case("conv-batch-size-0", "conv.batch_size", 0, "train-conv",
         "conv.batch_size must be >= 1, got 0"),
    case("conv-lr-negative", "conv.lr", -0.001, "train-conv",
         "conv.lr must be > 0 and <= 1, got -0.001"),
    case("conv-latent-dim-0", "conv.latent_dim", 0, "train-conv",
         "conv.latent_dim must be >= 1, got 0"),
    case("sweep-betas-empty", "sweep.betas", [], "sweep-table",
         "sweep.betas must list at least 1 value(s), got []"),
    case("sweep-betas-repeated", "sweep.betas", [0.1, 0.1], "sweep-table",
         "sweep.betas must not repeat a value, got [0.1, 0.1]"),
    case("sweep-class-negative", "sweep.classes", [0, 1, -1], "beta-sweep@0.1",
         "sweep.classes must be auto or a list of class indices (>= 0) or names, got [0, 1, -1]"),
    case("sweep-epochs-0", "sweep.epochs", 0, "beta-sweep@0.1",
         "sweep.epochs must be >= 1, got 0"),
    case("classifier-features-float", "classifier.features", 8.5, "train-classifier",
         "classifier.features must be an integer, got 8.5"),
    case("evaluate-samples-text", "evaluate.samples", "many", "evaluate",
         "evaluate.samples must be an integer, got 'many'"),
    case("evaluate-iwae-batch-float", "evaluate.iwae_batch", 2.5, "evaluate",
         "evaluate.iwae_batch must be an integer, got 2.5"),
    case("visualize-tsne-iterations-100", "visualize.tsne_iterations", 100, "visualize",
         "visualize.tsne_iterations must be >= 250, got 100"),
    case("visualize-span-text", "visualize.traversal_span", "wide", "visualize",
         "visualize.traversal_span must be a number, got 'wide'"),
]


def with_value(params: dict, key: str, value: Any) -> dict:
    bad = copy.deepcopy(params)
    *sections, last = key.split(".")
    node = bad
    for name in sections:
        node = node[name]
    node[last] = value
    return bad


@pytest.mark.parametrize("bad", SCHEMA_CASES)
def test_bad_param_is_refused_by_load_params_naming_the_key(tmp_path, bad):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_value(params, bad.key, bad.value), sort_keys=False))
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert message.startswith(bad.message) and "\n" not in message
    assert bad.key in message
    # and the stage that reports it declares the key, so `dvc repro` runs that stage
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][
        bad.stage.split("@")[0]]
    declared = [p for p in stage["params"] if isinstance(p, str)]
    assert any(bad.key == p or bad.key.startswith(p + ".") for p in declared), declared


@pytest.mark.parametrize("bad", DVC_CASES)
def test_bad_param_stops_its_stage_with_one_line_and_touches_nothing(tiny_repro, recorded,
                                                                    bad):
    project = tiny_repro
    assert snapshot(project.root) == recorded.sha256
    text = yaml.safe_dump(with_value(recorded.params, bad.key, bad.value), sort_keys=False)
    if isinstance(bad.value, float) and math.isnan(bad.value):
        assert "beta: .nan" in text  # YAML's NaN, as a user would write it
    (project.root / "params.yaml").write_text(text)
    proc = project.dvc("repro", check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode != 0, both
    # DVC started exactly the stage that reads the key, and that stage failed
    assert RUNNING.findall(proc.stdout) == [bad.stage], both
    assert f"ERROR: failed to reproduce '{bad.stage}'" in proc.stderr
    # ... with one line of its own, naming the key and what is allowed, before any work
    lines = stage_lines(proc.stderr)
    assert len(lines) == 1, both
    assert lines[0].startswith("error: " + bad.message), both
    assert bad.key in lines[0]
    assert "Traceback" not in both
    assert not PROGRESS.search(both), both
    assert all(DVC_STDOUT.match(line) for line in proc.stdout.splitlines()), proc.stdout

    # outputs of stages DVC did not start are untouched; the stopped stage wrote nothing
    # (DVC deletes a stage's outputs before running it) and nothing new appeared
    now = snapshot(project.root)
    for path, digest in recorded.sha256.items():
        if recorded.owner[path] == bad.stage:
            assert now.get(path) in (None, digest), path
        else:
            assert now.get(path) == digest, path
    assert sorted(set(now) - set(recorded.sha256)) == []

    project.git("checkout", "--", "params.yaml")
    project.git("checkout", "--", ".")
    project.dvc("checkout")
    assert snapshot(project.root) == recorded.sha256  # dvc.lock included


# --------------------------------------------------------------------------------------------
# B. Bad data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def offline_repro(tiny_repro):
    """A copy of the session's tiny project whose official downloads fail at once."""
    # the download stage's last resort is the official URL: send it to a closed local port
    proxy = f"http://127.0.0.1:{closed_port()}"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        tiny_repro.env[var] = proxy
    for var in ("no_proxy", "NO_PROXY", "ALL_PROXY", "all_proxy"):
        tiny_repro.env.pop(var, None)
    return tiny_repro


def flip_last_byte(gz: Path) -> bytes:
    """Rewrite a .gz with one byte of its content changed (same size and structure)."""
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[-1] ^= 0xFF
    gz.write_bytes(gzip.compress(bytes(content)))
    return bytes(content)


def test_download_stage_names_a_truncated_and_an_altered_raw_file(offline_repro, tmp_path):
    project = offline_repro
    before = snapshot(project.root)
    md5s = json.loads(project.md5_json.read_text())
    raw = project.root / "data/raw/fashion-mnist"

    def repro_with_mirror(mirror: Path) -> str:
        """`dvc repro` after pointing data.mirror at ``mirror``: download reruns and fails."""
        params = project.params()
        params["data"]["mirror"] = str(mirror)
        (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = project.dvc("repro", check=False)
        both = proc.stdout + proc.stderr
        assert proc.returncode != 0, both
        assert RUNNING.findall(proc.stdout) == ["download"], both
        assert "Traceback" not in both
        assert "error: could not get verified fashion-mnist raw files" in proc.stderr
        # DVC removed the old raw files before running the stage (fetch_raw would have kept
        # them), and the stage put nothing in their place; split was not run
        assert not raw.exists()
        assert snapshot(project.root) == {p: d for p, d in before.items()
                                          if not p.startswith("data/raw/")}
        project.git("checkout", "--", ".")
        project.dvc("checkout")
        assert snapshot(project.root) == before
        return proc.stderr

    truncated = tmp_path / "mirror-truncated"
    shutil.copytree(project.mirror, truncated)
    gz = truncated / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    err = repro_with_mirror(truncated)
    assert f"mirror {truncated}: REJECTED: {gz}: truncated gzip" in err

    altered = tmp_path / "mirror-altered"
    shutil.copytree(project.mirror, altered)
    gz = altered / "train-labels-idx1-ubyte.gz"
    content = flip_last_byte(gz)
    err = repro_with_mirror(altered)
    assert (f"mirror {altered}: REJECTED: {gz}: md5 of the decompressed content is "
            f"{fakedata.md5_bytes(content)}, expected {md5s['train-labels-idx1-ubyte']}") in err


# (what to do to train.npz's arrays, what the one line must say after the file's path)
BAD_ARRAYS = [
    pytest.param(lambda x, y: (x[:, :, :14, :14].copy(), y),
                 "'images' must be N x C x S x S with C 1 or 3 and S one of 28, 32, 64, got "
                 "(180, 1, 14, 14)", id="images-14x14"),
    pytest.param(lambda x, y: (x[:, 0].copy(), y),
                 "'images' must be uint8 (N, C, H, W), got uint8 (180, 28, 28)",
                 id="images-without-channel-axis",
                 marks=pytest.mark.slow),
    pytest.param(lambda x, y: (x.astype(np.float32), y),
                 "'images' must be uint8 (N, C, H, W), got float32 (180, 1, 28, 28)",
                 id="images-float32",
                 marks=pytest.mark.slow),
    pytest.param(lambda x, y: (x, y.astype(np.int32)),
                 "'labels' must be int64 (180,), got int32 (180,)", id="labels-int32",
                 marks=pytest.mark.slow),
    pytest.param(lambda x, y: (x[:0], y[:0]), "holds no images", id="no-images"),
]


@pytest.mark.parametrize("damage,message", BAD_ARRAYS)
def test_train_stage_names_a_bad_processed_array(offline_repro, recorded, damage, message):
    project = offline_repro
    processed = project.root / "data/processed/fashion-mnist"
    save_arrays(processed / "train.npz", *damage(*load_split(processed, "train")))
    # -s: train-mlp alone; a plain `dvc repro train-mlp` would first rerun split, whose
    # output changed, and so train on a restored file
    proc = project.dvc("repro", "-s", "train-mlp", check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode != 0, both
    assert RUNNING.findall(proc.stdout) == ["train-mlp"], both
    assert stage_lines(proc.stderr) == [
        f"error: data/processed/fashion-mnist/train.npz: {message}"], both
    assert "Traceback" not in both and not PROGRESS.search(both)
    # train-mlp wrote nothing (DVC had removed its outputs); everything else is as it was
    now = snapshot(project.root)
    for path, digest in recorded.sha256.items():
        if path == "data/processed/fashion-mnist/train.npz":
            continue
        assert now.get(path) == (None if recorded.owner[path] == "train-mlp" else digest), path
    # git gives back the uncached outputs (metrics, history); a modified cached output
    # blocks a plain `dvc checkout` ("unsaved files"): --force
    project.git("checkout", "--", ".")
    project.dvc("checkout", "--force")
    assert snapshot(project.root) == recorded.sha256


@pytest.mark.slow
def test_train_stage_names_train_and_val_images_of_different_shapes(offline_repro):
    project = offline_repro
    processed = project.root / "data/processed/fashion-mnist"
    x, y = load_split(processed, "train")
    cifar_like = np.zeros((len(x), 3, 32, 32), np.uint8)
    save_arrays(processed / "train.npz", cifar_like, y)
    proc = project.dvc("repro", "-s", "train-mlp", check=False)
    both = proc.stdout + proc.stderr
    assert proc.returncode != 0, both
    assert "Traceback" not in both and not PROGRESS.search(both), both
    assert len(stage_lines(proc.stderr)) == 1 and "val.npz" in proc.stderr


def test_load_split_refuses_images_of_no_known_shape_and_empty_splits(tmp_path):
    # in process, what the stage tests above see through DVC (the checks this file added)
    labels = np.zeros(3, np.int64)
    save_arrays(tmp_path / "train.npz", np.zeros((3, 1, 14, 14), np.uint8), labels)
    with pytest.raises(DataFormatError, match=r"train\.npz: 'images' must be N x C x S x S "
                                              r".*, got \(3, 1, 14, 14\)$"):
        load_split(tmp_path, "train")
    save_arrays(tmp_path / "val.npz", np.zeros((0, 1, 28, 28), np.uint8), labels[:0])
    with pytest.raises(DataFormatError, match=r"val\.npz: holds no images$"):
        load_split(tmp_path, "val")
    for shape in ((3, 1, 28, 28), (3, 3, 32, 32)):  # each dataset's shape still loads
        save_arrays(tmp_path / "test.npz", np.zeros(shape, np.uint8), labels)
        assert load_split(tmp_path, "test")[0].shape == shape


def test_train_classifier_refuses_a_batch_larger_than_the_training_set():
    from vaepipe.evaluate.classifier import Classifier, train_classifier
    from vaepipe.config import ConfigError

    x, y = np.zeros((20, 1, 28, 28), np.uint8), np.arange(20, dtype=np.int64) % 10
    model = Classifier((1, 28, 28), 10, (4,), 8)
    before = copy.deepcopy(model.state_dict())
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^classifier\.batch_size must be <= 20 \(the "
                                           r"training images\), got 21$"):
        train_classifier(model, x, y, 1, 21, 1e-2, 0.0, 0, cpu, log=None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step
    assert len(train_classifier(model, x, y, 1, 20, 1e-2, 0.0, 0, cpu, log=None)) == 1


@pytest.mark.parametrize("tamper,message", [
    (lambda c: {**c, "kind": "transformer"},
     r"models/mlp/best\.pt: holds a 'transformer' network; expected 'mlp' or 'conv'"),
    (lambda c: {**c, "model_args": {**c["model_args"], "latent_dim": 5}},
     r"models/mlp/best\.pt: weights do not fit a mlp model with \{.*'latent_dim': 5"),
], ids=["kind", "shapes"])
def test_evaluate_stage_names_a_mismatched_checkpoint(tmp_path, monkeypatch, capsys, tamper,
                                                      message):
    # load_checkpoint's own refusals are tested in test_training.py; here: the stage turns
    # them into one line and exit 2 before any work
    from vaepipe.evaluate.classifier import Classifier
    from vaepipe.models.vae import build_model
    from vaepipe.train.checkpoints import save_checkpoint

    rng = np.random.default_rng(0)
    for name, n in (("train", 40), ("val", 10), ("test", 20)):
        save_arrays(tmp_path / f"data/{name}.npz",
                    rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                    np.arange(n, dtype=np.int64) % 10)
    write_json(tmp_path / "data/baselines.json", baseline_rates(
        load_split(tmp_path / "data", "train")[0], load_split(tmp_path / "data", "test")[0]))
    save_checkpoint(tmp_path / "models/classifier.pt", Classifier((1, 28, 28), 10, (4,), 8),
                    {"epochs": 1, "metrics": {}})
    for kind, args in (("mlp", {"hidden": (8,)}), ("conv", {"channels": (4,)})):
        model = build_model(kind, image_shape=(1, 28, 28), latent_dim=2, **args)
        for name in ("epoch_01", "best", "final"):
            save_checkpoint(tmp_path / f"models/{kind}/{name}.pt", model,
                            {"epoch": 1, "metrics": {}})
    best = tmp_path / "models/mlp/best.pt"
    torch.save(tamper(torch.load(best, weights_only=True)), best)
    (tmp_path / "params.yaml").write_text("device: cpu\n")
    monkeypatch.chdir(tmp_path)
    code = load_stage("evaluate.py").main([
        "--data", "data", "--models", "models", "--classifier", "models/classifier.pt",
        "--arrays", "arrays", "--metrics", "evaluate.json", "--details", "details.json",
        "--summary", "evaluation.md", "--baselines", "data/baselines.json"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert captured.out == ""
    assert not any((tmp_path / p).exists()
                   for p in ("arrays", "evaluate.json", "details.json", "evaluation.md"))


# CIFAR-10 archives whose members try to leave the target directory


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = type_, link, 0o644
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if type_ == tarfile.REGTYPE else None)


def write_tarball(mirror: Path, replace: dict[str, tuple[bytes, str]] | None = None,
                  extra: list[tuple[str, bytes, bytes, str]] = ()) -> dict[str, str]:
    """A CIFAR-10 tarball of tiny batches; ``replace`` turns named members into links
    (name -> (type, target)), ``extra`` adds (name, data, type, target) members first.
    Returns the md5 table of the members' content."""
    mirror.mkdir(parents=True)
    files = fakedata.cifar_files(n_per_batch=6)
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz", compresslevel=1) as tar:
        for name, data, type_, link in extra:
            _add(tar, name, data, type_, link)
        _add(tar, CIFAR_DIR, type_=tarfile.DIRTYPE)
        for name, data in files.items():
            type_, link = (replace or {}).get(name, (tarfile.REGTYPE, ""))
            _add(tar, f"{CIFAR_DIR}/{name}", data, type_, link)
    return {name: fakedata.md5_bytes(data) for name, data in files.items()}


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() or p.is_symlink())


def test_tar_members_escaping_the_target_are_never_written(tmp_path, monkeypatch):
    work = tmp_path / "work"  # the current directory, where a naive extractall would write
    work.mkdir()
    monkeypatch.chdir(work)
    outside = tmp_path / "outside"
    outside.mkdir()
    absolute = outside / "absolute-evil"
    # ../ at every depth up to tmp_path from wherever below tmp_path/raw an extraction runs
    # (fetch_raw stages files in raw/.cifar10.fetch-*/attempt-*/files), so that writing any
    # of them as named would leave a file under tmp_path, outside raw/
    climbs = [("../" * depth + f"evil-up-{depth}", b"escaped", tarfile.REGTYPE, "")
              for depth in range(1, 5)]
    md5s = write_tarball(tmp_path / "mirror", extra=[
        *climbs,
        (str(absolute), b"escaped", tarfile.REGTYPE, ""),
        (f"{CIFAR_DIR}/../../../../../evil-dotdot", b"escaped", tarfile.REGTYPE, ""),
        (f"{CIFAR_DIR}/link-out", b"", tarfile.SYMTYPE, str(outside)),
        (f"{CIFAR_DIR}/link-out/evil-through-link", b"escaped", tarfile.REGTYPE, ""),
    ])
    dest = tmp_path / "raw" / "cifar10"
    fetch_raw("cifar10", dest, tmp_path / "mirror", standard_dirs=(), base_urls=(),
              expected_md5=md5s)
    # nothing outside the target: not beside it, not in the current directory, not through
    # the symlinked directory, not at the absolute path
    assert [p for p in tmp_path.rglob("*evil*")] == []
    assert files_under(outside) == [] and files_under(work) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "outside", "raw", "work"]
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["cifar10"]
    # inside it: the members the dataset needs, as regular files with their content; no more
    assert files_under(dest) == sorted(md5s)
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert {n: fakedata.md5_file(dest / n) for n in md5s} == md5s


@pytest.mark.parametrize("type_", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
@pytest.mark.parametrize("target", ["../../secret", "ABSOLUTE"], ids=["relative", "absolute"])
def test_tar_member_that_is_a_link_out_of_the_target_is_refused(tmp_path, monkeypatch, type_,
                                                               target):
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not CIFAR")
    link = str(secret) if target == "ABSOLUTE" else target
    mirror = tmp_path / "mirror"
    md5s = write_tarball(mirror, replace={"data_batch_2": (type_, link)})
    dest = tmp_path / "raw" / "cifar10"
    with pytest.raises(DataSourceError) as err:
        fetch_raw("cifar10", dest, mirror, standard_dirs=(), base_urls=(), expected_md5=md5s)
    archive = mirror / "cifar-10-python.tar.gz"
    assert (f"mirror {mirror}: REJECTED: {archive}[{CIFAR_DIR}/data_batch_2]: not a regular "
            f"file in the archive") in str(err.value)
    assert not dest.exists() and list((tmp_path / "raw").iterdir()) == []
    assert secret.read_bytes() == b"not CIFAR"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw", "secret"]


def test_load_splits_names_the_split_whose_images_differ_from_the_first(tmp_path):
    labels = np.zeros(2, np.int64)
    save_arrays(tmp_path / "train.npz", np.zeros((2, 1, 28, 28), np.uint8), labels)
    save_arrays(tmp_path / "val.npz", np.zeros((2, 1, 28, 28), np.uint8), labels)
    save_arrays(tmp_path / "test.npz", np.zeros((2, 3, 32, 32), np.uint8), labels)
    (train_x, _), (val_x, _) = load_splits(tmp_path, "train", "val")
    assert train_x.shape == val_x.shape == (2, 1, 28, 28)
    with pytest.raises(DataFormatError, match=rf"^{tmp_path}/test\.npz: images are 3x32x32, but "
                                              r"train\.npz's are 1x28x28; rerun `dvc repro "
                                              r"split`$"):
        load_splits(tmp_path, "train", "val", "test")
