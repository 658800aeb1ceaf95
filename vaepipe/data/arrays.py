"""The processed split files: uint8 images and int64 labels in byte-stable ``.npz`` files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaepipe.data.catalog import IMAGE_SIZES, SPLITS, DataFormatError
from vaepipe.io import read_npz, write_npz

INGESTED_FILE = "images.npz"  # an image folder's decoded images and labels, before the split
MANIFEST_FILE = "manifest.json"  # beside them and beside the splits: class names, counts, ...


def save_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One split file: ``images`` and ``labels`` in a byte-stable ``.npz``."""
    write_npz(path, {"images": images, "labels": labels})


def split_file(directory: str | Path, name: str) -> Path:
    """The file of split ``name`` (train, val, test) in a split directory."""
    return Path(directory) / f"{name}.npz"


def load_split(directory: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read split ``name`` (train, val or test) saved by :func:`write_split`.

    Returns ``(images uint8 (N, C, H, W), labels int64 (N,))``; a missing array, a wrong dtype,
    an image shape of no known dataset, no images or mismatched lengths raise
    :class:`DataFormatError` naming the file.
    """
    if name not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
    path = split_file(directory, name)
    arrays = read_npz(path, "run `dvc repro split` first", DataFormatError)
    if set(arrays) != {"images", "labels"}:
        raise DataFormatError(f"{path}: expected arrays 'images' and 'labels', found "
                              f"{', '.join(sorted(arrays)) or 'none'}")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataFormatError(f"{path}: 'images' must be uint8 (N, C, H, W), got "
                              f"{images.dtype} {images.shape}")
    # the models are built from the train images' shape, so one of another shape (or an empty
    # split) would otherwise fail only mid-training, in a traceback
    _, c, h, w = images.shape
    if c not in (1, 3) or h != w or h not in IMAGE_SIZES:
        raise DataFormatError(f"{path}: 'images' must be N x C x S x S with C 1 or 3 and S one "
                              f"of {', '.join(map(str, IMAGE_SIZES))}, got {images.shape}")
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


def read_class_names(directory: str | Path) -> list[str]:
    """The class names of the split (or ingested folder) in ``directory``, index by index, from
    its manifest."""
    path = Path(directory) / MANIFEST_FILE
    try:
        names = json.loads(path.read_text())["class_names"]
    except FileNotFoundError:
        raise DataFormatError(f"{path}: not found; run `dvc repro split` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"{path}: no class_names list ({exc}); rerun `dvc repro split`") \
            from None
    if not isinstance(names, list) or not names:
        raise DataFormatError(f"{path}: class_names must be a non-empty list, got {names!r}")
    return [str(n) for n in names]


def load_ingested(raw_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The images, labels and class names an image folder was decoded into (the download
    stage's :func:`vaepipe.data.folder.ingest_folder`)."""
    path = Path(raw_dir) / INGESTED_FILE
    arrays = read_npz(path, "run `dvc repro download` first", DataFormatError)
    missing = [k for k in ("images", "labels") if k not in arrays]
    if missing:
        raise DataFormatError(f"{path}: lacks {' and '.join(missing)}; rerun `dvc repro download`")
    return arrays["images"], arrays["labels"], read_class_names(raw_dir)
