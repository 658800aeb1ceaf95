"""Generators of small, structurally valid dataset files for tests (no real data needed).

``write_idx_mirror`` writes the four MNIST/Fashion-MNIST IDX files, ``write_cifar_tarball`` a
``cifar-10-python.tar.gz`` in the real pickle layout. Both return the md5 of each decompressed
raw file, the table that ``VAEPIPE_EXPECTED_MD5`` / ``fetch_raw(expected_md5=...)`` expect.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch", "batches.meta")
CIFAR_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck")


def md5_bytes(data: bytes) -> str:
    """Hex md5 of ``data``."""
    return hashlib.md5(data).hexdigest()


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file's bytes."""
    return md5_bytes(Path(path).read_bytes())


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array encoded as an IDX file (big-endian header, type code 0x08)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels with each of the ten classes as equally often as possible, shuffled."""
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def idx_arrays(n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images with balanced labels, keyed by IDX file name."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": balanced_labels(n_train, rng),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": balanced_labels(n_test, rng),
    }


def write_idx_mirror(directory: str | Path, n_train: int = 200, n_test: int = 50,
                     gz: bool = True, seed: int = 0) -> dict[str, str]:
    """Write the four IDX files into ``directory`` (as ``.gz`` archives when ``gz``).

    Returns raw file name -> md5 of the decompressed content; with ``gz`` the archives' own
    md5s are included too (keys ending in ``.gz``), as the download's archive check uses them.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md5s: dict[str, str] = {}
    for name, array in idx_arrays(n_train, n_test, seed).items():
        data = idx_bytes(array)
        md5s[name] = md5_bytes(data)
        if gz:
            packed = gzip.compress(data, compresslevel=1, mtime=0)
            (directory / f"{name}.gz").write_bytes(packed)
            md5s[f"{name}.gz"] = md5_bytes(packed)
        else:
            (directory / name).write_bytes(data)
    return md5s


def write_md5_json(path: str | Path, md5s: dict[str, str]) -> Path:
    """Write an md5 table as the JSON file ``VAEPIPE_EXPECTED_MD5`` names."""
    path = Path(path)
    path.write_text(json.dumps(md5s, indent=2))
    return path


def cifar_batches(n_per_batch: int = 20, seed: int = 0
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random CIFAR-10 batches: name -> (data uint8 (N, 3072), labels int64 (N,))."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                   balanced_labels(n_per_batch, rng).astype(np.int64))
            for name in CIFAR_FILES[:-1]}


def _py2_str(data: bytes) -> bytes:
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(data)) + data  # BINSTRING


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)  # BININT2
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_ndarray(array: np.ndarray) -> bytes:
    """A uint8 array as Python 2 numpy pickled it: _reconstruct, then BUILD with the state."""
    assert array.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN"
             + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + _py2_int(0) + b"tb")
    shape = b"(" + b"".join(_py2_int(d) for d in array.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
            + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + shape + dtype + b"\x89"
            + _py2_str(np.ascontiguousarray(array).tobytes()) + b"tb")


def _py2_obj(value: object) -> bytes:
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _py2_int(value)
    if isinstance(value, list):
        return b"]" + (b"(" + b"".join(_py2_obj(v) for v in value) + b"e" if value else b"")
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2_obj(k) + _py2_obj(v) for k, v in value.items()) + b"u"
    if isinstance(value, np.ndarray):
        return _py2_ndarray(value)
    raise TypeError(f"cannot pickle {type(value).__name__} the Python 2 way")


def py2_pickle(value: object) -> bytes:
    """Pickle ``value`` byte-for-byte as Python 2's cPickle (protocol 2) would.

    The real CIFAR-10 batches were written by Python 2: byte strings as STRING opcodes and
    arrays through ``numpy.core.multiarray._reconstruct``. Python 3's pickler cannot produce
    that, so this small writer does (dicts, lists, bytes, ints and uint8 arrays only).
    """
    return b"\x80\x02" + _py2_obj(value) + b"."


def cifar_batch_bytes(name: str, data: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch pickled like the real ones (Python 2 pickle; labels as a list of ints)."""
    batch = {b"batch_label": f"{name} (fake)".encode(), b"labels": [int(v) for v in labels],
             b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(len(data))]}
    return py2_pickle(batch)


def cifar_meta_bytes(n_per_batch: int) -> bytes:
    """``batches.meta`` pickled like the real one."""
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names":
            [n.encode() for n in CIFAR_LABEL_NAMES], b"num_vis": 3072}
    return py2_pickle(meta)


def cifar_files(n_per_batch: int = 20, seed: int = 0) -> dict[str, bytes]:
    """The seven raw CIFAR-10 files' bytes, keyed by name."""
    files = {name: cifar_batch_bytes(name, data, labels)
             for name, (data, labels) in cifar_batches(n_per_batch, seed).items()}
    files["batches.meta"] = cifar_meta_bytes(n_per_batch)
    return files


def write_cifar_tarball(directory: str | Path, n_per_batch: int = 20,
                        seed: int = 0) -> dict[str, str]:
    """Write ``cifar-10-python.tar.gz`` (members under ``cifar-10-batches-py/``).

    Returns raw file name -> md5 of each member, plus the archive's own md5 under its name.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / "cifar-10-python.tar.gz"
    md5s: dict[str, str] = {}
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        dir_info = tarfile.TarInfo("cifar-10-batches-py")
        dir_info.type, dir_info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(dir_info)
        for name, data in cifar_files(n_per_batch, seed).items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            md5s[name] = md5_bytes(data)
    md5s[archive.name] = md5_file(archive)
    return md5s


def write_cifar_files(directory: str | Path, n_per_batch: int = 20,
                      seed: int = 0) -> dict[str, str]:
    """Write the seven decompressed CIFAR-10 files into ``directory``; returns name -> md5."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for name, data in cifar_files(n_per_batch, seed).items():
        (directory / name).write_bytes(data)
        md5s[name] = md5_bytes(data)
    return md5s
