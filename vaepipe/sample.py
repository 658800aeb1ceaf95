"""Use a trained VAE from the command line: ``python -m vaepipe.sample CHECKPOINT <command>``.

    python -m vaepipe.sample models/conv/best.pt prior --n 64 --out samples.png
    python -m vaepipe.sample models/conv/best.pt reconstruct my_images/ --out recon.png
    python -m vaepipe.sample models/conv/best.pt encode a.png b.png --out latents.npz
    python -m vaepipe.sample models/conv/best.pt interpolate a.png b.png --steps 10 --out walk.png

Reads only the checkpoint (any model kind, any dataset: it describes itself) and the given
images, which are decoded the one way of :mod:`vaepipe.data.images` (EXIF orientation, alpha on
white, grey or RGB as the model's channels, centre crop, Lanczos resize to the model's size).
Images are the mean images of the model's likelihood, tiled with 2-pixel white gaps at one image
pixel per screen pixel. ``--seed`` fixes the prior draws; the same arguments give the same bytes.
Exit codes: 0 done, 2 a bad checkpoint, image or argument (one line on stderr, nothing written).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaepipe.data.images import ImageInputError, load_images
from vaepipe.figures.grids import as_grid, mosaic
from vaepipe.figures.latent import decode_images, interpolation_latents
from vaepipe.io import write_bytes, write_npz
from vaepipe.models.batches import device_of, encode
from vaepipe.train.checkpoints import CheckpointError, load_checkpoint
from vaepipe.train.device import DeviceError, resolve_device

BATCH = 250


def png_bytes(tiles: np.ndarray) -> bytes:
    """(rows, cols, C, H, W) images in [0, 1] as one PNG (grey or RGB), white gaps between."""
    pixels = np.round(mosaic(tiles) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def prior(model, n: int, cols: int, seed: int) -> np.ndarray:
    """``n`` mean images decoded from z ~ N(0, I), drawn on the CPU with ``seed``: (rows, cols,
    C, H, W), the same on every device."""
    z = torch.randn((n, model.latent_dim), generator=torch.Generator().manual_seed(seed))
    return as_grid(decode_images(model, z.numpy(), BATCH), cols)


def _inputs(model, paths) -> tuple[np.ndarray, list[Path]]:
    c, h, w = model.image_shape
    return load_images(paths, c, (h, w))


def _latents(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances (N, Z) of uint8 ``images``."""
    mu, logvar = encode(model, torch.as_tensor(images).to(device_of(model)), BATCH)
    return mu.cpu().numpy(), logvar.cpu().numpy()


def reconstruct(model, paths, cols: int) -> np.ndarray:
    """Each image above its reconstruction decode(mu): rows alternate inputs and outputs, ``cols``
    images a row."""
    images, _ = _inputs(model, paths)
    recon = decode_images(model, _latents(model, images)[0], BATCH)
    originals = as_grid(images.astype(np.float32) / 255.0, cols)
    rebuilt = as_grid(recon, cols)
    rows = np.stack([originals, rebuilt], axis=1)  # (row pairs, 2, cols, C, H, W)
    return rows.reshape(-1, *rows.shape[2:])


def interpolate(model, a, b, steps: int) -> np.ndarray:
    """One row: image ``a``, the decoded straight line between the latent means, image ``b``."""
    images, _ = _inputs(model, [a, b])
    mu, _ = _latents(model, images)
    _, z = interpolation_latents(mu[0], mu[1], steps)
    walk = decode_images(model, z, BATCH)
    ends = images.astype(np.float32) / 255.0
    return np.concatenate([ends[:1], walk, ends[1:]])[None]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vaepipe.sample",
                                 description="Use a trained VAE checkpoint.")
    ap.add_argument("checkpoint", type=Path, help="a VAE checkpoint, e.g. models/conv/best.pt")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda | mps (default cpu)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prior", help="a grid of images decoded from the prior (PNG)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("reconstruct", help="images above their reconstructions (PNG)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("encode", help="latent means and log-variances of images (.npz)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("interpolate", help="a walk between two images' latent means (PNG)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    for name, least in (("n", 1), ("cols", 1), ("steps", 2)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            print(f"error: --{name} must be >= {least}, got {value}", file=sys.stderr)
            return 2
    try:
        model, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
        if args.command == "prior":
            out = png_bytes(prior(model, args.n, args.cols, args.seed))
        elif args.command == "reconstruct":
            out = png_bytes(reconstruct(model, args.images, args.cols))
        elif args.command == "interpolate":
            out = png_bytes(interpolate(model, args.a, args.b, args.steps))
        else:
            images, files = _inputs(model, args.images)
            mu, logvar = _latents(model, images)
            out = {"mu": mu, "logvar": logvar, "files": np.array([str(f) for f in files])}
    except (CheckpointError, DeviceError, ImageInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(out, dict):
        write_npz(args.out, out)
    else:
        write_bytes(args.out, out)
    print(f"{args.command}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
