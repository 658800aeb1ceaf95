"""File output and the ``.npz`` arrays stages hand each other.

Every write is atomic: a stage killed mid-write never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic. On
    any exception the temporary file is removed and ``path`` keeps its previous content. Only
    SIGKILL (or a power cut) can leave one behind: it is named ``.<name>.<pid>.<random>.tmp``,
    never a name a reader looks for, and the next write of ``path`` deletes it once its
    process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
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
