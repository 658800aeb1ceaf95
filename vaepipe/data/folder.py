"""A folder of images as a dataset (``data.dataset: folder``): its classes, its files, one array.

The folder is laid out as torchvision's ``ImageFolder`` expects, ``<class>/<image>`` (images may
sit deeper inside a class folder), or is flat: images only, one class named after the folder.
Every file is listed in the manifest: used (relative path, class, size, sha256) or skipped, with
why. Skipped: hidden files, files that are not images by their extension (torchvision's
``IMG_EXTENSIONS``), images Pillow cannot read (truncated, corrupt) or of more pixels than its
decompression-bomb limit, pipes and other files that are not regular files, sub-folders that
cannot be read, files beside class folders, and symlinks that point outside the folder (never
followed). Images are decoded by
:func:`vaepipe.data.images.load_image`, the same way the sampling command reads them; their
original sizes and modes are counted in the manifest.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from vaepipe.data.arrays import INGESTED_FILE, MANIFEST_FILE, save_arrays
from vaepipe.data.catalog import DataError
from vaepipe.data.images import ImageInputError, image_header, is_image_file, load_image
from vaepipe.data.sources import replace_dir
from vaepipe.io import check_output, write_json

# Pillow modes that hold one grey level per pixel; any other mode counts as colour
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _outside(path: Path, root: Path) -> bool:
    """True for a symlink whose target (resolved) is not inside ``root`` (resolved)."""
    return path.is_symlink() and not path.resolve().is_relative_to(root)


def _entries(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """What ``folder`` holds, sorted; a folder that cannot be listed goes into ``skipped``."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        skipped.append((folder, f"a folder that cannot be read ({exc.strerror or exc})"))
        return []


