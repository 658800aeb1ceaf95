"""The feature network for FID and precision/recall: a small CNN classifier and its training loop.

Inception weights cannot be downloaded here, and an untrained network's features measure
nothing (recipe 002's "FID" of 0.00), so the evaluation uses the penultimate layer of a classifier
trained on the same dataset. The loop follows :func:`vaepipe.train.loop.fit`: uint8 arrays sit
on the device, a seeded permutation shuffles them each epoch, slices become batches.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vaepipe.config import check_batch_size
from vaepipe.models.batches import in_batches, inference, to_unit_float
from vaepipe.io import atomic_path
from vaepipe.train.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, read_checkpoint
from vaepipe.train.errors import TrainingDiverged
from vaepipe.train.resume import Resume, history_rows, set_rng_state

EVAL_BATCH = 500  # images per inference call: small enough to stay in the CPU caches
# why the class-dependent numbers are missing when the data has a single class
ONE_CLASS = ("the data has one class, so there is no classifier to train: FID and precision/"
             "recall, measured in its feature space, are skipped, and so are the linear probe "
             "and the silhouette, which compare classes")


class Classifier(nn.Module):
    """[3x3 conv, BatchNorm, ReLU, 2x2 max-pool] per channel count, then a hidden layer, logits.

    ``features(x)`` is the hidden layer after its ReLU, (B, ``features``): the space in which
    FID and precision/recall compare image sets.
    """

    kind = "classifier"

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 10,
                 channels: tuple[int, ...] = (32, 64), features: int = 128):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.model_args = {"image_shape": list(image_shape), "num_classes": num_classes,
                           "channels": list(channels), "features": features}
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2  # floor, as MaxPool2d does: 28 -> 14 -> 7
        if h < 1 or w < 1:
            raise ValueError(f"classifier.channels: {len(channels)} conv+pool blocks shrink a "
                             f"{image_shape[1]}x{image_shape[2]} image to nothing; use fewer")
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(c * h * w, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)
        # NHWC convolutions without layout reorders: faster on the CPU (bench/layouts.py),
        # with the same values
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.body(x))  # (B, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def predict(model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """Class predictions (N,) for uint8 ``images`` (N, C, H, W); the model is left as it was."""
    with inference(model):
        return in_batches(lambda x: model(to_unit_float(x)).argmax(1), images, EVAL_BATCH)


def classifier_features(model: Classifier, images: torch.Tensor, batch: int) -> np.ndarray:
    """The penultimate features (N, F), float64, of float images in [0, 1] or uint8 ones."""
    def run(x):
        return model.features(to_unit_float(x) if x.dtype == torch.uint8 else x)
    with inference(model):
        return in_batches(run, images, batch).double().cpu().numpy()


def accuracy(model: Classifier, images: np.ndarray | torch.Tensor,
             labels: np.ndarray | torch.Tensor, device: torch.device) -> float:
    """Fraction of ``images`` whose predicted class is ``labels``."""
    x = torch.as_tensor(images).to(device)
    y = torch.as_tensor(labels).to(device)
    return (predict(model, x) == y).double().mean().item()


def train_classifier(model: Classifier, train_images: np.ndarray, train_labels: np.ndarray,
                     epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                     device: torch.device, log=print, resume: Resume | None = None
                     ) -> list[dict]:
    """Train with Adam and cross-entropy; the learning rate follows a cosine from ``lr`` to 0.

    Returns one row per epoch (train loss and accuracy, seconds); no per-epoch validation,
    which would cost a tenth of the training time and choose nothing (the last epoch is
    kept). Seeded: the same arguments give the same weights on the CPU. A ``batch_size``
    larger than the training set raises :class:`vaepipe.config.ConfigError` before any work;
    a non-finite loss raises :class:`vaepipe.train.errors.TrainingDiverged`. With ``resume``,
    training goes on from its saved state, if there is one, and saves one after every epoch.
    """
    n = len(train_images)
    check_batch_size("classifier.batch_size", batch_size, n)
    torch.manual_seed(seed)
    model.to(device).train()
    x_all = torch.as_tensor(train_images).to(device)
    y_all = torch.as_tensor(train_labels).to(device)
    n_batches = math.ceil(n / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    # per step, so a few epochs still end at a small learning rate
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * n_batches)
    gen = torch.Generator(device=device).manual_seed(seed)
    history = []
    state = resume.load() if resume is not None else None
    if state is not None:
        history = _restore(state, model, opt, sched, gen)
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=device)
        stats = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, correct
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, y = to_unit_float(x_all[idx]), y_all[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            stats += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum()]).double()
        seconds = time.perf_counter() - start
        loss_sum, correct = stats.tolist()
        row = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n,
               "seconds": seconds}
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(f"classifier: non-finite loss at epoch {epoch}; lower "
                                   f"classifier.lr")
        history.append(row)
        if log is not None:
            log(f"classifier epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}, train "
                f"accuracy {row['train_accuracy']:.4f}, {seconds:.1f} s")
        if resume is not None:
            resume.save(epoch, epochs, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": gen.get_state(),
                "history": history})
    model.eval()
    return history


def _restore(state: dict, model: Classifier, opt, sched, gen: torch.Generator) -> list[dict]:
    """A saved classifier state put back; returns the epochs done."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    set_rng_state(state["rng"])
    return history_rows(state["history"])


def save_no_classifier(path: str | Path, reason: str) -> None:
    """The train-classifier stage's output when there is nothing to classify: a checkpoint
    with no network that says why (``load_classifier`` gives None for it)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, "kind": Classifier.kind, "skipped": reason}, fh)


def load_classifier(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[Classifier | None, dict]:
    """Rebuild the classifier from its checkpoint alone; ``(model in eval mode, checkpoint)``,
    or ``(None, checkpoint)`` for one that says why there is none (:func:`save_no_classifier`)."""
    missing = "not found; run `dvc repro train-classifier`"
    ckpt = read_checkpoint(path, device, missing)
    if isinstance(ckpt, dict) and ckpt.get("skipped"):
        return None, ckpt
    return load_checkpoint(path, device, {Classifier.kind: Classifier}, missing=missing)
