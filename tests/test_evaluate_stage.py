"""train-classifier and evaluate through real DVC on tiny data; their input checks in process."""
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vaepipe.data.arrays import load_split, save_arrays
from vaepipe.data.baselines import baseline_rates
from vaepipe.evaluate.evaluation import METRICS
from vaepipe.io import write_json
from vaepipe.models.vae import MODELS
from vaepipe.train.checkpoints import CHECKPOINTS

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "mlp": {"epochs": 2, "hidden": [32], "latent_dim": 4, "warmup_epochs": 2, "batch_size": 64},
    "conv": {"epochs": 1, "channels": [4, 8], "latent_dim": 3, "batch_size": 64},
    "classifier": {"channels": [4], "features": 8, "epochs": 1, "batch_size": 64},
    "evaluate": {"samples": 100, "iwae_samples": 4, "iwae_images": 20, "iwae_batch": 10,
                 "probe_images": 100, "silhouette_images": 40, "diversity_images": 20,
                 "batch_size": 64},
}
REFERENCE = {"bce_floor_test", "bce_floor_val", "fid_real", "precision_real", "recall_real",
             "iwae_samples", "iwae_images", "samples", "real_images", "test_images"}
NPZ = {"mu": ("float32", (50, None)), "logvar": ("float32", (50, None)),
       "labels": ("int64", (50,)), "samples": ("float32", (100, 1, 28, 28)),
       "recon_index": ("int64", (16,)), "recon": ("float32", (16, 1, 28, 28)),
       "frozen_sigmas": ("float32", (3,)), "frozen": ("float32", (4, 64, 1, 28, 28))}


@pytest.mark.slow
def test_classifier_and_evaluate_through_dvc(dvc_project):
    project = dvc_project(TINY, n_train=200, n_test=50)
    first = project.dvc("repro", "evaluate")
    for stage in ("train-mlp", "train-conv", "train-classifier", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout

    clf = project.read_json("reports/classifier.json")
    assert {"test_accuracy", "epochs", "train_seconds", "device"} <= set(clf)
    assert clf["epochs"] == 1 and clf["device"].startswith("cpu")
    data = project.root / "data/processed/fashion-mnist"
    for split in ("test", "val"):  # the saved classifier's accuracy on that split
        assert clf[f"{split}_accuracy"] == recomputed_accuracy(
            project.root / "models/classifier.pt", data, split)

    report = project.read_json("reports/evaluate.json")
    assert set(report) == {*MODELS, "reference"}
    for kind in MODELS:
        assert set(report[kind]) == set(CHECKPOINTS)
        for ckpt in CHECKPOINTS:
            m = report[kind][ckpt]
            # every metric but the protocol's test NLL (evaluate.nll_samples is 0 by default)
            assert list(m) == [k for k in METRICS if not k.startswith("test_nll")]
            bad = {k: v for k, v in m.items() if not (isinstance(v, (int, float))
                                                        and math.isfinite(v))}
            assert bad == {}, f"{kind}.{ckpt}"
            assert m["bpd"] == pytest.approx(m["nelbo"] / (784 * math.log(2)))
            with np.load(project.root / f"data/evaluate/{kind}/{ckpt}.npz",
                         allow_pickle=False) as npz:
                assert set(npz.files) == set(NPZ)
                for key, (dtype, shape) in NPZ.items():
                    assert npz[key].dtype == dtype, key
                    assert npz[key].shape[:len(shape)] == tuple(
                        s if s is not None else npz[key].shape[i] for i, s in enumerate(shape))
                assert npz["mu"].shape[1] == (4 if kind == "mlp" else 3)
    ref = report["reference"]
    assert set(ref) == REFERENCE and all(math.isfinite(v) for v in ref.values())
    assert ref["iwae_samples"] == 4 and ref["test_images"] == 50

    details = project.read_json("reports/evaluate_details.json")
    assert len(details["conv"]["best"]["kl_per_dim"]) == 3
    summary = (project.root / "reports/evaluation.md").read_text()
    assert summary.startswith("### ") and "# " not in summary.replace("### ", "")
    for heading in ("### MLP VAE", "### Conv VAE", "### Frozen latents",
                    "### How each number is computed"):
        assert heading in summary
    shown = project.dvc("metrics", "show").stdout
    assert "mlp.best.nelbo" in shown and "reference.fid_real" in shown

    assert "Running stage" not in project.dvc("repro", "evaluate").stdout
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "baseline")
    exp = project.dvc("exp", "run", "-S", "beta=0.5", "evaluate")  # and what it depends on
    assert "Running stage 'evaluate'" in exp.stdout
    assert "Running stage 'train-conv'" in exp.stdout
    assert "Running stage 'train-classifier'" not in exp.stdout
    diff = project.dvc("metrics", "diff").stdout
    assert "reports/evaluate.json" in diff and "conv.best.nelbo" in diff
    assert "reports/classifier.json" not in diff


