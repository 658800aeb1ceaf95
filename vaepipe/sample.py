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
Size-like flags are bounded (:data:`LIMITS`) so that a typo of a few zeros is refused at once
instead of running for hours or exhausting memory; ``--out`` is checked before any work.
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
from vaepipe.io import OutputPathError, check_output, write_bytes, write_npz
from vaepipe.models.batches import device_of, encode
from vaepipe.train.checkpoints import CheckpointError, load_checkpoint
from vaepipe.train.device import DeviceError, resolve_device

BATCH = 250
# each bounded flag: least, most, and why the most (shown in --help and in the error)
LIMITS = {
    "n": (1, 10_000, "a 100 x 100 grid: about 20 s on one CPU core and a 100 MB PNG at "
                     "64 x 64 RGB"),
    "cols": (1, 1_000, "a row of 1,000 images is already 66,000 pixels wide at 64 px"),
    "steps": (2, 1_000, "one row of 1,002 images, 66,000 pixels wide at 64 px"),
    "seed": (-2 ** 63, 2 ** 64 - 1, "the seeds torch.Generator takes"),
}


def png_bytes(tiles: np.ndarray) -> bytes:
    """(rows, cols, C, H, W) images in [0, 1] as one PNG (grey or RGB), white gaps between."""
    pixels = np.round(mosaic(tiles) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def prior(model, n: int, cols: int, seed: int) -> np.ndarray:
    """``n`` mean images decoded from z ~ p(z), the model's prior, drawn on the CPU with
    ``seed``: (rows, cols, C, H, W), the same on every device."""
    z = model.sample_prior(n, torch.Generator().manual_seed(seed))
    return as_grid(decode_images(model, z.numpy(), BATCH), cols)


def _bounded(name: str) -> str:
    least, most, why = LIMITS[name]
    return f"{least:,} to {most:,}: {why}"


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
    for path in (a, b):
        if Path(path).is_dir():
            raise ImageInputError(f"{path}: is a folder; interpolate takes two image files")
    images, _ = _inputs(model, [a, b])
    mu, _ = _latents(model, images)
    _, z = interpolation_latents(mu[0], mu[1], steps)
    walk = decode_images(model, z, BATCH)
    ends = images.astype(np.float32) / 255.0
    return np.concatenate([ends[:1], walk, ends[1:]])[None]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vaepipe.sample",
                                 description="Use a trained VAE checkpoint.")
    ap.add_argument("checkpoint", type=Path, help="a VAE checkpoint, e.g. models/conv/best.pt")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda | mps (default cpu)")
    sub = ap.add_subparsers(dest="command", required=True)
    cols = dict(type=int, default=8, help=f"images a row (default 8; {_bounded('cols')})")
    p = sub.add_parser("prior", help="a grid of images decoded from the prior (PNG)")
    p.add_argument("--n", type=int, default=64, help=f"images (default 64; {_bounded('n')})")
    p.add_argument("--cols", **cols)
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default 0)")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("reconstruct", help="images above their reconstructions (PNG)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--cols", **cols)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("encode", help="latent means and log-variances of images (.npz)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("interpolate", help="a walk between two images' latent means (PNG)")
    p.add_argument("a", help="an image file")
    p.add_argument("b", help="an image file")
    p.add_argument("--steps", type=int, default=10,
                   help=f"decoded steps between them (default 10; {_bounded('steps')})")
    p.add_argument("--out", type=Path, required=True)
    return ap


def out_of_range(args: argparse.Namespace) -> str | None:
    """The first bounded flag outside its range, said in one line; None when all are inside."""
    for name, (least, most, why) in LIMITS.items():
        value = getattr(args, name, None)
        if value is not None and not least <= value <= most:
            return f"--{name} must be from {least:,} to {most:,} ({why}), got {value:,}"
    return None


def _model(args: argparse.Namespace):
    model, _ = load_checkpoint(args.checkpoint, resolve_device(args.device))
    if model.image_shape[0] not in (1, 3):
        raise CheckpointError(f"{args.checkpoint}: a model of {model.image_shape[0]}-channel "
                              f"images; this command reads and draws 1 (grey) or 3 (RGB)")
    return model


def _result(model, args: argparse.Namespace) -> bytes | dict:
    if args.command == "prior":
        return png_bytes(prior(model, args.n, args.cols, args.seed))
    if args.command == "reconstruct":
        return png_bytes(reconstruct(model, args.images, args.cols))
    if args.command == "interpolate":
        return png_bytes(interpolate(model, args.a, args.b, args.steps))
    images, files = _inputs(model, args.images)
    mu, logvar = _latents(model, images)
    return {"mu": mu, "logvar": logvar, "files": np.array([str(f) for f in files])}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if (problem := out_of_range(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        check_output(args.out, "--out")
        out = _result(_model(args), args)
        if isinstance(out, dict):
            write_npz(args.out, out)
        else:
            write_bytes(args.out, out)
    except (CheckpointError, DeviceError, ImageInputError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.command}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
