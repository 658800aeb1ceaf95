"""The README's `dvc exp run -S ...` lines for recipes 001, 003 and 004, run for real on tiny data.

The commands are read from the README itself, so the documented lines are the tested ones.
"""
import csv
import re
import shlex
from pathlib import Path

import pytest

from vaepipe.train.checkpoints import load_checkpoint

README = Path(__file__).resolve().parent.parent / "README.md"
# mlp.batch_size: the tiny CIFAR split has 80 training images, fewer than the default 128
SHORT = ["-S", "mlp.epochs=1", "-S", "conv.epochs=1", "-S", "mlp.batch_size=64"]


def readme_variants() -> dict[str, list[str]]:
    text = README.read_text()
    block = text.split("<!-- recipe-variants", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    variants, current = {}, None
    for line in block.strip().splitlines():
        if line.startswith("# recipe"):
            current = re.match(r"# (recipe \d+)", line).group(1)
        elif line.startswith("dvc exp run"):
            variants[current] = shlex.split(line)[1:]
    return variants


def test_readme_lists_the_three_variants():
    assert sorted(readme_variants()) == ["recipe 001", "recipe 003", "recipe 004"]


def run_variant(dvc_project, name, dataset):
    project = dvc_project({"data": {"dataset": dataset}}, n_train=200, n_test=50,
                          n_per_batch=20)
    # the training stages only: evaluation and figures of the variants are not what is checked
    proc = project.dvc(*readme_variants()[name], *SHORT, "train-mlp", "train-conv")
    assert "Running stage 'train-mlp'" in proc.stdout
    assert "Running stage 'train-conv'" in proc.stdout
    mlp = load_checkpoint(project.root / "models/mlp/final.pt")[1]
    conv = load_checkpoint(project.root / "models/conv/final.pt")[1]
    for ckpt in (mlp, conv):
        assert ckpt["epoch"] == 1 and ckpt["params"]["data"]["dataset"] == dataset
        assert all(map(lambda v: v == v, ckpt["metrics"].values()))  # no NaN
    return project, mlp, conv


def history(project, kind):
    """What training did, epoch by epoch (the KL weight and the optimizer's lr as used)."""
    with open(project.root / f"reports/train/{kind}_history.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_recipe_001_mnist_mlp(dvc_project):
    project, mlp, _ = run_variant(dvc_project, "recipe 001", "mnist")
    # the model that was built and trained (its weights fit these arguments)
    assert mlp["model_args"]["hidden"] == [400, 400] and mlp["model_args"]["latent_dim"] == 20
    assert mlp["model_args"]["activation"] == "relu"
    assert mlp["state_dict"]["encoder.1.weight"].shape == (400, 784)
    # the optimizer that ran, read back from it, and the KL weight each epoch used
    assert mlp["optimizer"] == {"class": "Adam", "lr": 0.001, "weight_decay": 0.0}
    rows = history(project, "mlp")
    assert [float(r["beta"]) for r in rows] == [1.0]  # constant: no warm-up discount
    assert [float(r["lr"]) for r in rows] == [0.001]


@pytest.mark.slow
def test_recipe_003_cifar10_conv(dvc_project):
    project, _, conv = run_variant(dvc_project, "recipe 003", "cifar10")
    assert conv["model_args"] == {"image_shape": [3, 32, 32], "latent_dim": 128,
                                  "channels": [96, 192, 384],
                                  "likelihood": {"name": "gaussian", "obs_std": 1.0},
                                  "prior": "standard_normal", "kl_estimate": "closed_form"}
    assert conv["state_dict"]["encoder.6.weight"].shape == (384, 192, 3, 3)
    assert conv["optimizer"]["class"] == "AdamW"
    assert conv["optimizer"]["weight_decay"] == pytest.approx(1e-5)
    row = history(project, "conv")[0]
    assert float(row["beta"]) == pytest.approx(0.001) and float(row["lr"]) == 0.001
    # a Gaussian likelihood with obs_std 1 costs at least 3072 * 0.5 * ln(2 pi) ~ 2823 nats
    # per 32x32x3 image; the Bernoulli term on these images would be ~2000
    assert 2823 < float(row["val_recon"]) < 2823 + 3072 * 0.5
    counts = project.read_json("data/processed/cifar10/manifest.json")["counts"]
    assert counts == {"train": 80, "val": 20, "test": 20}  # 5 x 20 train images, 80/20


@pytest.mark.slow
def test_recipe_004_dequantized_mnist(dvc_project):
    project, mlp, _ = run_variant(dvc_project, "recipe 004", "mnist")
    assert mlp["params"]["data"]["dequantize"] is True
    assert mlp["model_args"]["hidden"] == [400, 400]
    assert mlp["optimizer"] == {"class": "Adam", "lr": 0.001, "weight_decay": 0.0}
    assert [float(r["beta"]) for r in history(project, "mlp")] == [1.0]
