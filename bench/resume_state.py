"""What saving a training's resume state costs: its size and the seconds of one save, for the
default MLP and conv models, against their seconds per epoch.

    python bench/resume_state.py                       # epoch seconds: --history files below
    python bench/resume_state.py --history reports/train/mlp_history.csv \
        --history reports/train/conv_history.csv

The state is the one ``fit`` saves after an epoch (weights, Adam's moments after real steps,
generators, a 50-epoch history, the epoch_01 and best checkpoints), written the same way
(atomically, fsynced) into a temporary ``VAEPIPE_RESUME_DIR``; the median of five saves.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from vaepipe.config import Params
from vaepipe.models.vae import build_model, model_args
from vaepipe.train.checkpoints import save_checkpoint
from vaepipe.train.loop import FitResult, fit_state, make_optimizer
from vaepipe.train.objective import vae_loss
from vaepipe.train.resume import RESUME_ENV, Resume


def measure(kind: str, folder: Path) -> tuple[float, float]:
    """(megabytes, median seconds) of one resume-state save of the default ``kind``."""
    params = Params()
    section = getattr(params, kind)
    torch.manual_seed(0)
    model = build_model(kind, image_shape=(1, 28, 28), **model_args(kind, section))
    opt = make_optimizer(section, model.parameters())
    x = torch.rand(section.batch_size, 1, 28, 28)
    for _ in range(3):  # Adam's moments exist after a step
        out, mu, logvar, z = model(x)
        opt.zero_grad()
        vae_loss(model, x, out, mu, logvar, z).loss.backward()
        opt.step()
    written = [folder / f"{kind}-{name}.pt" for name in ("epoch_01", "best")]
    for path in written:
        save_checkpoint(path, model, {"epoch": 1})
    row = {k: 1.0 for k in ("epoch", "beta", "lr", "train_loss", "val_nelbo", "seconds")}
    result = FitResult([row] * 50, 50, {"val_loss": 1.0})
    inputs = folder / "inputs.bin"
    inputs.write_bytes(b"x")
    resume = Resume(f"bench-{kind}", {}, [inputs], log=lambda line: None)
    resume.load()
    gen = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        resume.save(1, 50, fit_state(model, opt, gen, result, written))
        seconds.append(time.perf_counter() - start)
    size = resume.path.stat().st_size / 2**20
    resume.finish()
    return size, statistics.median(seconds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", action="append", type=Path, default=[],
                    help="a training's history CSV (its median epoch seconds), one per kind")
    args = ap.parse_args(argv)
    epoch_seconds = {p.name.split("_")[0]: float(pd.read_csv(p)["seconds"].median())
                     for p in args.history}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[RESUME_ENV] = str(Path(tmp) / "states")
        for kind in ("mlp", "conv"):
            size, seconds = measure(kind, Path(tmp))
            line = f"{kind}: state {size:.1f} MiB, saved in {seconds * 1000:.0f} ms"
            if kind in epoch_seconds:
                share = 100 * seconds / epoch_seconds[kind]
                line += f" = {share:.2f} % of a {epoch_seconds[kind]:.1f} s epoch"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