# --------------------------------------------------------------------------------------------
# Input checks, in process: one line naming the problem, a non-zero exit, no output written


def _stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def recomputed_accuracy(checkpoint: Path, data: Path, split: str) -> float:
    """The fraction of ``split``'s images whose label the saved classifier predicts."""
    from vaepipe.evaluate.classifier import load_classifier, predict
    model, _ = load_classifier(checkpoint)
    images, labels = load_split(data, split)
    predicted = predict(model, torch.as_tensor(images)).numpy()
    return float(np.mean(predicted == labels))


@pytest.fixture
def tiny_split(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name, n in (("train", 40), ("val", 10), ("test", 20)):
        save_arrays(data / f"{name}.npz", rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                    np.arange(n, dtype=np.int64) % 10)
    write_json(data / "manifest.json", {"class_names": [str(c) for c in range(10)]})
    write_json(data / "baselines.json", baseline_rates(load_split(data, "train")[0],
                                                       load_split(data, "test")[0]))
    return data


def _evaluate_args(tmp_path, data):
    return ["--data", str(data), "--models", str(tmp_path / "models"),
            "--classifier", str(tmp_path / "models/classifier.pt"),
            "--arrays", str(tmp_path / "arrays"), "--metrics", str(tmp_path / "evaluate.json"),
            "--details", str(tmp_path / "details.json"), "--summary", str(tmp_path / "eval.md"),
            "--baselines", str(data / "baselines.json"), "--params", str(tmp_path / "params.yaml")]


@pytest.mark.parametrize("params,message", [
    ("evaluate:\n  samples: 5\n", "error: evaluate.samples must be >= 100, got 5"),
    ("device: tpu\n", "error: device must be one of auto, cpu, cuda, mps; got 'tpu'"),
    ("seed: 1\n", "classifier.pt: not found; run `dvc repro train-classifier`"),
])
def test_evaluate_stops_before_work_with_one_line(tmp_path, tiny_split, capsys, params, message):
    (tmp_path / "params.yaml").write_text(params)
    assert _stage("evaluate")(_evaluate_args(tmp_path, tiny_split)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "evaluate.json").exists() and not (tmp_path / "arrays").exists()


def test_evaluate_names_a_missing_vae_checkpoint(tmp_path, tiny_split, capsys):
    from vaepipe.evaluate.classifier import Classifier
    from vaepipe.train.checkpoints import save_checkpoint
    save_checkpoint(tmp_path / "models/classifier.pt", Classifier((1, 28, 28), 10, (4,), 8),
                    {"epochs": 1, "metrics": {}})
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert _stage("evaluate")(_evaluate_args(tmp_path, tiny_split)) == 2
    assert "models/mlp/epoch_01.pt: not found" in capsys.readouterr().err


def test_train_classifier_checks_params_and_data(tmp_path, tiny_split, capsys):
    main = _stage("train_classifier")
    args = ["--data", str(tiny_split), "--out", str(tmp_path / "c.pt"),
            "--metrics", str(tmp_path / "c.json"), "--params", str(tmp_path / "params.yaml")]
    (tmp_path / "params.yaml").write_text("classifier:\n  lr: 0\n")
    assert main(args) == 2
    assert "classifier.lr must be > 0 and <= 1, got 0" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text("classifier:\n  channels: [4, 4, 4, 4, 4]\n")
    assert main(args) == 2
    assert "classifier.channels: 5 conv+pool blocks" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tiny_split / "val.npz").unlink()
    assert main(args) == 2
    assert "val.npz: not found" in capsys.readouterr().err
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "c.json").exists()


