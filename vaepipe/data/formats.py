"""How raw files are found, read and checked: one :class:`RawFormat` per format, in :data:`FORMATS`.

A dataset of :mod:`vaepipe.data.catalog` names its format; the format knows its files (plain,
compressed or inside an archive), reads them into uint8 images (N, C, H, W) and int64 labels,
and checks them. Adding a format is one subclass here with a ``name``; the download stage
(:mod:`vaepipe.data.sources`) and the split stage (:func:`load_raw`) use it through the
dataset's spec alone.
"""
from __future__ import annotations

import codecs
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from vaepipe.data.catalog import DataFormatError, DatasetSpec, get_spec

FORMATS: dict[str, "RawFormat"] = {}
RawArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class Unavailable(Exception):
    """A source that is simply not there (missing directory, no dataset files in it)."""


@dataclass(frozen=True)
class RawItem:
    """One raw file to produce: from a plain file, a .gz file, or a member of a tar archive."""

    name: str  # the raw file's name in dest
    path: Path  # the local file holding it (the plain file, the .gz or the tar archive)
    how: str  # "copy", "gunzip" or "tar"
    source: str  # how messages name ``path``: a local path or the URL it was downloaded from
    member: str = ""  # for "tar": the member's name in the archive

    @property
    def shown(self) -> str:
        """How messages name this file."""
        return f"{self.source}[{self.member}]" if self.member else self.source


class RawFormat:
    """A format of raw files. Subclasses set ``name`` and ``files`` (split -> its raw files)
    and implement :meth:`local_item`, :meth:`archive_items`, :meth:`read_split` and
    :meth:`verify`; an instance is registered when the class is defined."""

    name: ClassVar[str] = ""
    files: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # the files that hold no split (CIFAR-10's batches.meta)
    extra_files: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            FORMATS[cls.name] = cls()

    @property
    def raw_files(self) -> tuple[str, ...]:
        return (*(n for names in self.files.values() for n in names), *self.extra_files)

    def expected_names(self, spec: DatasetSpec) -> str:
        """What a directory must hold, for messages."""
        return ", ".join(self.raw_files)

    def local_items(self, spec: DatasetSpec, src: Path) -> tuple[list[RawItem], list[str]]:
        """The raw files found in directory ``src`` and the names of those missing."""
        items = [self.local_item(src, name) for name in self.raw_files]
        missing = [n for n, item in zip(self.raw_files, items) if item is None]
        return [i for i in items if i is not None], missing

    def local_item(self, src: Path, name: str) -> RawItem | None:
        """Raw file ``name`` in ``src``, as it is stored there; None if absent."""
        plain = src / name
        return RawItem(name, plain, "copy", str(plain)) if plain.is_file() else None

    def archive_items(self, spec: DatasetSpec, archive: str, path: Path,
                      source: str) -> list[RawItem]:
        """The raw files that the downloaded upstream ``archive`` (at ``path``) holds."""
        raise NotImplementedError

    def read_split(self, spec: DatasetSpec, raw_dir: Path, split: str
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, C, H, W) uint8 and labels (N,) int64 of ``split`` (train or test)."""
        raise NotImplementedError

    def verify(self, spec: DatasetSpec, out_dir: Path, shown: Mapping[str, str],
               official_counts: bool) -> None:
        """Check the staged raw files' structure; errors name ``shown[file]``, the source."""
        raise NotImplementedError


def format_of(spec: DatasetSpec) -> RawFormat:
    """The registered format of a dataset."""
    if spec.format not in FORMATS:
        raise ValueError(f"{spec.name}: unknown format {spec.format!r}; known: "
                         f"{', '.join(FORMATS)}")
    return FORMATS[spec.format]


def tar_items(archive: Path, source: str, names, folder: str) -> list[RawItem]:
    """Items for raw files ``names`` held under ``folder/`` in the tar archive ``archive``."""
    return [RawItem(n, archive, "tar", source, member=f"{folder}/{n}") for n in names]


