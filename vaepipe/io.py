"""File output and the ``.npz`` arrays stages hand each other.

Every write is atomic: a stage killed mid-write never leaves a half-written file behind. A path
no file can be written at (an existing folder, a parent that cannot be created) is one
:class:`OutputPathError` naming it, raised before anything is written; commands call
:func:`check_output` on their output paths before their work, so a typo costs no time.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


class OutputPathError(ValueError):
    """A path no output can be written at: one line naming it."""


def check_output(path: str | Path, flag: str | None = None, folder: bool = False) -> Path:
    """``path`` if a file (``folder``: a folder) can be written there, creating nothing.

    An existing folder where a file goes (or a file where a folder goes), or a parent folder
    that cannot be created (an ancestor is a file, or not writable) raises
    :class:`OutputPathError` naming ``flag`` (when given) and the path.
    """
    path = Path(path)
    where = f"{flag}: {path}" if flag else str(path)
    try:
        if not folder and path.is_dir():
            raise OutputPathError(f"{where}: is a folder; give the path of a file to write")
        if folder and (path.exists() or path.is_symlink()) and not path.is_dir():
            raise OutputPathError(f"{where}: exists and is not a folder; give the path of a "
                                  f"folder to write")
        ancestor = next((p for p in (path.parent, *path.parent.parents)
                         if p.exists() or p.is_symlink()), path.parent)
    except OSError as exc:
        raise OutputPathError(f"{where}: cannot be checked ({exc.strerror or exc})") from None
    if not ancestor.is_dir():
        raise OutputPathError(f"{where}: cannot be created, {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{where}: cannot write in {ancestor} (permission denied)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic. On
    any exception the temporary file is removed and ``path`` keeps its previous content. Only
    SIGKILL (or a power cut) can leave one behind: it is named ``.<name>.<pid>.<random>.tmp``,
    never a name a reader looks for, and the next write of ``path`` deletes it once its
    process is gone. A ``path`` no file can be written at raises :class:`OutputPathError`
    (:func:`check_output`).
    """
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the umask),
    # so reports stay readable to the other users of a shared machine
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of ``path`` left by writers that no longer run."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` (``np.load`` reads it; no pickles) whose bytes depend on the
    arrays alone.

    ``np.savez`` stamps the current time into each zip member, so equal arrays would give new
    bytes on every run and DVC would rerun every stage below; a fixed stamp avoids that.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The JSON value in file ``path``. A missing, unreadable or non-JSON file raises ``error``
    with one line naming it."""
    try:
        return json.loads(Path(path).read_bytes())  # UTF-8, or the UTF-16/32 JSON allows
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: not readable ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not JSON (not UTF-8 text)") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise error(f"{path}: not JSON ({' '.join(str(exc).split())[:200]})") from None


# JSON's words for the Python types json.loads gives
JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
              int: "an integer", float: "a number", type(None): "null"}


def json_at(obj: Any, where: str, *keys: str, kind: type | tuple[type, ...] = dict,
            error: type[Exception] = ValueError) -> Any:
    """``obj[key1][key2]...`` of JSON read from a file, each step an object and the last a
    ``kind``; None where a key is absent or null. Another shape raises ``error`` naming the
    place, ``where`` (the file, or a place in it) followed by the keys."""
    for key in keys:
        if not isinstance(obj, dict):
            raise error(f"{where}: expected an object, found {JSON_TYPES.get(type(obj))}")
        obj, where = obj.get(key), f"{where}.{key}"
        if obj is None:
            return None
    if not isinstance(obj, kind):
        expected = " or ".join(JSON_TYPES.get(k, k.__name__) for k in
                               (kind if isinstance(kind, tuple) else (kind,)))
        raise error(f"{where}: expected {expected}, found {JSON_TYPES.get(type(obj))}")
    return obj


def read_npz(path: str | Path, missing: str, error: type[Exception] = ValueError
             ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles). A missing file raises ``error`` with
    ``missing`` (what to run); an unreadable one raises ``error`` naming the file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise error(f"{path}: not found; {missing}") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # np.load on a corrupt file
        raise error(f"{path}: not a readable .npz file ({exc})") from None


def try_lock(path: str | Path) -> int | None:
    """An open descriptor holding ``path``'s exclusive lock (created if absent), or None if
    another open file holds it. Closing the descriptor, or the process ending, releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
