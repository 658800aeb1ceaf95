"""From uint8 pixels to model inputs, and running a network over many images in eval mode.

Every stage that runs a trained network (validation, evaluation, the sweep's frames and table,
the figures, the feature classifier) goes through :func:`inference` and :func:`in_batches`:
eval mode (BatchNorm uses its running statistics), no autograd, the model's own mode restored
afterwards, and inputs sliced into batches whose results are concatenated.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

# what a model can train on (to_unit_float)
PIXELS = ("levels", "dequantized", "binarized")
EVAL_BATCH = 1000  # images per forward pass when scoring a VAE (validation, evaluation, sweep)
# the one binarization of validation and test images (data.binarize: dynamic), whatever the
# run's seeds, so every binarized model is scored on the same bits
BINARIZE_SEED = 2016


def to_unit_float(x: torch.Tensor, pixels: str = "levels",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels v -> float in [0, 1], as ``pixels`` says:

    - ``levels``: v / 255;
    - ``dequantized``: (v + u) / 256 with u ~ U[0, 1) per pixel, so the data have a density on
      [0, 1) (Theis et al. 2016); recipe 004 does the same with /255 and a clip;
    - ``binarized``: a Bernoulli draw of probability v / 255 per pixel, new at every call.
    """
    x = x.float()
    if pixels == "dequantized":
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        return (x + noise).div_(256.0)
    if pixels == "binarized":
        return torch.bernoulli(x.div_(255.0), generator=generator)
    if pixels != "levels":
        raise ValueError(f"pixels must be one of {', '.join(PIXELS)}, got {pixels!r}")
    return x.div_(255.0)


def binarize_fixed(images: np.ndarray, seed: int = BINARIZE_SEED) -> np.ndarray:
    """One seeded Bernoulli draw of uint8 ``images`` (probability v / 255 per pixel), as uint8
    0 / 255, so the code that reads grey levels reads them unchanged."""
    draw = np.random.default_rng(seed).random(images.shape, dtype=np.float32)
    return np.where(draw < images / np.float32(255.0), 255, 0).astype(np.uint8)


def binarize_eval_splits(val: np.ndarray, test: np.ndarray, seed: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The one fixed binarization of the validation and test images (uint8 0 / 255).

    ``seed`` None: :func:`binarize_fixed` of each split with :data:`BINARIZE_SEED`. An integer:
    the VampPrior code's draw, numpy's legacy global generator seeded with ``seed`` drawing
    ``binomial(1, v / 255)`` for every validation pixel and then every test pixel, one stream
    (the literature's Fashion-MNIST protocol uses 777).
    """
    if seed is None:
        return binarize_fixed(val), binarize_fixed(test)
    rng = np.random.RandomState(seed)
    drawn = [rng.binomial(1, images / 255.0) for images in (val, test)]  # float64 p, as theirs
    return tuple((d * 255).astype(np.uint8) for d in drawn)


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd inside the block; the model's previous mode is restored after,
    so a training loop can call it between steps."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def in_batches(fn: Callable, x: torch.Tensor, batch: int,
               device: torch.device | None = None):
    """``fn`` applied to ``x[i:i + batch]`` for each slice, results concatenated along dim 0.

    ``fn`` may return a tensor or a tuple of tensors (concatenated element-wise). With
    ``device``, each slice is moved there first: seeded draws made on the CPU then give the
    same inputs on every device.
    """
    outs = [fn(x[i:i + batch] if device is None else x[i:i + batch].to(device))
            for i in range(0, len(x), batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode(model, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances (N, Z) of uint8 ``images`` (N, C, H, W)."""
    with inference(model):
        return in_batches(lambda x: model.encode(to_unit_float(x)), images, batch)


def decode_mean(model, z: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean images of decode(z) in [0, 1], (N, C, H, W), on the model's device: the mean of the
    model's likelihood (:meth:`vaepipe.models.likelihoods.Likelihood.mean`; sigmoid(logits) for
    the Bernoulli). ``z`` may live on the CPU; each batch is moved to the model's device.
    """
    with inference(model):
        return in_batches(lambda zb: model.likelihood.mean(model.decode(zb)), z, batch,
                          device_of(model))


def reconstruct(model, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean images of decode(mu) (N, C, H, W) of uint8 ``images``: no sampling."""
    with inference(model):
        return in_batches(lambda x: model.likelihood.mean(
            model.decode(model.encode(to_unit_float(x))[0])), images, batch)
