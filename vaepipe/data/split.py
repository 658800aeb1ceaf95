"""The seeded splits and their manifest: a validation split out of a named dataset's official
training set, or, for a folder of images, test and validation splits stratified by class."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from vaepipe.data.arrays import MANIFEST_FILE, load_ingested, save_arrays
from vaepipe.data.catalog import DataError, get_spec
from vaepipe.data.formats import load_raw
from vaepipe.io import write_json


def split_train_val(n: int, val_fraction: float, seed: int, order: str = "seeded"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split of ``range(n)`` into sorted (train, validation) index arrays.

    The validation split takes ``int(n * val_fraction)`` entries: with ``order`` "seeded" the
    first ones of ``default_rng(seed).permutation(n)``, with "file" the last ones in file order
    (the literature's Fashion-MNIST protocol: images 50,000 to 59,999 validate). Both splits
    must end up non-empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be > 0 and < 1, got {val_fraction!r}")
    n_val = int(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction {val_fraction} of {n} images leaves an empty split "
                         f"({n - n_val} train, {n_val} val)")
    if order == "file":
        return np.arange(n - n_val), np.arange(n - n_val, n)
    if order != "seeded":
        raise ValueError(f"split order must be seeded or file, got {order!r}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def stratified_split(labels: np.ndarray, class_names: list[str], test_fraction: float,
                     val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, val, test) index arrays, sorted, stratified by class.

    Each class gives ``round(n * test_fraction)`` of its ``n`` images to the test split and
    ``round(rest * val_fraction)`` of the rest to validation, at least one each; a class
    that cannot keep one image in every split raises :class:`DataError` naming it.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c, name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(len(members) * test_fraction))
        n_val = max(1, round((len(members) - n_test) * val_fraction))
        if len(members) - n_test - n_val < 1:
            raise DataError(f"class {name!r} has {len(members)} image(s); data.test_fraction "
                            f"{test_fraction} and data.val_fraction {val_fraction} need at least "
                            f"3 per class (one in each of train, val and test): add images or "
                            f"remove that folder")
        for part, idx in zip(parts, (members[n_test + n_val:], members[n_test:n_test + n_val],
                                     members[:n_test])):
            part.append(idx)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def _md5_of(arr: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(arr).tobytes(), usedforsecurity=False).hexdigest()


def write_split(raw_dir: str | Path, out_dir: str | Path, dataset: str, val_fraction: float,
                seed: int, test_fraction: float | None = None, order: str = "seeded"
                ) -> dict[str, Any]:
    """Split the raw images into train/val/test and save them.

    A named dataset keeps its official test set and holds ``val_fraction`` of its training set
    out (``order``: :func:`split_train_val`); a folder (``dataset`` "folder") has no test set, so :func:`stratified_split` makes
    both with ``test_fraction``. Writes ``train.npz``, ``val.npz`` and ``test.npz``
    (uncompressed; ``images`` uint8 (N, C, H, W), ``labels`` int64) and last ``manifest.json``
    (dataset, counts and per-class counts per split, class names, image shape, md5 of every
    array's bytes, the split parameters), each atomically. Returns the manifest.
    """
    out_dir = Path(out_dir)
    params: dict[str, Any] = {"val_fraction": val_fraction, "split_seed": seed,
                              **({"split_order": order} if order != "seeded" else {})}
    if dataset == "folder":
        images, labels, class_names = load_ingested(raw_dir)
        train_idx, val_idx, test_idx = stratified_split(labels, class_names, test_fraction,
                                                        val_fraction, seed)
        splits = {name: (images[idx], labels[idx])
                  for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
        params["test_fraction"] = test_fraction
        image_shape = list(images.shape[1:])
    else:
        spec = get_spec(dataset)
        class_names, image_shape = list(spec.class_names), list(spec.image_shape)
        train_x, train_y, test_x, test_y = load_raw(dataset, raw_dir)
        train_idx, val_idx = split_train_val(len(train_x), val_fraction, seed, order)
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
            name: {str(c): int(k) for c, k in
                   enumerate(np.bincount(y, minlength=len(class_names)))}
            for name, (_, y) in splits.items()},
        "class_names": class_names,
        "image_shape": image_shape,
        "md5": {name: {"images": _md5_of(x), "labels": _md5_of(y)}
                for name, (x, y) in splits.items()},
        "params": params,
    }
    for name, (x, y) in splits.items():
        save_arrays(out_dir / f"{name}.npz", x, y)
    write_json(out_dir / MANIFEST_FILE, manifest)
    return manifest
