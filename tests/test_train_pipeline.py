"""The whole pipeline through real DVC on tiny generated data; train-mlp/train-conv in detail."""
import csv
import json
import re

import pytest
import torch

from vaepipe.train.checkpoints import load_checkpoint
HISTORY_COLUMNS = ["epoch", "beta", "lr", "train_loss", "train_recon", "train_kl", "val_loss",
                   "val_recon", "val_kl", "val_nelbo", "seconds", "images_per_second"]


def ran(stdout: str) -> set[str]:
    """The stages DVC says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def test_whole_pipeline_outputs_and_a_second_repro_runs_nothing(tiny_repro):
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

    assert project.read_json("reports/train/mlp.json")["partial"] is False

    shown = project.dvc("metrics", "show").stdout
    assert "reports/train/mlp.json" in shown and "best_val_nelbo" in shown
    plots = project.dvc("plots", "show", "--json").stdout
    assert "reports/train/mlp_history.csv" in plots and "reports/train/conv_history.csv" in plots
    # `dvc exp run -S beta=0.5` on this project: tests/test_team_workflow.py; `device: cuda`
    # on a machine without it: tests/test_reliability.py


def test_a_log_holds_one_line_per_epoch_and_no_progress_bar(tiny_repro):
    # DVC's output here is a pipe, as in `dvc queue logs`: tqdm's bar is off, the epoch lines stay
    project = tiny_repro
    out = project.dvc("repro", "-s", "-f", "train-mlp")
    text = out.stdout + out.stderr
    lines = re.findall(r"^mlp epoch +(\d+)/2: kl weight", text, re.M)
    assert lines == ["1", "2"], text
    assert "\r" not in text and "img/s]" not in text


def test_an_edit_to_the_training_loop_reruns_only_the_stages_that_train_vaes(tiny_repro):
    # the loop's per-epoch log line: every stage that imports the loop depends on it, and only
    # the VAE trainings import it (the evaluation, the classifier and the sweep's table share
    # the exception, the batch sizes and the per-image ELBO through other modules)
    project = tiny_repro
    loop = project.root / "vaepipe/train/loop.py"
    text = loop.read_text()
    assert text.count('f"{model.kind} epoch {epoch:3d}/{cfg.epochs}: kl weight') == 1
    loop.write_text(text.replace("kl weight {weight:.3f}", "KL weight {weight:.3f}"))
    status = json.loads(project.dvc("status", "--json").stdout)
    assert set(status) == {"train-mlp", "train-conv", "beta-sweep@0.1", "beta-sweep@1.0"}
    for stage, changes in status.items():
        assert changes == [{"changed deps": {"vaepipe/train/loop.py": "modified"}}], stage
