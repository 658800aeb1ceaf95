"""From uint8 pixels to model inputs, and running a network over many images in eval mode.

Every stage that runs a trained network (validation, evaluation, the sweep's frames and table,
the figures, the feature classifier) goes through :func:`inference` and :func:`in_batches`:
eval mode (BatchNorm uses its running statistics), no autograd, the model's own mode restored
afterwards, and inputs sliced into batches whose results are concatenated.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


def to_unit_float(x: torch.Tensor, dequantize: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1].

    With ``dequantize`` each pixel gets U[0, 1) noise before scaling by 1/256, so the data
    have a density on [0, 1) (Theis et al. 2016); seed 004 does the same with /255 and a clip.
    """
    x = x.float()
    if dequantize:
        noise = torch.rand(x.shape, generator=generator, device=x.device)
        return (x + noise).div_(256.0)
    return x.div_(255.0)


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
    """Mean images sigmoid(decode(z)) in [0, 1], (N, C, H, W), on the model's device.

    Both likelihoods use sigmoid(logits) as the pixel mean (:mod:`vaepipe.train.objective`).
    ``z`` may live on the CPU; each batch is moved to the model's device.
    """
    with inference(model):
        return in_batches(lambda zb: torch.sigmoid(model.decode(zb)), z, batch, device_of(model))


def reconstruct(model, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Pixel means sigmoid(decode(mu)) (N, C, H, W) of uint8 ``images``: no sampling."""
    with inference(model):
        return in_batches(lambda x: torch.sigmoid(model.decode(model.encode(to_unit_float(x))[0])),
                          images, batch)
