"""Raw datasets: where they come from, how they are verified, how they are read and split.

:func:`fetch_raw` gets a dataset's raw files from the first source that works, in this order:

1. ``mirror``: the directory named by ``data.mirror`` in params.yaml. It may hold the upstream
   archives (``train-images-idx3-ubyte.gz``..., ``cifar-10-python.tar.gz``) or the decompressed
   files (``train-images-idx3-ubyte``..., ``data_batch_1``... also inside ``cifar-10-batches-py/``);
2. the standard local place, where a distribution package installs the dataset (Debian's
   ``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist``);
3. the official download, through torchvision's download helpers, checked against the md5 of
   the upstream archive.

Whichever source serves them, ``data/raw/<dataset>/`` receives the *decompressed* raw files,
byte-identical, each checked against a pinned md5 of its decompressed content (Debian
recompresses the ``.gz`` files, so their bytes, and md5s, differ from upstream's while the
content is the same) and checked structurally. Everything is assembled in a temporary directory
beside the destination and moved into place only once every file passed, so a rejected source
leaves nothing behind and does not destroy an earlier good copy.

Test hook: when the environment variable ``VAEPIPE_EXPECTED_MD5`` is set, it names a JSON file
mapping raw file names to the md5 of their decompressed content; that table replaces the pinned
one (entries named like an upstream archive, e.g. ``train-images-idx3-ubyte.gz``, replace that
archive's md5 for the download; archives without an entry are then not md5-checked). In this
mode the official record counts (60000/10000 images, 10000 per CIFAR batch) are not enforced, so
a whole ``dvc repro`` can run on a tiny generated mirror; the structural checks still apply. It
exists for the test-suite and is not meant for real runs.
"""
from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import math
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

from vaepipe.io import atomic_path, write_json

logger = logging.getLogger(__name__)

EXPECTED_MD5_ENV = "VAEPIPE_EXPECTED_MD5"
SPLITS = ("train", "val", "test")
NUM_CLASSES = 10

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_META = "batches.meta"


class DataError(Exception):
    """Base class of the errors a data stage reports to the user and exits on."""


class DataFormatError(DataError, ValueError):
    """A file that is corrupt, truncated or not in the expected format; the message names it."""


class DataSourceError(DataError):
    """No source could provide verified raw files; the message lists each place tried."""


class _Unavailable(Exception):
    """A source that is simply not there (missing directory, no dataset files in it)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's raw files come from and what they must look like.

    ``archives`` maps each upstream archive name to its md5 (from torchvision); ``raw_md5``
    maps each decompressed raw file to its pinned md5, or is None where no such sums are
    published; ``counts`` is the number of records each raw file holds upstream.
    """

    name: str
    format: str  # "idx" or "cifar"
    raw_files: tuple[str, ...]
    archives: Mapping[str, str]
    base_urls: tuple[str, ...]
    raw_md5: Mapping[str, str] | None
    standard_dir: str | None
    counts: Mapping[str, int]
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    apt_package: str | None = None


def _idx_counts() -> dict[str, int]:
    return {name: 60000 if split == "train" else 10000
            for split, names in _IDX_FILES.items() for name in names}


