"""The beta sweep's latent-evolution frames, recorded while a model trains.

:class:`FrameRecorder` is :func:`vaepipe.train.loop.fit`'s ``on_batch`` hook: at the chosen
optimizer steps it stores the probe images' latent means and a strip of reconstructions as
arrays. Drawing them happens after training, in :mod:`vaepipe.figures.animation`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaepipe.models.batches import EVAL_BATCH, encode, reconstruct
from vaepipe.models.vae import VAE


@dataclass(frozen=True)
class Frame:
    """One moment of training: after ``batch`` of ``epoch`` (both 0 before the first step)."""

    epoch: int
    batch: int
    mu: np.ndarray     # (P, 2) latent means of the probe images
    recon: np.ndarray  # (S, H, W) uint8 reconstructions of the strip images


def probe_indices(labels: np.ndarray, classes, per_class: int) -> np.ndarray:
    """A fixed probe set: the first ``per_class`` images of each class, interleaved by class.

    Interleaving (class a, b, c, a, b, c, ...) means any prefix, such as the GIF's strip of
    originals, shows every class.
    """
    per = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    n = min(len(p) for p in per)
    if n == 0:
        raise ValueError(f"no test images of class {classes[[len(p) for p in per].index(0)]}")
    return np.stack([p[:n] for p in per], axis=1).reshape(-1)


def frame_steps(total_steps: int, n_frames: int) -> list[int]:
    """``n_frames`` distinct optimizer steps in ``[0, total_steps]``, denser early.

    Step ``k`` of ``n`` sits at ``total * (k / (n - 1))**2``, so half the frames fall in the
    first quarter of training, where the latent space moves most; 0 is before training and
    the last frame is the final step. Clashing early steps are pushed one step apart.
    """
    n = min(n_frames, total_steps + 1)
    if n < 2:
        return [total_steps]
    steps = [round(total_steps * (k / (n - 1)) ** 2) for k in range(n)]
    for k in range(1, n):
        steps[k] = max(steps[k], steps[k - 1] + 1)
    for k in range(n - 1, -1, -1):  # the pushes never run past the end
        steps[k] = min(steps[k], total_steps - (n - 1 - k))
    return steps


def strip_pixels(images: torch.Tensor | np.ndarray):
    """(S, C, H, W) images as the GIF strip draws them: (S, H, W) grey, (S, H, W, 3) RGB."""
    return images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1) \
        if isinstance(images, torch.Tensor) else images.transpose(0, 2, 3, 1)


class FrameRecorder:
    """``fit``'s ``on_batch`` hook: at the chosen steps, store the probe set's latent means and
    the strip's reconstructions.

    The model is switched to eval mode for the encoding (BatchNorm uses, and does not update,
    its running statistics) and back to training mode; nothing draws random numbers, so
    recording frames leaves the trained weights exactly as they would be without it.
    """

    def __init__(self, probe: torch.Tensor, strip: torch.Tensor, steps: list[int],
                 batches_per_epoch: int):
        self.probe, self.strip = probe, strip  # uint8 (P, C, H, W), (S, C, H, W) on the device
        self.steps = set(steps)
        self.batches_per_epoch = batches_per_epoch
        self.frames: list[Frame] = []

    def capture(self, model: VAE, epoch: int, batch: int) -> None:
        mu, _ = encode(model, self.probe, EVAL_BATCH)
        recon = strip_pixels(reconstruct(model, self.strip, EVAL_BATCH))
        self.frames.append(Frame(epoch, batch, mu.cpu().numpy().astype(np.float32),
                                 (recon * 255).round().to(torch.uint8).cpu().numpy()))

    def start(self, model: VAE) -> None:
        """The frame before training (step 0), if it is one of the chosen steps."""
        if 0 in self.steps:
            self.capture(model, 0, 0)

    def __call__(self, epoch: int, batch: int, model: VAE) -> None:
        if (epoch - 1) * self.batches_per_epoch + batch in self.steps:
            self.capture(model, epoch, batch)

    def state(self) -> list[dict]:
        """The frames so far as tensors, for a training's resume state."""
        return [{"epoch": f.epoch, "batch": f.batch, "mu": torch.from_numpy(f.mu),
                 "recon": torch.from_numpy(f.recon)} for f in self.frames]

    def load_state(self, saved: list[dict]) -> None:
        """The frames of a resumed training, from :meth:`state`."""
        self.frames = [Frame(d["epoch"], d["batch"], d["mu"].numpy(), d["recon"].numpy())
                       for d in saved]
