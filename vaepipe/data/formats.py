"""How raw files are read: IDX (MNIST, Fashion-MNIST) and CIFAR-10 python batches."""
from __future__ import annotations

import codecs
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from vaepipe.data.catalog import (CIFAR_FILES, IDX_FILES, NUM_CLASSES, DataFormatError,
                                  get_spec)


def read_idx(path: str | Path, shown: str | None = None) -> np.ndarray:
    """Read an (uncompressed) IDX file of unsigned bytes into an array shaped by its header.

    The header is big-endian: two zero bytes, the type code 0x08 (unsigned byte), the number of
    dimensions, then one uint32 per dimension. The header and the file size are checked here,
    so a bad magic number or a truncated file raises :class:`DataFormatError` naming the file
    (``shown``, default ``path``: the source, not a staging copy); the data are then read by
    torchvision's IDX reader, the one its MNIST datasets use.
    """
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = Path(path)
    shown = str(path) if shown is None else shown
    with path.open("rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != 0x08 or not 1 <= magic[3] <= 3:
            raise DataFormatError(
                f"{shown}: bad IDX magic {magic.hex() or '(empty file)'}; expected 00 00 08 "
                "<ndim> (unsigned-byte IDX data: 00000803 for images, 00000801 for labels)")
        ndim = magic[3]
        raw_dims = f.read(4 * ndim)
        size = os.fstat(f.fileno()).st_size
    if len(raw_dims) < 4 * ndim:
        raise DataFormatError(f"{shown}: truncated IDX header ({size} bytes)")
    dims = tuple(int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise DataFormatError(f"{shown}: {size} bytes, but the IDX header's dimensions {dims} "
                              f"need {expected}; the file is truncated or corrupt")
    return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy()


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    CIFAR-10 batches are pickles; refusing every other global means a tampered file from a
    mirror cannot run code while it is being read.
    """

    _ALLOWED = {
        # the real batches were pickled by Python 2's numpy; numpy >= 2 pickles name _core
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(...) under pickle protocol 2
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed here") from None


def _load_pickle(path: Path, shown: str) -> Any:
    try:
        with path.open("rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    # what a truncated or garbled pickle raises varies with where the damage is
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as exc:
        raise DataFormatError(f"{shown}: not a readable CIFAR-10 pickle ({exc})") from None


def read_cifar_batch(path: str | Path, shown: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    The batch is a pickle (read with ``encoding="bytes"``) of a dict whose ``b"data"`` is an
    N x 3072 uint8 array, each row the red, green and blue 32x32 planes in turn (CHW order),
    and whose ``b"labels"`` lists N class indices.
    """
    path = Path(path)
    shown = str(path) if shown is None else shown
    obj = _load_pickle(path, shown)
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(f"{shown}: not a CIFAR-10 batch (expected keys b'data' and "
                              f"b'labels', found {keys})")
    data, labels = obj[b"data"], np.asarray(obj[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{shown}: b'data' must be an N x 3072 uint8 array, got {desc}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{shown}: b'labels' must list {data.shape[0]} integers, "
                              f"got {labels.dtype} {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_meta(path: str | Path, shown: str | None = None) -> tuple[str, ...]:
    """The class names stored in CIFAR-10's ``batches.meta`` (errors name ``shown``)."""
    path = Path(path)
    shown = str(path) if shown is None else shown
    obj = _load_pickle(path, shown)
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise DataFormatError(f"{shown}: not a CIFAR-10 batches.meta (no b'label_names' list)")
    return tuple(n.decode() for n in names)


def check_labels(labels: np.ndarray, where: str | Path) -> None:
    """Class indices must lie in 0..9; the error names ``where``."""
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataFormatError(f"{where}: labels must lie in 0..{NUM_CLASSES - 1}, found "
                              f"{int(labels.min())}..{int(labels.max())}")


def load_raw(dataset: str, raw_dir: str | Path
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a raw directory written by :func:`fetch_raw`.

    Returns ``(train_images, train_labels, test_images, test_labels)``: images uint8 shaped
    (N, C, H, W), 1x28x28 for the IDX datasets and 3x32x32 for CIFAR-10, labels int64.
    """
    spec = get_spec(dataset)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataFormatError(f"{raw_dir}: no such directory; run the download stage first")
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        if spec.format == "idx":
            images_name, labels_name = IDX_FILES[split]
            images = read_idx(raw_dir / images_name)
            labels = read_idx(raw_dir / labels_name)
            if images.ndim != 3 or images.shape[1:] != spec.image_shape[1:]:
                raise DataFormatError(f"{raw_dir / images_name}: expected N x 28 x 28 images, "
                                      f"got shape {images.shape}")
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataFormatError(f"{raw_dir / labels_name}: expected {len(images)} labels "
                                      f"to match {images_name}, got shape {labels.shape}")
            images = images.reshape(len(images), *spec.image_shape)
            labels = labels.astype(np.int64)
            where: Path = raw_dir / labels_name
        else:
            batches = [read_cifar_batch(raw_dir / name) for name in CIFAR_FILES[split]]
            images = np.concatenate([b[0] for b in batches])
            labels = np.concatenate([b[1] for b in batches])
            where = raw_dir
        check_labels(labels, where)
        out += [images, labels]
    return out[0], out[1], out[2], out[3]

