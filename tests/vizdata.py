"""Tiny stand-ins for everything the visualize stage reads, written the way the real stages do.

``write_inputs(root)`` lays out, under a project root, the split files, checkpoints of tiny
MLP and conv VAEs (untrained: the figures only need decoders of the right shapes), the training
histories and metrics, what ``evaluate`` saves (``data/evaluate/<model>/<checkpoint>.npz`` by
the evaluate stage's contract, computed from those tiny models, plus ``reports/evaluate.json`` and
``reports/evaluation.md``) and what the beta sweep saves (``reports/sweep.md``, a GIF and a
history per beta). ``stage_args(root)`` are the visualize stage's arguments for that layout.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from vaepipe.config import Params, to_dict
from vaepipe.data.arrays import save_arrays
from vaepipe.data.catalog import DATASETS
from vaepipe.io import write_json
from vaepipe.models.vae import build_model
from vaepipe.train.checkpoints import save_checkpoint

DATASET = "fashion-mnist"
TINY_MODELS = {"mlp": {"latent_dim": 3, "hidden": (16,)}, "conv": {"latent_dim": 4,
                                                                   "channels": (4, 8)}}
CHECKPOINTS = {"epoch_01": 1, "best": 3, "final": 3}
HISTORY_COLUMNS = ["epoch", "beta", "lr", "train_loss", "train_recon", "train_kl", "val_loss",
                   "val_recon", "val_kl", "val_nelbo", "seconds", "images_per_second"]
# the split stage's codec rates (bits/dim), for the report's line under its table
BASELINES = {"png": {"bpd": 5.2, "bpd_se": 0.01}, "xz": {"bpd": 3.9},
             "histogram": {"bpd": 4.6, "bpd_se": 0.01}, "test_images": 40}
EVALUATION_MD = """### MLP VAE (test set)

| metric | epoch_01 | best | final |
|---|---|---|---|
| nelbo | 550.1 | 540.2 | 540.2 |

### Conv VAE (test set)

