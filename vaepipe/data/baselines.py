"""Rates of 8-bit images that a reader knows without this project: two codecs and a histogram.

Each is in bits per dimension (bits over every pixel value of the test images), the unit of
the models' ``bpd_8bit``, so a model's number has something outside the project beside it:

- ``png``: each test image its own PNG file (Pillow, ``optimize=True``), headers included;
- ``xz``: the whole test set's raw bytes in one stream (``lzma``, preset 9), which may share
  what it learns across images, as a model shares its weights;
- ``histogram``: an independent 256-way categorical per pixel position, fit on the training
  split with add-one smoothing: a model that knows where ink goes, but nothing of shape.
"""
from __future__ import annotations

import io
import lzma
import math
from pathlib import Path

import numpy as np
from PIL import Image

from vaepipe.io import json_at, read_json

BASELINES = ("png", "xz", "histogram")
LEVELS = 256
BASELINE_LABELS = {  # how the tables name each baseline
    "png": "PNG (Pillow, optimize=True, one file per image)",
    "xz": "xz -9 of the whole test set's bytes",
    "histogram": "per-pixel 256-level histogram of the training split",
}
SHORT_NAMES = {"png": "PNG", "xz": "xz", "histogram": "the histogram"}


def verdict(bpd: float, baselines: dict) -> str:
    """Which baselines a rate beats (is lower than): 'beats PNG and xz', 'beats none'."""
    beaten = [SHORT_NAMES[k] for k in BASELINES if bpd < baselines[k]["bpd"]]
    if not beaten:
        return "beats none"
    return "beats " + (beaten[0] if len(beaten) == 1 else
                       ", ".join(beaten[:-1]) + " and " + beaten[-1])


def _per_image_stats(bits: np.ndarray, dims: int) -> dict[str, float]:
    per_dim = bits / dims
    return {"bpd": float(per_dim.mean()),
            "bpd_se": float(per_dim.std(ddof=1) / math.sqrt(len(per_dim)))}


def png_bits(images: np.ndarray) -> np.ndarray:
    """Bits of each uint8 (N, C, H, W) image as its own optimised PNG file: (N,)."""
    bits = np.empty(len(images))
    for i, image in enumerate(images):
        # H x W for one channel (mode L), H x W x 3 for colour (mode RGB)
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", optimize=True)
        bits[i] = 8 * buffer.tell()
    return bits


def xz_bits(images: np.ndarray) -> int:
    """Bits of the raw bytes of all ``images`` compressed as one xz stream (preset 9)."""
    return 8 * len(lzma.compress(np.ascontiguousarray(images).tobytes(), preset=9))


def histogram_log_probs(train: np.ndarray) -> np.ndarray:
    """log2 P_d(v) (D, 256) of a per-pixel categorical fit on uint8 ``train`` (N, C, H, W):
    (count of v at position d + 1) / (N + 256)."""
    flat = train.reshape(len(train), -1).astype(np.int64)
    dims = flat.shape[1]
    counts = np.bincount((flat + LEVELS * np.arange(dims)).ravel(),
                         minlength=dims * LEVELS).reshape(dims, LEVELS)
    return np.log2((counts + 1.0) / (len(train) + LEVELS))


def histogram_bits(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """-log2 P(x) of each test image under :func:`histogram_log_probs` of ``train``: (N,)."""
    table = histogram_log_probs(train)
    flat = test.reshape(len(test), -1)
    return -table[np.arange(flat.shape[1]), flat].sum(axis=1)


def baseline_rates(train: np.ndarray, test: np.ndarray) -> dict:
    """Every baseline's bits/dim on ``test`` (with a standard error over the test images
    where the rate is a mean of per-image rates), for ``reports/baselines.json``."""
    dims = math.prod(test.shape[1:])
    return {
        "png": _per_image_stats(png_bits(test), dims),
        "xz": {"bpd": xz_bits(test) / (len(test) * dims)},
        "histogram": _per_image_stats(histogram_bits(train, test), dims),
        "test_images": len(test),
    }


def read_baselines(path: str | Path) -> dict:
    """``reports/baselines.json`` as :func:`baseline_rates` wrote it; a missing file or one
    without every baseline's ``bpd`` raises ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: not found; run `dvc repro split`, which writes it")
    rates = json_at(read_json(path), str(path))
    missing = [k for k in BASELINES if not isinstance(rates.get(k), dict)
               or not isinstance(rates[k].get("bpd"), (int, float))]
    if missing or not isinstance(rates.get("test_images"), int):
        raise ValueError(f"{path}: needs bits/dim of {', '.join(BASELINES)} and test_images; "
                         f"rerun `dvc repro split`")
    return rates
