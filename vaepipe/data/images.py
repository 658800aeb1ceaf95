"""Image files as model inputs: which files count, and one deterministic way to decode them.

Files count by torchvision's image extensions (``IMG_EXTENSIONS``). Decoding is Pillow's, then
always the same steps: EXIF orientation applied, alpha composited on white, 16-bit levels scaled
to 8 bits, converted to grey (1 channel) or RGB (3), centre-cropped to a square and resized with
Lanczos to the requested size. The same file always gives the same uint8 array. A file of more
pixels than Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, about 89 million) is
refused before its pixels are decoded, like one Pillow cannot read: :class:`ImageInputError`.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS


class ImageInputError(ValueError):
    """A path that holds no usable image: one line naming it."""


# what Pillow raises on a file it cannot decode: those documented for Image.open, and the ones
# seen when decoding thousands of corrupted PNG, JPEG, TIFF, BMP, WebP and PPM files
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError,
                 Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The image files among ``paths``: files as given, folders searched recursively (sorted).

    A path that does not exist, a file that is not an image by its extension, or a folder
    holding none raises :class:`ImageInputError` naming it.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not inside:
                raise ImageInputError(f"{path}: no image files in this folder (extensions: "
                                      f"{', '.join(IMG_EXTENSIONS)})")
            found += inside
        elif path.is_file():
            if not is_image_file(path):
                raise ImageInputError(f"{path}: not an image file by its extension (allowed: "
                                      f"{', '.join(IMG_EXTENSIONS)})")
            found.append(path)
        elif path.exists():
            raise ImageInputError(f"{path}: not a regular file or folder (a pipe, socket or "
                                  f"device); give image files or folders")
        else:
            raise ImageInputError(f"{path}: no such file or folder")
    return found


def describe_error(exc: Exception) -> str:
    """Pillow's reason for refusing a file, on one short line."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer levels scaled to 0..255; everything else as it is."""
    if image.mode.startswith("I"):
        levels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if levels.max() > 255 or image.mode.startswith("I;16") else 255.0
        return Image.fromarray(np.round(levels * (255.0 / top)).clip(0, 255).astype(np.uint8))
    return image


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels composited on white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image


def _too_large(path: str | Path, pixels: str) -> ImageInputError:
    return ImageInputError(f"{path}: too large to decode ({pixels} pixels; at most "
                           f"{Image.MAX_IMAGE_PIXELS:,}, Pillow's decompression-bomb limit "
                           f"Image.MAX_IMAGE_PIXELS)")


def _refusal(path: str | Path, exc: Exception) -> ImageInputError:
    """Why Pillow refused ``path``, as one line naming it."""
    if isinstance(exc, Image.DecompressionBombError):  # over twice the limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return _too_large(path, f"{int(found[1]):,}" if found else "over twice that many")
    return ImageInputError(f"{path}: not a readable image ({describe_error(exc)})")


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Pillow's image of ``path``, its header read and its pixels not yet decoded.

    A file Pillow cannot identify, or one of more pixels than ``Image.MAX_IMAGE_PIXELS`` (Pillow
    refuses twice that and warns above it; here the limit itself is the bound) raises
    :class:`ImageInputError` naming it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            image = Image.open(path)
    except DECODE_ERRORS as exc:
        raise _refusal(path, exc) from None
    with image:
        width, height = image.size
        if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
            raise _too_large(path, f"{width} x {height} = {width * height:,}")
        yield image


def image_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """An image's Pillow mode and (width, height) from its header (no pixels decoded); an
    unusable file raises :class:`ImageInputError` as :func:`open_image` does."""
    with open_image(path) as image:
        return image.mode, image.size


def _decode(path: str | Path, channels: int) -> Image.Image:
    """The whole image of ``path``, upright, in mode L or RGB."""
    with open_image(path) as opened:
        try:
            image = ImageOps.exif_transpose(opened)
            image.load()  # a truncated file fails here, not later
            return _flatten_alpha(_to_8bit(image)).convert("L" if channels == 1 else "RGB")
        except DECODE_ERRORS as exc:
            raise _refusal(path, exc) from None


def load_image(path: str | Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (channels, height, width), ``size`` = (height, width).

    An unreadable, truncated or too large file raises :class:`ImageInputError` naming it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = _decode(path, channels)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def load_images(paths: Iterable[str | Path], channels: int, size: tuple[int, int]
                ) -> tuple[np.ndarray, list[Path]]:
    """:func:`image_files` of ``paths``, each through :func:`load_image`: (N, C, H, W) uint8
    and the files, in that order."""
    files = image_files(paths)
    return np.stack([load_image(f, channels, size) for f in files]), files
