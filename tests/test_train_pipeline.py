"""The whole pipeline through real DVC on tiny generated data; train-mlp/train-conv in detail."""
import csv
import json
import re

import pytest
import torch

from tiny import TINY_PIPELINE as TINY
from vaepipe.training import load_checkpoint
HISTORY_COLUMNS = ["epoch", "beta", "lr", "train_loss", "train_recon", "train_kl", "val_loss",
                   "val_recon", "val_kl", "val_nelbo", "seconds", "images_per_second"]


def ran(stdout: str) -> set[str]:
    """The stages DVC says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def test_whole_pipeline_repro_twice_and_an_experiment_reruns_only_what_reads_beta(tiny_repro):
    # tiny_repro: a copy of a project where the first `dvc repro` ran every stage (the
    # session fixture asserts ALL_STAGES) and its outputs were committed
    project = tiny_repro

    for kind, epochs in (("mlp", 2), ("conv", 1)):
        for name in ("epoch_01", "best", "final"):
            model, ckpt = load_checkpoint(project.root / f"models/{kind}/{name}.pt")
            assert ckpt["kind"] == kind and ckpt["params"]["beta"] == 1.0
            assert ckpt["params"]["data"]["dataset"] == "fashion-mnist"
            assert model.decode(torch.zeros(2, 4)).shape == (2, 1, 28, 28)
        metrics = project.read_json(f"reports/train/{kind}.json")
        assert metrics["epochs"] == epochs and 1 <= metrics["best_epoch"] <= epochs
        assert metrics["best_val_nelbo"] == pytest.approx(
            metrics["best_val_recon"] + metrics["best_val_kl"])
        assert metrics["device"].startswith("cpu") and metrics["images_per_second"] > 0
        with open(project.root / f"reports/train/{kind}_history.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == HISTORY_COLUMNS and len(rows) == epochs
    with open(project.root / "reports/train/mlp_history.csv") as fh:
        assert [float(r["beta"]) for r in csv.DictReader(fh)] == [0.5, 1.0]  # warm-up of 2

    again = project.dvc("repro")
    assert ran(again.stdout) == set()
    assert "Data and pipelines are up to date" in again.stdout
    assert "up to date" in project.dvc("status").stdout

    shown = project.dvc("metrics", "show").stdout
    assert "reports/train/mlp.json" in shown and "best_val_nelbo" in shown
    plots = project.dvc("plots", "show", "--json").stdout
    assert "reports/train/mlp_history.csv" in plots and "reports/train/conv_history.csv" in plots
    exp = project.dvc("exp", "run", "-S", "beta=0.5")
    # exactly the stages that read beta, and those downstream of them
    assert ran(exp.stdout) == {"train-mlp", "train-conv", "evaluate", "visualize"}
    _, ckpt = load_checkpoint(project.root / "models/conv/final.pt")
    assert ckpt["params"]["beta"] == 0.5
    diff = json.loads(project.dvc("metrics", "diff", "--json").stdout)
    assert "best_val_loss" in diff["reports/train/conv.json"]
    changed = {k for k in diff.get("reports/evaluate.json", {}) if k.endswith(".nelbo")}
    assert {"mlp.best.nelbo", "conv.final.nelbo"} <= changed
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    assert "beta" in json.dumps(shown) and "0.5" in json.dumps(shown)


def test_bad_device_stops_before_training(dvc_project):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present, so device: cuda is valid here")
    project = dvc_project({"mlp": TINY["mlp"], "conv": TINY["conv"], "device": "cuda"})
    proc = project.dvc("repro", "train-conv", check=False)
    assert proc.returncode != 0
    assert "device 'cuda' was requested (params.yaml: device) but is not available" in (
        proc.stdout + proc.stderr)
    assert not (project.root / "models/conv/best.pt").exists()
