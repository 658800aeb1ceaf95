"""Where raw files come from (mirror, standard place, official download) and how they are verified.

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

import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import IO, Mapping, Sequence

from vaepipe.data.catalog import DataError, DataFormatError, DataSourceError, DatasetSpec, get_spec
from vaepipe.data.download import Expectations, download_archives
from vaepipe.data.formats import RawItem, Unavailable, format_of

logger = logging.getLogger(__name__)

EXPECTED_MD5_ENV = "VAEPIPE_EXPECTED_MD5"


# --------------------------------------------------------------------------------------------
# Fetching


def _expectations(spec: DatasetSpec, expected_md5: Mapping[str, str] | None) -> Expectations:
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
        return Expectations(spec.raw_md5, spec.archives, official_counts=True)
    raw_files = format_of(spec).raw_files
    missing = [n for n in raw_files if n not in expected_md5]
    if missing:
        raise DataError(f"{origin} has no md5 for {', '.join(missing)}")
    return Expectations(
        raw_md5={n: expected_md5[n] for n in raw_files},
        archive_md5={a: expected_md5[a] for a in spec.archives if a in expected_md5},
        official_counts=False)


def _plan_local(spec: DatasetSpec, src: Path) -> list[RawItem]:
    """Find each raw file in directory ``src``, as its format stores it.

    Raises :class:`Unavailable` when the directory or every dataset file is absent, and
    :class:`DataFormatError` when only some are there.
    """
    if not src.is_dir():
        raise Unavailable("directory does not exist" if not src.exists() else "not a directory")
    fmt = format_of(spec)
    items, missing = fmt.local_items(spec, src)
    if len(missing) == len(fmt.raw_files):
        raise Unavailable(f"no {spec.name} files in it (looked for {fmt.expected_names(spec)})")
    if missing:
        raise DataFormatError(f"{src} is incomplete: missing {', '.join(missing)} (looked for "
                              f"{fmt.expected_names(spec)})")
    return items


def _copy_hashing(src: IO[bytes], dst: Path) -> str:
    """Copy a stream into ``dst`` and return the md5 of what was written."""
    md5 = hashlib.md5(usedforsecurity=False)
    with dst.open("wb") as out:
        while chunk := src.read(1 << 20):
            md5.update(chunk)
            out.write(chunk)
    return md5.hexdigest()


def _materialize(items: Sequence[RawItem], out_dir: Path) -> dict[str, str]:
    """Write every item's decompressed content into ``out_dir``; return name -> md5.

    Unreadable sources raise :class:`DataFormatError` naming the file (e.g. a truncated gzip).
    """
    md5s: dict[str, str] = {}
    by_archive: dict[Path, list[RawItem]] = {}
    for item in items:
        if item.how == "tar":
            by_archive.setdefault(item.path, []).append(item)
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
    for wanted in by_archive.values():
        md5s.update(_extract_members(wanted, out_dir))
    return md5s


def _extract_members(wanted: Sequence[RawItem], out_dir: Path) -> dict[str, str]:
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


def _verify(spec: DatasetSpec, items: Sequence[RawItem], out_dir: Path, md5s: Mapping[str, str],
            expect: Expectations) -> None:
    """Check each staged raw file's md5 and structure; errors name the source file."""
    for item in items:
        want = expect.raw_md5.get(item.name) if expect.raw_md5 is not None else None
        if want is not None and md5s[item.name] != want:
            what = "md5" if item.how == "copy" else "md5 of the decompressed content"
            raise DataFormatError(f"{item.shown}: {what} is {md5s[item.name]}, expected {want}")
    format_of(spec).verify(spec, out_dir, {item.name: item.shown for item in items},
                           expect.official_counts)


def replace_dir(new: Path, dest: Path, parking: Path) -> None:
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
                    items = download_archives(spec, where, attempt / "download", expect, timeout)
                else:
                    items = _plan_local(spec, Path(where))
                _verify(spec, items, files, _materialize(items, files), expect)
            except Unavailable as exc:
                tried.append(f"{kind} {where}: {exc}")
                logger.info("%s %s: %s", kind, where, exc)
                shutil.rmtree(attempt)
                continue
            except (DataFormatError, OSError) as exc:  # OSError: e.g. an unreadable file
                tried.append(f"{kind} {where}: REJECTED: {exc}")
                logger.warning("%s %s rejected: %s", kind, where, exc)
                shutil.rmtree(attempt)
                continue
            replace_dir(files, dest, work / "previous")
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
    fixes.append(f"put the files ({format_of(spec).expected_names(spec)}) in a directory and "
                 "set data.mirror in params.yaml to that directory")
    fixes.append("connect to the internet so the official download can run")
    return (f"could not get verified {spec.name} raw files for {dest}; tried:\n"
            + "".join(f"  - {t}\n" for t in tried)
            + "to fix it, do one of:\n" + "\n".join(f"  - {f}" for f in fixes))

