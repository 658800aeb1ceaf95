"""The official download of a dataset's archives, and the records of what a source provides.

:func:`download_archives` fetches every upstream archive with torchvision's helpers (checked
against the archive's md5); :mod:`vaepipe.data.sources` tries it after the local sources and
verifies what any source provided the same way.
"""
from __future__ import annotations

import contextlib
import http.client
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from vaepipe.data.catalog import CIFAR_DIR, DataFormatError, DatasetSpec


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


@dataclass(frozen=True)
class Expectations:
    raw_md5: Mapping[str, str] | None
    archive_md5: Mapping[str, str]
    official_counts: bool


def tar_items(archive: Path, source: str, names: Sequence[str]) -> list[RawItem]:
    """Items for raw files ``names`` held in the CIFAR-10 tarball ``archive``."""
    return [RawItem(n, archive, "tar", source, member=f"{CIFAR_DIR}/{n}") for n in names]


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation: torchvision's downloader takes no timeout of its own, and
    without one an unresponsive host could hang the stage forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_archives(spec: DatasetSpec, base_url: str, download_dir: Path,
                      expect: Expectations, timeout: float) -> list[RawItem]:
    """Download every upstream archive from ``base_url`` with torchvision's helpers.

    An unreachable URL raises :class:`Unavailable`, a download whose md5 differs from the
    upstream archive's raises :class:`DataFormatError`; both name the URL.
    """
    # imported here: torchvision pulls in torch, which costs seconds at every stage start
    from torchvision.datasets.utils import calculate_md5, check_integrity, download_url

    items: list[RawItem] = []
    for archive in spec.archives:
        url = base_url.rstrip("/") + "/" + archive
        md5 = expect.archive_md5.get(archive)
        target = download_dir / archive
        try:
            with socket_timeout(timeout):
                download_url(url, str(download_dir), archive, md5=md5)
        except RuntimeError as exc:  # download_url's "File not found or corrupted."
            if md5 is not None and target.is_file() and not check_integrity(str(target), md5):
                raise DataFormatError(f"{url}: md5 of the download is "
                                      f"{calculate_md5(str(target))}, expected {md5}") from None
            raise Unavailable(f"{url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise Unavailable(f"{url}: {exc}") from None
        if spec.format == "idx":
            items.append(RawItem(archive[:-len(".gz")], target, "gunzip", url))
        else:
            items += tar_items(target, url, spec.raw_files)
    return items