def check_labels(labels: np.ndarray, where: str | Path, classes: int) -> None:
    """Class indices must lie in 0..classes - 1; the error names ``where``."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataFormatError(f"{where}: labels must lie in 0..{classes - 1}, found "
                              f"{int(labels.min())}..{int(labels.max())}")


def check_count(spec: DatasetSpec, split: str, count: int, where: str) -> None:
    """The official number of records of a split (not checked on test data)."""
    if count != spec.counts[split]:
        raise DataFormatError(f"{where}: {count} records, expected {spec.counts[split]}")


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


# --------------------------------------------------------------------------------------------
# The registered formats


class Idx(RawFormat):
    """MNIST's IDX files, plain or gzipped (MNIST, Fashion-MNIST)."""

    name = "idx"
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def expected_names(self, spec):
        return ", ".join(f"{n}[.gz]" for n in self.raw_files)

    def local_item(self, src, name):
        gz = src / f"{name}.gz"
        if not (src / name).is_file() and gz.is_file():
            return RawItem(name, gz, "gunzip", str(gz))
        return super().local_item(src, name)

    def archive_items(self, spec, archive, path, source):
        return [RawItem(archive[:-len(".gz")], path, "gunzip", source)]

    def read_split(self, spec, raw_dir, split):
        images_name, labels_name = self.files[split]
        images = read_idx(raw_dir / images_name)
        labels = read_idx(raw_dir / labels_name)
        if images.ndim != 3 or images.shape[1:] != spec.image_shape[1:]:
            raise DataFormatError(f"{raw_dir / images_name}: expected N x 28 x 28 images, "
                                  f"got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFormatError(f"{raw_dir / labels_name}: expected {len(images)} labels "
                                  f"to match {images_name}, got shape {labels.shape}")
        check_labels(labels, raw_dir / labels_name, len(spec.class_names))
        return images.reshape(len(images), *spec.image_shape), labels.astype(np.int64)

    def verify(self, spec, out_dir, shown, official_counts):
        for split, (images_name, labels_name) in self.files.items():
            arrays = {}
            for name, ndim in ((images_name, 3), (labels_name, 1)):
                arr = read_idx(out_dir / name, shown[name])
                if arr.ndim != ndim or (ndim == 3 and arr.shape[1:] != spec.image_shape[1:]):
                    kind = "N x 28 x 28 images (magic 00000803)" if ndim == 3 \
                        else "N labels (magic 00000801)"
                    raise DataFormatError(f"{shown[name]}: expected {kind}, got shape {arr.shape}")
                if official_counts:
                    check_count(spec, split, len(arr), shown[name])
                arrays[name] = arr
            if len(arrays[images_name]) != len(arrays[labels_name]):
                raise DataFormatError(f"{shown[labels_name]}: {len(arrays[labels_name])} labels "
                                      f"for {len(arrays[images_name])} images in {images_name}")
            check_labels(arrays[labels_name], shown[labels_name], len(spec.class_names))


class Cifar(RawFormat):
    """CIFAR-10's python batches (pickles), plain or in the upstream tar.gz archive."""

    name = "cifar"
    folder = "cifar-10-batches-py"  # where the archive holds them
    files = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    extra_files = ("batches.meta",)

    def expected_names(self, spec):
        return f"{next(iter(spec.archives))} or {', '.join(self.raw_files)}"

    def local_items(self, spec, src):
        items, missing = super().local_items(spec, src)
        tarball = src / next(iter(spec.archives))
        if missing and tarball.is_file():
            return items + tar_items(tarball, str(tarball), missing, self.folder), []
        return items, missing

    def local_item(self, src, name):
        return super().local_item(src, name) or super().local_item(src / self.folder, name)

    def archive_items(self, spec, archive, path, source):
        return tar_items(path, source, self.raw_files, self.folder)

    def read_split(self, spec, raw_dir, split):
        batches = [read_cifar_batch(raw_dir / name) for name in self.files[split]]
        labels = np.concatenate([b[1] for b in batches])
        check_labels(labels, raw_dir, len(spec.class_names))
        return np.concatenate([b[0] for b in batches]), labels

    def verify(self, spec, out_dir, shown, official_counts):
        for split, names in self.files.items():
            counts = []
            for name in names:
                _, labels = read_cifar_batch(out_dir / name, shown[name])
                check_labels(labels, shown[name], len(spec.class_names))
                counts.append(len(labels))
            if official_counts:
                check_count(spec, split, sum(counts), ", ".join(shown[n] for n in names))
        meta = self.extra_files[0]
        names = read_cifar_meta(out_dir / meta, shown[meta])
        if len(names) != len(spec.class_names):
            raise DataFormatError(f"{shown[meta]}: {len(names)} label names, expected "
                                  f"{len(spec.class_names)}")


def load_raw(dataset: str, raw_dir: str | Path) -> RawArrays:
    """Read a raw directory written by :func:`vaepipe.data.sources.fetch_raw`.

    Returns ``(train_images, train_labels, test_images, test_labels)``: images uint8 shaped
    (N, C, H, W) as the dataset's spec says, labels int64.
    """
    spec = get_spec(dataset)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataFormatError(f"{raw_dir}: no such directory; run the download stage first")
    fmt = format_of(spec)
    (train_x, train_y), (test_x, test_y) = (fmt.read_split(spec, raw_dir, split)
                                            for split in ("train", "test"))
    return train_x, train_y, test_x, test_y