def test_train_classifier_writes_its_contract(tmp_path, tiny_split):
    # the test split: the validation images (one of each class) with labels 0, 0, 1, 1, 1, 2 x 5,
    # so even a classifier that predicts one class scores differently on the two splits
    val_x, _ = load_split(tiny_split, "val")
    save_arrays(tiny_split / "test.npz", val_x, np.repeat(np.arange(3), [2, 3, 5]))
    (tmp_path / "params.yaml").write_text(
        "device: cpu\nclassifier:\n  channels: [4]\n  features: 8\n  epochs: 2\n"
        "  batch_size: 32\n")  # at most the 40 training images
    main = _stage("train_classifier")
    assert main(["--data", str(tiny_split), "--out", str(tmp_path / "c.pt"),
                 "--metrics", str(tmp_path / "c.json"),
                 "--params", str(tmp_path / "params.yaml")]) == 0
    metrics = json.loads((tmp_path / "c.json").read_text())
    assert metrics["epochs"] == 2 and metrics["device"].startswith("cpu")
    assert metrics["train_seconds"] > 0
    accuracies = {split: recomputed_accuracy(tmp_path / "c.pt", tiny_split, split)
                  for split in ("test", "val")}
    assert accuracies["test"] != accuracies["val"]  # the check below can tell them apart
    assert metrics["test_accuracy"] == accuracies["test"]
    assert metrics["val_accuracy"] == accuracies["val"]
    from vaepipe.evaluate.classifier import load_classifier
    model, ckpt = load_classifier(tmp_path / "c.pt")
    assert ckpt["params"]["classifier"]["features"] == 8 and len(ckpt["history"]) == 2
    assert "beta" not in ckpt["params"]


def test_evaluate_stage_in_process_writes_every_output(tmp_path, tiny_split):
    # the fast suite's check of the stage script (the DVC test above is marked slow)
    import torch
    from vaepipe.evaluate.classifier import Classifier
    from vaepipe.models.vae import build_model
    from vaepipe.train.checkpoints import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "models/classifier.pt", Classifier((1, 28, 28), 10, (4,), 8),
                    {"epochs": 1, "metrics": {"test_accuracy": 0.5}})
    for kind, args in (("mlp", {"hidden": (16,)}), ("conv", {"channels": (4, 8)})):
        model = build_model(kind, image_shape=(1, 28, 28), latent_dim=2, **args)
        for epoch, name in enumerate(CHECKPOINTS, 1):
            if name == "final":  # same weights as best: evaluated once, reported twice
                epoch = 2
            else:
                torch.nn.init.normal_(next(model.parameters()), std=0.1 * epoch)
            save_checkpoint(tmp_path / f"models/{kind}/{name}.pt", model,
                            {"epoch": epoch, "metrics": {},
                             "params": {kind: {"likelihood": "bernoulli", "obs_std": 1.0}}})
    (tmp_path / "params.yaml").write_text(
        "device: cpu\nevaluate:\n  samples: 100\n  iwae_samples: 3\n  iwae_images: 8\n"
        "  probe_images: 40\n  silhouette_images: 20\n  diversity_images: 10\n")
    assert _stage("evaluate")(_evaluate_args(tmp_path, tiny_split)) == 0
    report = json.loads((tmp_path / "evaluate.json").read_text())
    assert report["mlp"]["best"] == report["mlp"]["final"] != report["mlp"]["epoch_01"]
    details = json.loads((tmp_path / "details.json").read_text())
    assert details["conv"]["final"]["same_weights_as"] == "best"
    assert details["conv"]["best"]["same_weights_as"] is None
    assert (tmp_path / "arrays/conv/final.npz").read_bytes() == (
        tmp_path / "arrays/conv/best.npz").read_bytes()
    summary = (tmp_path / "eval.md").read_text()
    assert "| NELBO (nats) |" in summary and "test accuracy is 50.00 %" in summary
    # every row of a markdown table has as many cells as its header (an unescaped | splits one)
    tables = re.findall(r"(?:^\|.*\n)+", summary, flags=re.M)
    assert len(tables) == 5  # rates and baselines, mlp, conv, frozen latents, reference points
    for table in tables:
        widths = {len(re.split(r"(?<!\\)\|", row)) for row in table.splitlines()}
        assert len(widths) == 1, table