| metric | epoch_01 | best | final |
|---|---|---|---|
| nelbo | 551.3 | 545.0 | 545.0 |
"""
SWEEP_MD = """| beta | recon | KL | NELBO |
|---|---|---|---|
| 0.1 | 209.5 | 8.8 | 218.3 |
| 0.5 | 209.8 | 6.1 | 215.9 |
"""


def stage_args(root: Path) -> list[str]:
    """Arguments of ``stages/visualize.py`` for the layout :func:`write_inputs` makes."""
    r = Path(root)
    return ["--data", str(r / f"data/processed/{DATASET}"), "--models", str(r / "models"),
            "--evaluate", str(r / "data/evaluate"),
            "--evaluate-json", str(r / "reports/evaluate.json"),
            "--evaluation-md", str(r / "reports/evaluation.md"),
            "--sweep-md", str(r / "reports/sweep.md"), "--sweep-dir", str(r / "reports/sweep"),
            "--train-reports", str(r / "reports/train"), "--figures", str(r / "reports/figures"),
            "--report", str(r / "reports/report.md"), "--html", str(r / "reports/report.html"),
            "--baselines", str(r / "reports/baselines.json"), "--params", str(r / "params.yaml")]


def run_stage(root: Path, argv: list[str] | None = None) -> int:
    """Run ``stages/visualize.py``'s ``main`` in this process on :func:`write_inputs`' layout.

    The stage reads git and params relative to the working directory: chdir to ``root`` first.
    """
    script = Path(__file__).resolve().parent.parent / "stages/visualize.py"
    spec = importlib.util.spec_from_file_location("visualize_stage", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(stage_args(root) if argv is None else argv)


_BUILT: dict[str, Path] = {}


def built_once(tmp_path_factory) -> Path:
    """A root where the stage ran on :func:`write_inputs`' defaults; built once per session.

    test_report.py and test_browser.py both look at it: one stage run serves both.
    """
    if "root" not in _BUILT:
        root = tmp_path_factory.mktemp("visualize")
        write_inputs(root)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            if run_stage(root) != 0:
                raise RuntimeError("the visualize stage failed on the tiny inputs")
        finally:
            os.chdir(cwd)
        _BUILT["root"] = root
    return _BUILT["root"]


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # blobs whose position depends on the class, so the figures have something to show
    labels = (np.arange(n) % 10).astype(np.int64)
    yy, xx = np.mgrid[0:28, 0:28]
    cy, cx = 6 + 2 * (labels % 5), 8 + 6 * (labels // 5)
    blob = np.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
                  / 18.0)
    images = np.clip(blob * 230 + rng.integers(0, 25, (n, 28, 28)), 0, 255).astype(np.uint8)
    return images[:, None], labels


@torch.no_grad()
def _evaluation(model, test_images: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(test_images).float() / 255.0
    mu, logvar = model.encode(x)
    z_dim = mu.shape[1]
    decode = lambda z: torch.sigmoid(model.decode(z)).numpy().astype(np.float32)  # noqa: E731
    index = np.arange(16, dtype=np.int64)
    sigmas = np.array([0.1, 0.5, 1.0], dtype=np.float32)
    frozen = [decode(torch.randn(64, z_dim, generator=gen))]
    frozen += [decode(s * torch.randn(64, z_dim, generator=gen)) for s in sigmas]
    return {"mu": mu.numpy().astype(np.float32), "logvar": logvar.numpy().astype(np.float32),
            "labels": None,  # filled by the caller
            "samples": decode(torch.randn(100, z_dim, generator=gen)),
            "recon_index": index, "recon": decode(mu[torch.from_numpy(index)]),
            "frozen_sigmas": sigmas, "frozen": np.stack(frozen)}


FAST = {"visualize": {"tsne_iterations": 250}}


def write_inputs(root: Path, n_test: int = 40, n_train: int = 60, sweep: bool = True,
                 seed: int = 0, params: dict | None = None) -> None:
    """Write every input of the visualize stage under ``root`` (see the module docstring).

    ``params`` is written as ``root/params.yaml`` (default :data:`FAST`: a short t-SNE);
    pass ``{}`` to keep an existing params.yaml.
    """
    root = Path(root)
    params_in = FAST if params is None else params
    if params_in:
        (root / "params.yaml").write_text(yaml.safe_dump(params_in, sort_keys=False))
    rng = np.random.default_rng(seed)
    data = root / f"data/processed/{DATASET}"
    test_x, test_y = _images(rng, n_test)
    for name, n in (("train", n_train), ("val", 20)):
        save_arrays(data / f"{name}.npz", *_images(rng, n))
    save_arrays(data / "test.npz", test_x, test_y)
    write_json(data / "manifest.json", {"class_names": list(DATASETS[DATASET].class_names)})

    params = Params()
    metrics: dict = {"reference": {"fid_real_vs_real": 1.0}}
    for m, kwargs in TINY_MODELS.items():
        torch.manual_seed(seed)
        model = build_model(m, image_shape=(1, 28, 28), **kwargs).eval()
        section = to_dict(getattr(params, m)) | {"epochs": 3}
        meta = {"params": {"seed": 42, "beta": 1.0, "device": "auto",
                           "data": to_dict(params.data), m: section}}
        metrics[m] = {}
        for c, epoch in CHECKPOINTS.items():
            with torch.no_grad():  # each checkpoint a different decoder
                for p in model.parameters():
                    p.add_(0.05 * torch.randn(p.shape))
            save_checkpoint(root / f"models/{m}/{c}.pt", model,
                            {"epoch": epoch, "metrics": {}, **meta})
            arrays = _evaluation(model, test_x, seed + epoch)
            arrays["labels"] = test_y
            (root / f"data/evaluate/{m}").mkdir(parents=True, exist_ok=True)
            np.savez(root / f"data/evaluate/{m}/{c}.npz", **arrays)
            metrics[m][c] = {"bpd_8bit": 6.0 - 0.5 * epoch, "recon": 540.0 - epoch,
                             "kl": 5.0 + epoch, "nelbo": 545.0,
                             "fid": 90.0 - 10 * epoch, "probe_accuracy": 0.5,
                             "silhouette": 0.1}
        train_dir = root / "reports/train"
        train_dir.mkdir(parents=True, exist_ok=True)
        with (train_dir / f"{m}_history.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(HISTORY_COLUMNS)
            for epoch in (1, 2, 3):
                writer.writerow([epoch, epoch / 3, 0.001, 560 - epoch, 550 - epoch, 10.0,
                                 558 - epoch, 549 - epoch, 9.0, 558 - epoch, 0.5, 100.0])
        (train_dir / f"{m}.json").write_text(json.dumps(
            {"best_epoch": 3, "device": "cpu (test, 2 threads)"}))
    (root / "reports/evaluate.json").write_text(json.dumps(metrics, indent=2))
    (root / "reports/evaluation.md").write_text(EVALUATION_MD)
    (root / "reports/baselines.json").write_text(json.dumps(BASELINES))
    if sweep:
        (root / "reports/sweep.md").write_text(SWEEP_MD)
        for beta in ("0.1", "0.5"):
            beta_dir = root / f"reports/sweep/beta_{beta}"
            beta_dir.mkdir(parents=True, exist_ok=True)
            frames = [Image.fromarray(np.full((40, 60), v, np.uint8)) for v in (30, 200)]
            frames[0].save(beta_dir / "latent.gif", save_all=True, append_images=frames[1:],
                           duration=200, loop=0)
            (beta_dir / "history.csv").write_text("epoch,recon,kl,loss\n1,210,8,218\n")