_IDX_RAW = (*_IDX_FILES["train"], *_IDX_FILES["test"])

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    format="idx",
    raw_files=_IDX_RAW,
    # torchvision.datasets.FashionMNIST.resources
    archives={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    base_urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    raw_md5={
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
    standard_dir="/usr/share/datasets/fashion-mnist",
    counts=_idx_counts(),
    image_shape=(1, 28, 28),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    apt_package="dataset-fashion-mnist",
)

MNIST = DatasetSpec(
    name="mnist",
    format="idx",
    raw_files=_IDX_RAW,
    # torchvision.datasets.MNIST.resources
    archives={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    base_urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
    # No md5s of the decompressed MNIST files are published, so a local MNIST copy is only
    # checked structurally (IDX magic, 28x28 dims, 60000/10000 records, labels 0..9); the
    # upstream .gz md5 is checked when the files come from the official download.
    raw_md5=None,
    standard_dir="/usr/share/datasets/mnist",
    counts=_idx_counts(),
    image_shape=(1, 28, 28),
    class_names=tuple(str(d) for d in range(10)),
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    format="cifar",
    raw_files=(*_CIFAR_FILES["train"], *_CIFAR_FILES["test"], _CIFAR_META),
    # torchvision.datasets.CIFAR10.tgz_md5
    archives={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    base_urls=("https://www.cs.toronto.edu/~kriz/",),
    # torchvision.datasets.CIFAR10.train_list, .test_list and .meta
    raw_md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    standard_dir=None,
    counts={name: 10000 for names in _CIFAR_FILES.values() for name in names},
    image_shape=(3, 32, 32),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (FASHION_MNIST, MNIST, CIFAR10)}
CLASS_NAMES: dict[str, tuple[str, ...]] = {s.name: s.class_names for s in DATASETS.values()}


def get_spec(dataset: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``dataset``; a ValueError names the choices."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------------------------
# Readers


def read_idx(path: str | Path) -> np.ndarray:
    """Read an (uncompressed) IDX file of unsigned bytes into an array shaped by its header.

    The header is big-endian: two zero bytes, the type code 0x08 (unsigned byte), the number of
    dimensions, then one uint32 per dimension. A bad magic number or a file size that does not
    match the dimensions raises :class:`DataFormatError` naming the file.
    """
    return _read_idx(Path(path), str(path))


def _read_idx(path: Path, shown: str) -> np.ndarray:
    """:func:`read_idx`, naming the file ``shown`` in errors (the source, not a staging path)."""
    with path.open("rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != 0x08 or magic[3] == 0:
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
        data = np.fromfile(f, dtype=np.uint8, count=math.prod(dims))
    return data.reshape(dims)


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


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    The batch is a pickle (read with ``encoding="bytes"``) of a dict whose ``b"data"`` is an
    N x 3072 uint8 array, each row the red, green and blue 32x32 planes in turn (CHW order),
    and whose ``b"labels"`` lists N class indices.
    """
    return _read_cifar_batch(Path(path), str(path))


def _read_cifar_batch(path: Path, shown: str) -> tuple[np.ndarray, np.ndarray]:
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


def read_cifar_meta(path: str | Path) -> tuple[str, ...]:
    """The class names stored in CIFAR-10's ``batches.meta``."""
    return _read_cifar_meta(Path(path), str(path))


def _read_cifar_meta(path: Path, shown: str) -> tuple[str, ...]:
    obj = _load_pickle(path, shown)
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
        raise DataFormatError(f"{shown}: not a CIFAR-10 batches.meta (no b'label_names' list)")
    return tuple(n.decode() for n in names)


def _check_labels(labels: np.ndarray, where: str | Path) -> None:
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
            images_name, labels_name = _IDX_FILES[split]
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
            batches = [read_cifar_batch(raw_dir / name) for name in _CIFAR_FILES[split]]
            images = np.concatenate([b[0] for b in batches])
            labels = np.concatenate([b[1] for b in batches])
            where = raw_dir
        _check_labels(labels, where)
        out += [images, labels]
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True)
class _Item:
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


@dataclass(frozen=True)
class _Expectations:
    raw_md5: Mapping[str, str] | None
    archive_md5: Mapping[str, str]
    official_counts: bool


def _expectations(spec: DatasetSpec, expected_md5: Mapping[str, str] | None) -> _Expectations:
    """The md5 tables and count policy in force: pinned, or the test hook's table."""
    origin = "the expected_md5 argument"
    if expected_md5 is None and os.environ.get(EXPECTED_MD5_ENV):
        origin = os.environ[EXPECTED_MD5_ENV]
        try:
            expected_md5 = json.loads(Path(origin).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{EXPECTED_MD5_ENV}={origin}: cannot read the md5 table ({exc})") \
                from None
        if not isinstance(expected_md5, dict):
            raise DataError(f"{EXPECTED_MD5_ENV}={origin}: expected a JSON object of name: md5")
    if expected_md5 is None:
        return _Expectations(spec.raw_md5, spec.archives, official_counts=True)
    missing = [n for n in spec.raw_files if n not in expected_md5]
    if missing:
        raise DataError(f"{origin} has no md5 for {', '.join(missing)}")
    return _Expectations(
        raw_md5={n: expected_md5[n] for n in spec.raw_files},
        archive_md5={a: expected_md5[a] for a in spec.archives if a in expected_md5},
        official_counts=False)


def _expected_names(spec: DatasetSpec) -> str:
    if spec.format == "idx":
        return ", ".join(f"{n}[.gz]" for n in spec.raw_files)
    return f"{next(iter(spec.archives))} or {', '.join(spec.raw_files)}"


def _tar_items(archive: Path, source: str, names: Sequence[str]) -> list[_Item]:
    """Items for raw files ``names`` held in the CIFAR-10 tarball ``archive``."""
    return [_Item(n, archive, "tar", source, member=f"{_CIFAR_DIR}/{n}") for n in names]


def _plan_local(spec: DatasetSpec, src: Path) -> list[_Item]:
    """Find each raw file in directory ``src``, decompressed or archived.

    Raises :class:`_Unavailable` when the directory or every dataset file is absent, and
    :class:`DataFormatError` when only some are there.
    """
    if not src.is_dir():
        raise _Unavailable("directory does not exist" if not src.exists() else "not a directory")
    items: list[_Item] = []
    from_tar: list[str] = []
    missing: list[str] = []
    tarball = src / next(iter(spec.archives))
    for name in spec.raw_files:
        plain = [src / name] + ([src / _CIFAR_DIR / name] if spec.format == "cifar" else [])
        found = next((p for p in plain if p.is_file()), None)
        if found is not None:
            items.append(_Item(name, found, "copy", str(found)))
        elif spec.format == "idx" and (src / f"{name}.gz").is_file():
            items.append(_Item(name, src / f"{name}.gz", "gunzip", str(src / f"{name}.gz")))
        elif spec.format == "cifar" and tarball.is_file():
            from_tar.append(name)
        else:
            missing.append(name)
    if len(missing) == len(spec.raw_files):
        raise _Unavailable(f"no {spec.name} files in it (looked for {_expected_names(spec)})")
    if missing:
        archived = "" if spec.format == "cifar" else " (or .gz)"
        raise DataFormatError(f"{src} is incomplete: missing {', '.join(missing)}{archived}")
    return items + _tar_items(tarball, str(tarball), from_tar)


def _copy_hashing(src: IO[bytes], dst: Path) -> str:
    """Copy a stream into ``dst`` and return the md5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with dst.open("wb") as out:
        while chunk := src.read(1 << 20):
            md5.update(chunk)
            out.write(chunk)
    return md5.hexdigest()


def _materialize(items: Sequence[_Item], out_dir: Path) -> dict[str, str]:
    """Write every item's decompressed content into ``out_dir``; return name -> md5.

    Unreadable sources raise :class:`DataFormatError` naming the file (e.g. a truncated gzip).
    """
    md5s: dict[str, str] = {}
    tar_items: dict[Path, list[_Item]] = {}
    for item in items:
        if item.how == "tar":
            tar_items.setdefault(item.path, []).append(item)
            continue
        try:
            with (gzip.open(item.path, "rb") if item.how == "gunzip"
                  else item.path.open("rb")) as src:
                md5s[item.name] = _copy_hashing(src, out_dir / item.name)
        except EOFError as exc:
            raise DataFormatError(f"{item.shown}: truncated gzip ({exc})") from None
        except gzip.BadGzipFile as exc:
            raise DataFormatError(f"{item.shown}: not a gzip file ({exc})") from None
        except zlib.error as exc:
            raise DataFormatError(f"{item.shown}: corrupt gzip data ({exc})") from None
    for wanted in tar_items.values():
        md5s.update(_extract_members(wanted, out_dir))
    return md5s


def _extract_members(wanted: Sequence[_Item], out_dir: Path) -> dict[str, str]:
    """Extract the expected regular-file members of one tar archive, in a single pass.

    Members are looked up by exact name and written under the raw file's name, so an archive
    cannot write anywhere else (torchvision's extract_archive extracts every member as named).
    """
    archive, source = wanted[0].path, wanted[0].source
    by_member = {item.member: item for item in wanted}
    md5s: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                item = by_member.get(info.name)
                if item is None or item.name in md5s:
                    continue
                src = tar.extractfile(info) if info.isfile() else None
                if src is None:
                    raise DataFormatError(f"{item.shown}: not a regular file in the archive")
                with src:
                    md5s[item.name] = _copy_hashing(src, out_dir / item.name)
    except EOFError as exc:
        raise DataFormatError(f"{source}: truncated archive ({exc})") from None
    except (tarfile.TarError, zlib.error) as exc:
        raise DataFormatError(f"{source}: not a readable tar.gz archive ({exc})") from None
    missing = [item.member for item in wanted if item.name not in md5s]
    if missing:
        raise DataFormatError(f"{source}: the archive lacks {', '.join(missing)}")
    return md5s


def _verify(spec: DatasetSpec, items: Sequence[_Item], out_dir: Path, md5s: Mapping[str, str],
            expect: _Expectations) -> None:
    """Check each staged raw file's md5 and structure; errors name the source file."""
    for item in items:
        want = expect.raw_md5.get(item.name) if expect.raw_md5 is not None else None
        if want is not None and md5s[item.name] != want:
            what = "md5" if item.how == "copy" else "md5 of the decompressed content"
            raise DataFormatError(f"{item.shown}: {what} is {md5s[item.name]}, expected {want}")
    shown = {item.name: item.shown for item in items}
    if spec.format == "idx":
        _verify_idx(spec, out_dir, shown, expect.official_counts)
    else:
        _verify_cifar(spec, out_dir, shown, expect.official_counts)


def _verify_idx(spec: DatasetSpec, out_dir: Path, shown: Mapping[str, str],
                official_counts: bool) -> None:
    for images_name, labels_name in _IDX_FILES.values():
        arrays = {}
        for name, ndim in ((images_name, 3), (labels_name, 1)):
            arr = _read_idx(out_dir / name, shown[name])
            if arr.ndim != ndim or (ndim == 3 and arr.shape[1:] != spec.image_shape[1:]):
                kind = "N x 28 x 28 images (magic 00000803)" if ndim == 3 \
                    else "N labels (magic 00000801)"
                raise DataFormatError(f"{shown[name]}: expected {kind}, got shape {arr.shape}")
            if official_counts and len(arr) != spec.counts[name]:
                raise DataFormatError(f"{shown[name]}: {len(arr)} records, expected "
                                      f"{spec.counts[name]}")
            arrays[name] = arr
        if len(arrays[images_name]) != len(arrays[labels_name]):
            raise DataFormatError(f"{shown[labels_name]}: {len(arrays[labels_name])} labels for "
                                  f"{len(arrays[images_name])} images in {images_name}")
        _check_labels(arrays[labels_name], shown[labels_name])


def _verify_cifar(spec: DatasetSpec, out_dir: Path, shown: Mapping[str, str],
                  official_counts: bool) -> None:
    for name in (*_CIFAR_FILES["train"], *_CIFAR_FILES["test"]):
        _, labels = _read_cifar_batch(out_dir / name, shown[name])
        if official_counts and len(labels) != spec.counts[name]:
            raise DataFormatError(f"{shown[name]}: {len(labels)} images, expected "
                                  f"{spec.counts[name]}")
        _check_labels(labels, shown[name])
    names = _read_cifar_meta(out_dir / _CIFAR_META, shown[_CIFAR_META])
    if len(names) != NUM_CLASSES:
        raise DataFormatError(f"{shown[_CIFAR_META]}: {len(names)} label names, expected "
                              f"{NUM_CLASSES}")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation: torchvision's downloader takes no timeout of its own, and
    without one an unresponsive host could hang the stage forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(spec: DatasetSpec, base_url: str, download_dir: Path, expect: _Expectations,
              timeout: float) -> list[_Item]:
    """Download every upstream archive from ``base_url`` with torchvision's helpers.

    An unreachable URL raises :class:`_Unavailable`, a download whose md5 differs from the
    upstream archive's raises :class:`DataFormatError`; both name the URL.
    """
    # imported here: torchvision pulls in torch, which costs seconds at every stage start
    from torchvision.datasets.utils import calculate_md5, check_integrity, download_url

    items: list[_Item] = []
    for archive in spec.archives:
        url = base_url.rstrip("/") + "/" + archive
        md5 = expect.archive_md5.get(archive)
        target = download_dir / archive
        try:
            with _socket_timeout(timeout):
                download_url(url, str(download_dir), archive, md5=md5)
        except RuntimeError as exc:  # download_url's "File not found or corrupted."
            if md5 is not None and target.is_file() and not check_integrity(str(target), md5):
                raise DataFormatError(f"{url}: md5 of the download is "
                                      f"{calculate_md5(str(target))}, expected {md5}") from None
            raise _Unavailable(f"{url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise _Unavailable(f"{url}: {exc}") from None
        if spec.format == "idx":
            items.append(_Item(archive[:-len(".gz")], target, "gunzip", url))
        else:
            items += _tar_items(target, url, spec.raw_files)
    return items


def _replace_dir(new: Path, dest: Path, parking: Path) -> None:
    """Move directory ``new`` to ``dest``. A previous ``dest`` is first moved to ``parking``
    and moved back if the second move fails, so a good copy is never lost."""
    parked = dest.exists() or dest.is_symlink()
    if parked:
        os.replace(dest, parking)
    try:
        os.replace(new, dest)
    except OSError:
        if parked:
            os.replace(parking, dest)
        raise


def fetch_raw(dataset: str, dest: str | Path, mirror: str | Path | None = None, *,
              standard_dirs: Sequence[str | Path] | None = None,
              base_urls: Sequence[str] | None = None,
              expected_md5: Mapping[str, str] | None = None,
              timeout: float = 60.0) -> str:
    """Put ``dataset``'s verified, decompressed raw files into the directory ``dest``.

    Sources are tried in order: ``mirror`` (if given), the standard local directories
    (``standard_dirs``; None means the dataset's usual place, ``()`` none), then the official
    download from each of ``base_urls`` (None means the official URLs, ``()`` no download).
    A source that is present but incomplete or fails verification is logged as a warning and
    the next one is tried; its problem, naming the file, is listed in the final error if none
    works. ``expected_md5`` replaces the pinned md5 table as the ``VAEPIPE_EXPECTED_MD5`` test
    hook does (see the module docstring). ``timeout`` bounds each network operation (seconds).

    ``dest`` is replaced only once every file passed; on failure it keeps its previous content
    and no temporary files remain. Returns a description of the source used. Raises
    :class:`DataSourceError` listing every place tried and how to fix it.
    """
    spec = get_spec(dataset)
    expect = _expectations(spec, expected_md5)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    std = ([spec.standard_dir] if spec.standard_dir else []) if standard_dirs is None \
        else [str(d) for d in standard_dirs]
    urls = list(spec.base_urls) if base_urls is None else list(base_urls)
    # (kind, where); where None stands for a source that is not configured at all
    sources: list[tuple[str, str | None]] = [("mirror", None if mirror is None else str(mirror))]
    sources += [("standard directory", d) for d in std] or [("standard directory", None)]
    sources += [("download from", u) for u in urls] or [("download from", None)]
    not_configured = {"mirror": "mirror: none set (data.mirror is null)",
                      "standard directory": f"standard directory: none known for {spec.name}",
                      "download from": "official download: not attempted (no URLs)"}

    tried: list[str] = []
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        for i, (kind, where) in enumerate(sources):
            if where is None:
                tried.append(not_configured[kind])
                continue
            attempt = work / f"attempt-{i}"
            files = attempt / "files"
            files.mkdir(parents=True)
            try:
                if kind == "download from":
                    items = _download(spec, where, attempt / "download", expect, timeout)
                else:
                    items = _plan_local(spec, Path(where))
                _verify(spec, items, files, _materialize(items, files), expect)
            except _Unavailable as exc:
                tried.append(f"{kind} {where}: {exc}")
                logger.info("%s %s: %s", kind, where, exc)
                shutil.rmtree(attempt)
                continue
            except (DataFormatError, OSError) as exc:  # OSError: e.g. an unreadable file
                tried.append(f"{kind} {where}: REJECTED: {exc}")
                logger.warning("%s %s rejected: %s", kind, where, exc)
                shutil.rmtree(attempt)
                continue
            _replace_dir(files, dest, work / "previous")
            logger.info("%s: %d verified files from %s %s", dest, len(items), kind, where)
            return f"{kind} {where}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raise DataSourceError(_failure_message(spec, dest, tried))


def _failure_message(spec: DatasetSpec, dest: Path, tried: Sequence[str]) -> str:
    fixes = []
    if spec.apt_package:
        fixes.append(f"install the {spec.name} package: apt-get install {spec.apt_package} "
                     f"(it fills {spec.standard_dir})")
    fixes.append(f"put the files ({_expected_names(spec)}) in a directory and set data.mirror "
                 "in params.yaml to that directory")
    fixes.append("connect to the internet so the official download can run")
    return (f"could not get verified {spec.name} raw files for {dest}; tried:\n"
            + "".join(f"  - {t}\n" for t in tried)
            + "to fix it, do one of:\n" + "\n".join(f"  - {f}" for f in fixes))


# --------------------------------------------------------------------------------------------
# Splitting


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


def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """An uncompressed .npz (what np.load reads) whose bytes depend on the arrays alone.

    np.savez stamps the current time into each zip member, so equal arrays would give new
    bytes on every run and DVC would rerun every stage below split; a fixed stamp avoids that.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in (("images", images), ("labels", labels)):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


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
        _save_npz(out_dir / f"{name}.npz", x, y)
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_split(directory: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read split ``name`` (train, val or test) saved by :func:`write_split`.

    Returns ``(images uint8 (N, C, H, W), labels int64 (N,))``; a missing array, a wrong dtype
    or mismatched lengths raise :class:`DataFormatError` naming the file.
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
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise DataFormatError(f"{path}: 'labels' must be int64 ({len(images)},), got "
                              f"{labels.dtype} {labels.shape}")
    return images, labels
