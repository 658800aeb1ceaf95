"""The seeded train/validation split of the official training set, and its manifest."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from vaepipe.data.arrays import save_arrays
from vaepipe.data.catalog import NUM_CLASSES, get_spec
from vaepipe.data.formats import load_raw
from vaepipe.io import write_json


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)`` into sorted (train, validation) index arrays.

    The validation split takes the first ``int(n * val_fraction)`` entries of
    ``default_rng(seed).permutation(n)``; both splits must end up non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be > 0 and < 1, got {val_fraction!r}")
    n_val = int(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} images leaves an empty split "
                         f"({n - n_val} train, {n_val} val)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _md5_of(arr: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(arr).tobytes(), usedforsecurity=False).hexdigest()


def write_split(raw_dir: str | Path, out_dir: str | Path, dataset: str, val_fraction: float,
                seed: int) -> dict[str, Any]:
    """Split the raw training set into train/val, keep the official test set, and save them.

    Writes ``train.npz``, ``val.npz`` and ``test.npz`` (uncompressed; ``images`` uint8
    (N, C, H, W), ``labels`` int64) and last ``manifest.json`` (dataset, counts and per-class
    counts per split, image shape, md5 of every array's bytes, the split parameters), each
    atomically. Returns the manifest.
    """
    spec = get_spec(dataset)
    out_dir = Path(out_dir)
    train_x, train_y, test_x, test_y = load_raw(dataset, raw_dir)
    train_idx, val_idx = split_train_val(len(train_x), val_fraction, seed)
    splits = {
        "train": (train_x[train_idx], train_y[train_idx]),
        "val": (train_x[val_idx], train_y[val_idx]),
        "test": (test_x, test_y),
    }
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "counts": {name: int(len(y)) for name, (_, y) in splits.items()},
        # keyed by class index: DVC flattens metric keys, and names like "T-shirt/top" read badly
        "class_counts": {
            name: {str(c): int(k) for c, k in enumerate(np.bincount(y, minlength=NUM_CLASSES))}
            for name, (_, y) in splits.items()},
        "class_names": list(spec.class_names),
        "image_shape": list(spec.image_shape),
        "md5": {name: {"images": _md5_of(x), "labels": _md5_of(y)}
                for name, (x, y) in splits.items()},
        "params": {"val_fraction": val_fraction, "split_seed": seed},
    }
    for name, (x, y) in splits.items():
        save_arrays(out_dir / f"{name}.npz", x, y)
    write_json(out_dir / "manifest.json", manifest)
    return manifest