def _walk(folder: Path, root: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """The candidate image files under ``folder``, sorted, recursing; the others into
    ``skipped`` with the reason. Symlinks are checked before anything reads through them."""
    found: list[Path] = []
    for entry in _entries(folder, skipped):
        if _outside(entry, root):
            skipped.append((entry, "a symlink to a place outside the folder (not followed)"))
        elif entry.name.startswith("."):
            skipped.append((entry, "hidden"))
        elif entry.is_symlink() and entry.is_dir():
            skipped.append((entry, "a symlink to a folder (not followed)"))
        elif entry.is_dir():
            found += _walk(entry, root, skipped)
        elif not entry.exists():
            skipped.append((entry, "a broken symlink"))
        elif not entry.is_file():  # reading a pipe would wait for a writer forever
            skipped.append((entry, "not a regular file (a pipe, socket or device)"))
        elif not is_image_file(entry):
            suffix = entry.suffix or "none"
            skipped.append((entry, f"not an image file by its extension ({suffix})"))
        else:
            found.append(entry)
    return found


def scan_folder(root: str | Path
                ) -> tuple[list[str], str, list[tuple[Path, int]], list[tuple[Path, str]]]:
    """The classes of folder ``root``, its layout ("classes" or "flat"), its candidate images
    (path, class index) and what was skipped (path, reason).

    Class folders are the non-hidden sub-folders of ``root``, in sorted order (torchvision's
    order); with none, ``root`` itself is the one class. A missing path, a file, or a folder
    with no image file raises :class:`DataError` naming it.
    """
    given = Path(root)
    if not given.exists():
        raise DataError(f"data.path: {given}: no such folder; put the images there (and `dvc "
                        f"add` it) or set data.path to the folder that holds them")
    if not given.is_dir():
        raise DataError(f"data.path: {given}: not a folder (data.dataset: folder reads a folder "
                        f"of <class>/<image> files, or of images)")
    real = given.resolve()
    skipped: list[tuple[Path, str]] = []
    try:
        entries = sorted(given.iterdir())
    except OSError as exc:
        raise DataError(f"data.path: {given}: cannot read this folder ({exc.strerror or exc})"
                        ) from None
    top = [e for e in entries if e.is_dir() and not e.name.startswith(".")
           and not e.is_symlink()]
    if top:
        names = [d.name for d in top]
        candidates = [(f, c) for c, d in enumerate(top) for f in _walk(d, real, skipped)]
        for entry in entries:
            if entry not in top and not (entry.is_dir() and entry.name.startswith(".")):
                reason = ("a symlink (class folders must be real folders)" if entry.is_dir()
                          else "beside the class folders, in no class")
                skipped.append((entry, reason))
    else:
        names = [real.name]
        candidates = [(f, 0) for f in _walk(given, real, skipped)]
    if not candidates:
        raise DataError(f"data.path: {given}: no image files in this folder (extensions: "
                        f"{', '.join(IMG_EXTENSIONS)}; {len(skipped)} other entries)")
    return names, "classes" if top else "flat", candidates, skipped


def _decode_all(given: Path, names: list[str], headers: list, channels: int, image_size: int,
                skipped: list[tuple[Path, str]]) -> tuple[list, list[int], list[dict]]:
    """The decoded images, their labels and manifest entries; unusable ones into ``skipped``."""
    images, labels, used = [], [], []
    for path, label, mode, size in headers:
        try:
            images.append(load_image(path, channels, (image_size, image_size)))
        except ImageInputError as exc:  # a header that reads, pixels that do not: truncated
            skipped.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        data = path.read_bytes()
        labels.append(label)
        used.append({"path": path.relative_to(given).as_posix(), "class": names[label],
                     "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                     "mode": mode, "size": f"{size[0]}x{size[1]}"})
    return images, labels, used


def ingest_folder(root: str | Path, dest: str | Path, image_size: int,
                  channels: int | str = "auto") -> dict[str, Any]:
    """Decode folder ``root`` into ``dest/images.npz`` (uint8 (N, C, S, S), labels int64) and
    ``dest/manifest.json``; returns the manifest.

    ``channels`` is 1, 3 or ``"auto"`` (3 if any readable image has a colour mode). ``dest``
    is replaced whole once both files are written; on an error it keeps what it held. A
    ``dest`` that is a file, or whose parent cannot be created, raises
    :class:`vaepipe.io.OutputPathError` before anything is read.
    """
    given = Path(root)
    check_output(dest, folder=True)
    names, layout, candidates, skipped = scan_folder(given)
    headers: list[tuple[Path, int, str, tuple[int, int]]] = []
    for path, label in candidates:
        try:
            headers.append((path, label, *image_header(path)))
        except ImageInputError as exc:
            skipped.append((path, str(exc).removeprefix(f"{path}: ")))
    resolved = channels if channels != "auto" else \
        (3 if any(mode not in GREY_MODES for _, _, mode, _ in headers) else 1)
    images, labels, used = _decode_all(given, names, headers, resolved, image_size, skipped)
    if not used:
        raise DataError(f"data.path: {given}: none of its {len(candidates)} image files could "
                        f"be read (last: {skipped[-1][0]}: {skipped[-1][1]})")
    manifest = {
        "path": str(root), "layout": layout, "class_names": names, "image_size": image_size,
        "channels": resolved,
        "channels_param": channels,
        "counts": {"used": len(used), "skipped": len(skipped),
                   "per_class": {n: int(k) for n, k in
                                 zip(names, np.bincount(labels, minlength=len(names)))},
                   # what the images were before conversion: mixed modes and sizes are counted
                   "modes": dict(sorted(Counter(u["mode"] for u in used).items())),
                   "sizes": dict(sorted(Counter(u["size"] for u in used).items()))},
        "files": used,
        "skipped": sorted(({"path": p.relative_to(given).as_posix(), "reason": r}
                           for p, r in skipped), key=lambda e: e["path"]),
    }
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.ingest-", dir=dest.parent))
    try:
        save_arrays(work / "new" / INGESTED_FILE, np.stack(images), np.asarray(labels, np.int64))
        write_json(work / "new" / MANIFEST_FILE, manifest)
        replace_dir(work / "new", dest, work / "previous")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest
