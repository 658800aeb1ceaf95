"""A generated image folder: circles, squares and triangles drawn with Pillow, one class each.

    python tests/shapes.py data/images/shapes --per-class 300 --size 40

Each image is a filled shape of a random colour, size, position and (squares, triangles)
rotation on a background of another random colour, drawn at ``size`` pixels and saved as PNG
under ``<out>/<class>/``; ``--grey`` saves 8-bit grey images. The same arguments write the same
bytes.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw_shape(kind: str, size: int, rng: np.random.Generator, mode: str = "RGB") -> Image.Image:
    """One image of shape ``kind`` (a name of :data:`CLASSES`), ``size`` x ``size``."""
    back, fore = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(back.astype(int) - fore).sum() < 180:  # the shape stands out
        fore = rng.integers(0, 256, 3)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in back))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    colour = tuple(int(v) for v in fore)
    if kind == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        corners = 4 if kind == "square" else 3
        turn = rng.uniform(0, 2 * math.pi)
        draw.polygon([(cx + radius * math.cos(turn + 2 * math.pi * k / corners),
                       cy + radius * math.sin(turn + 2 * math.pi * k / corners))
                      for k in range(corners)], fill=colour)
    return image.convert(mode)


def write_shapes(root: str | Path, per_class: int, size: int = 40, mode: str = "RGB",
                 classes: tuple[str, ...] = CLASSES, seed: int = 0) -> list[Path]:
    """``per_class`` PNGs of each class under ``root/<class>/``; returns the files written."""
    rng = np.random.default_rng(seed)
    written = []
    for kind in classes:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{kind}_{i:04d}.png"
            draw_shape(kind, size, rng, mode).save(path)
            written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--size", type=int, default=40)
    ap.add_argument("--grey", action="store_true", help="8-bit grey images")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    files = write_shapes(args.out, args.per_class, args.size, "L" if args.grey else "RGB",
                         seed=args.seed)
    print(f"{len(files)} images in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
