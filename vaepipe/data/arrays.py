"""The processed split files: uint8 images and int64 labels in byte-stable ``.npz`` files."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vaepipe.data.catalog import DATASETS, SPLITS, DataFormatError
from vaepipe.io import atomic_path


def save_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """An uncompressed .npz (what np.load reads) whose bytes depend on the arrays alone.

    np.savez stamps the current time into each zip member, so equal arrays would give new
    bytes on every run and DVC would rerun every stage below split; a fixed stamp avoids that.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in (("images", images), ("labels", labels)):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def load_split(directory: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read split ``name`` (train, val or test) saved by :func:`write_split`.

    Returns ``(images uint8 (N, C, H, W), labels int64 (N,))``; a missing array, a wrong dtype,
    an image shape of no known dataset, no images or mismatched lengths raise
    :class:`DataFormatError` naming the file.
    """
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
    path = Path(directory) / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataFormatError(f"{path}: not found; run `dvc repro split` first") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # np.load on a corrupt file
        raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from None
    if set(arrays) != {"images", "labels"}:
        raise DataFormatError(f"{path}: expected arrays 'images' and 'labels', found "
                              f"{', '.join(sorted(arrays)) or 'none'}")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataFormatError(f"{path}: 'images' must be uint8 (N, C, H, W), got "
                              f"{images.dtype} {images.shape}")
    # the models are built from the train images' shape, so one of another shape (or an empty
    # split) would otherwise fail only mid-training, in a traceback
    shapes = sorted({spec.image_shape for spec in DATASETS.values()})
    if images.shape[1:] not in shapes:
        allowed = " or ".join("x".join(map(str, s)) for s in shapes)
        raise DataFormatError(f"{path}: 'images' must be N x {allowed} (C x H x W of a known "
                              f"dataset), got {images.shape}")
    if len(images) == 0:
        raise DataFormatError(f"{path}: holds no images")
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise DataFormatError(f"{path}: 'labels' must be int64 ({len(images)},), got "
                              f"{labels.dtype} {labels.shape}")
    return images, labels


def load_splits(directory: str | Path, *names: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`load_split` for each of ``names``, which must all hold images of one shape (a
    model is built for the first one's); the first split that differs is named."""
    splits = [load_split(directory, name) for name in names]
    first = splits[0][0].shape[1:]
    for name, (images, _) in zip(names[1:], splits[1:]):
        if images.shape[1:] != first:
            shown = "x".join(map(str, images.shape[1:]))
            raise DataFormatError(f"{Path(directory) / f'{name}.npz'}: images are {shown}, but "
                                  f"{names[0]}.npz's are {'x'.join(map(str, first))}; rerun "
                                  f"`dvc repro split`")
    return splits
