"""The official download of a dataset's archives, and what a source is expected to provide.

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
from typing import Iterator, Mapping

from vaepipe.data.catalog import DataFormatError, DatasetSpec
from vaepipe.data.formats import RawItem, Unavailable, format_of


@dataclass(frozen=True)
class Expectations:
    raw_md5: Mapping[str, str] | None
    archive_md5: Mapping[str, str]
    official_counts: bool


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
        items += format_of(spec).archive_items(spec, archive, target, url)
    return items
