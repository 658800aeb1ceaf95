"""beta-sweep (a DVC matrix stage) and sweep-table through real DVC on tiny generated data."""
import csv
import math

import pytest
import yaml

from vaepipe.figures.animation import read_gif_record
from vaepipe.train.checkpoints import load_checkpoint

# Tiny everything: two betas, 2 epochs of a 4-8 channel model; train-conv too, the stage that
# shows `-S beta=0.5` did change something.
TINY = {
    "sweep": {"betas": [0.1, 1.0], "epochs": 2, "channels": [4, 8], "batch_size": 16,
              "gif_frames": 5},
    "conv": {"epochs": 1, "channels": [4, 8], "latent_dim": 2, "batch_size": 64},
}
# Only what the test needs (and what it depends on): a full `dvc repro` also runs the
# classifier, evaluation and figures.
TARGETS = ("sweep-table", "train-conv")


def _ran(stdout: str) -> list[str]:
    """Names of the stages a dvc repro / exp run ran, in order."""
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def test_matrix_expands_to_one_stage_per_beta(dvc_project):
    project = dvc_project({"sweep": {"betas": [0.1, 0.25, 1.0, 2]}})
    listed = [line.split()[0] for line in project.dvc("stage", "list").stdout.splitlines()]
    assert [s for s in listed if s.startswith("beta-sweep")] == [
        "beta-sweep@0.1", "beta-sweep@0.25", "beta-sweep@1.0", "beta-sweep@2"]
    assert "sweep-table" in listed


@pytest.mark.slow
def test_sweep_repro_add_a_beta_and_an_unrelated_experiment(dvc_project):
    project = dvc_project(TINY)
    first = project.dvc("repro", *TARGETS)
    ran = _ran(first.stdout)
    assert {"beta-sweep@0.1", "beta-sweep@1.0", "sweep-table"} <= set(ran)
    assert ran.index("sweep-table") > max(ran.index("beta-sweep@0.1"), ran.index("beta-sweep@1.0"))

    root = project.root
    for label, beta in (("0.1", 0.1), ("1.0", 1.0)):
        model, ckpt = load_checkpoint(root / f"models/sweep/beta_{label}.pt")
        assert ckpt["params"]["beta"] == beta and ckpt["epoch"] == 2
        assert ckpt["params"]["sweep"]["classes"] == [0, 1, 7]
        assert "betas" not in ckpt["params"]["sweep"]
        assert model.latent_dim == 2 and model.model_args["channels"] == [4, 8]
        with open(root / f"reports/sweep/beta_{label}/history.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["epoch"] for r in rows] == ["1", "2"]
        assert all(float(r["beta"]) == beta for r in rows)
        for key in ("train_recon", "train_kl", "train_loss", "val_recon", "val_kl", "val_loss"):
            assert all(math.isfinite(float(r[key])) for r in rows)

        n_frames, sizes, record = read_gif_record(root / f"reports/sweep/beta_{label}/latent.gif")
        assert n_frames == 5 and len(set(sizes)) == 1
        assert record["frames"][0]["epoch"] == 0 and record["frames"][-1]["epoch"] == 2
        assert all(f["xlim"] == record["xlim"] and f["ylim"] == record["ylim"]
                   for f in record["frames"])

    # the table: one row per beta, finite numbers; metrics nested sweep.<beta>.<metric>
    with open(root / "reports/sweep.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [float(r["beta"]) for r in table] == [0.1, 1.0]
    assert all(math.isfinite(float(v)) for r in table for v in r.values())
    tree = project.read_json("reports/sweep.json")
    assert list(tree) == ["sweep"] and list(tree["sweep"]) == ["0.1", "1.0"]
    assert all(isinstance(v, float) and math.isfinite(v)
               for row in tree["sweep"].values() for v in row.values())
    assert tree["sweep"]["1.0"]["test_nelbo"] == pytest.approx(
        tree["sweep"]["1.0"]["test_recon"] + tree["sweep"]["1.0"]["test_kl"])
    md = (root / "reports/sweep.md").read_text()
    assert md.startswith("### Beta sweep: measured comparison\n")
    assert "| 0.1 |" in md and "| 1.0 |" in md
    assert "T-shirt/top, Trouser, Sneaker" in md
    shown = project.dvc("metrics", "show").stdout
    assert "sweep.0.1.silhouette" in shown and "sweep.1.0.test_kl" in shown
    plots = project.dvc("plots", "show", "--json").stdout
    assert "reports/sweep_curves.csv" in plots and "reports/sweep/beta_0.1/history.csv" in plots

    assert _ran(project.dvc("repro", *TARGETS).stdout) == []

    # a new beta trains only that beta, and the table is rebuilt with three rows
    params = project.params()
    params["sweep"]["betas"] = [0.1, 1.0, 0.5]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = project.dvc("status").stdout
    assert "beta-sweep@0.5:" in status and "sweep-table:" in status
    assert "beta-sweep@0.1:" not in status and "beta-sweep@1.0:" not in status
    assert _ran(project.dvc("repro", *TARGETS).stdout) == ["beta-sweep@0.5", "sweep-table"]
    assert list(project.read_json("reports/sweep.json")["sweep"]) == ["0.1", "0.5", "1.0"]

    # -S beta=0.5 retrains the conv model (so it did change something) but no sweep stage
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "sweep of three betas")
    exp = project.dvc("exp", "run", "-S", "beta=0.5", *TARGETS)
    ran = _ran(exp.stdout)
    assert "train-conv" in ran
    assert not [s for s in ran if s.startswith("beta-sweep") or s == "sweep-table"]
