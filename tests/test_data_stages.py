"""The download/split stage scripts, a real `dvc repro` on a tiny mirror, and the real data."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import fakedata
from vaepipe.data import arrays, catalog, sources, split
from conftest import load_stage

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def run_stage(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python stages/<script> <args>`` of this checkout with ``cwd`` as project root."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "stages" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def write_params(directory: Path, **data_section: object) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(data_section)
    (directory / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("script,args,key,value", [
    ("download.py", ["--out", "raw"], "data.dataset", "svhn"),
    ("download.py", ["--out", "raw"], "data.mirror", 3),
    ("split.py", ["--raw", "raw", "--out", "out", "--metrics", "m.json", "--baselines", "b.json"], "data.val_fraction", 1.5),
    ("split.py", ["--raw", "raw", "--out", "out", "--metrics", "m.json", "--baselines", "b.json"], "data.split_seed", -1),
])
def test_bad_params_exit_2_naming_the_key(tmp_path, script, args, key, value) -> None:
    write_params(tmp_path, **{key.split(".")[1]: value})
    proc = run_stage(script, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no work done


def test_split_stage_reports_missing_raw_data_with_exit_1(tmp_path) -> None:
    write_params(tmp_path)
    proc = run_stage("split.py", "--raw", "raw", "--out", "out", "--metrics", "m.json",
                     "--baselines", "b.json", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == "error: raw: no such directory; run the download stage first\n"
    assert not (tmp_path / "out").exists()


def test_download_stage_reports_failure_with_exit_1(tmp_path, monkeypatch, capsys) -> None:
    # keep the download local: the official URL becomes a port where nothing listens
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    spec = dataclasses.replace(catalog.FASHION_MNIST, base_urls=(refused,),
                               standard_dir=str(tmp_path / "no-std"))
    monkeypatch.setitem(catalog.DATASETS, "fashion-mnist", spec)
    write_params(tmp_path, mirror=str(tmp_path / "no-mirror"))
    monkeypatch.chdir(tmp_path)
    assert load_stage("download.py").main(["--out", "data/raw/fashion-mnist"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not get verified fashion-mnist raw files")
    for place in ("no-mirror", "no-std", refused):
        assert place in err
    assert not (tmp_path / "data/raw/fashion-mnist").exists()


IMPORT_ONLY = """
import importlib.util, json, os, sys
# the third-party packages first (PyTorch and scikit-learn set KMP_* for OpenMP on import)
import torch, torchvision, numpy, scipy, sklearn, matplotlib, pandas, PIL, tqdm
threads, seen = torch.get_num_threads(), {}
for path in sys.argv[1:]:
    before = dict(os.environ)
    spec = importlib.util.spec_from_file_location("stage_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seen[os.path.basename(path)] = {
        "main": callable(getattr(module, "main", None)),
        "env": sorted(set(os.environ.items()) ^ set(before.items())),
        "threads_kept": torch.get_num_threads() == threads}
print(json.dumps(seen))
"""


def test_stage_scripts_do_nothing_on_import(tmp_path: Path) -> None:
    # from an empty directory: a stage that ran (or parsed its arguments) on import would fail
    # on the missing params.yaml and arguments, print, set up the process, or write files here
    scripts = sorted((REPO_ROOT / "stages").glob("*.py"))
    assert len(scripts) == 8
    proc = subprocess.run([sys.executable, "-c", IMPORT_ONLY, *map(str, scripts)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout) == {
        p.name: {"main": True, "env": [], "threads_kept": True} for p in scripts}
    assert list(tmp_path.iterdir()) == []


def test_dvc_repro_on_a_tiny_mirror(dvc_project) -> None:
    project = dvc_project(n_train=200, n_test=50)
    out = "data/processed/fashion-mnist"

    first = project.dvc("repro", "split")
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'split'" in first.stdout
    manifest = project.read_json(f"{out}/manifest.json")
    assert manifest["counts"] == {"train": 180, "val": 20, "test": 50}
    raw = project.root / "data/raw/fashion-mnist"
    assert sorted(p.name for p in raw.iterdir()) == sorted(fakedata.IDX_FILES)

    again = project.dvc("repro", "split")
    assert "Running stage" not in again.stdout
    assert "didn't change, skipping" in again.stdout
    assert "Data and pipelines are up to date" in again.stdout
    status = project.dvc("status", "split")
    assert "Data and pipelines are up to date" in status.stdout

    # only the counts are metrics; the manifest's md5s and per-class counts stay in the output
    table = project.dvc("metrics", "show").stdout
    assert all(f"images.{name}" in table for name in ("train", "val", "test"))
    assert "md5" not in table and "class_counts" not in table
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    assert "data/processed/fashion-mnist/manifest.json" not in shown[""]["data"]
    assert shown[""]["data"]["reports/split.json"]["data"] == {
        "images": {"train": 180, "val": 20, "test": 50}}

    # editing the split module reruns split, not download (each stage depends on its modules)
    split_module = project.root / "vaepipe/data/split.py"
    original = split_module.read_text()
    split_module.write_text(original + "\n# an edit\n")
    changed = project.dvc("status", "split").stdout  # split and what it depends on
    assert "split:" in changed and "download:" not in changed
    split_module.write_text(original)
    assert "Data and pipelines are up to date" in project.dvc("status", "split").stdout

    project.git("add", "-A")
    project.git("commit", "-q", "-m", "first repro")
    exp = project.dvc("exp", "run", "-S", "data.val_fraction=0.2", "split")
    assert "Stage 'download' didn't change, skipping" in exp.stdout
    assert "Running stage 'split'" in exp.stdout
    manifest = project.read_json(f"{out}/manifest.json")
    assert manifest["counts"] == {"train": 160, "val": 40, "test": 50}
    assert manifest["params"] == {"val_fraction": 0.2, "split_seed": 42}
    images, labels = arrays.load_split(project.root / out, "val")
    assert images.shape == (40, 1, 28, 28) and labels.dtype == np.int64


def test_dvc_repro_cifar10_from_a_tarball_mirror(dvc_project) -> None:
    project = dvc_project({"data": {"dataset": "cifar10", "val_fraction": 0.25}}, n_per_batch=8)
    project.dvc("repro", "split")
    manifest = project.read_json("data/processed/cifar10/manifest.json")
    assert manifest["counts"] == {"train": 30, "val": 10, "test": 8}
    assert manifest["image_shape"] == [3, 32, 32]
    images, _ = arrays.load_split(project.root / "data/processed/cifar10", "train")
    assert images.shape == (30, 3, 32, 32)


@pytest.mark.skipif(not REAL_FASHION.is_dir(),
                    reason=f"{REAL_FASHION} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_download_and_split(tmp_path) -> None:
    raw, out = tmp_path / "raw" / "fashion-mnist", tmp_path / "processed"
    used = sources.fetch_raw("fashion-mnist", raw, None, standard_dirs=None, base_urls=())
    assert used == f"standard directory {REAL_FASHION}"
    assert {p.name: fakedata.md5_file(p) for p in raw.iterdir()} == FASHION_MD5
    manifest = split.write_split(raw, out, "fashion-mnist", 0.1, 42)
    assert manifest["counts"] == {"train": 54000, "val": 6000, "test": 10000}
    assert manifest["class_counts"]["test"] == {str(c): 1000 for c in range(10)}
    assert sum(manifest["class_counts"]["val"].values()) == 6000
