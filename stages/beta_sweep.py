"""DVC stage beta-sweep@<beta>: one beta of recipe 002's study, its GIF, history and table row.

    python stages/beta_sweep.py --beta 0.5 --data data/processed/fashion-mnist \
        --checkpoint models/sweep/beta_0.5.pt --history reports/sweep/beta_0.5/history.csv \
        --gif reports/sweep/beta_0.5/latent.gif --metrics reports/sweep/beta_0.5/metrics.json

The beta comes from the command line (DVC's matrix value), never from params.yaml, so adding
a beta to ``sweep.betas`` changes no other beta's stage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vaepipe import runtime
from vaepipe.config import ConfigError, check_batch_size, load_params, to_dict
from vaepipe.data.arrays import load_splits, read_class_names, split_file
from vaepipe.data.names import resolve_classes
from vaepipe.figures.animation import render_gif
from vaepipe.io import check_output, write_json
from vaepipe.models.vae import build_model
from vaepipe.sweep.frames import FrameRecorder, frame_steps, probe_indices, strip_pixels
from vaepipe.sweep.study import KIND, measure, select_classes, train_config
from vaepipe.train.checkpoints import save_checkpoint
from vaepipe.train.device import DeviceError, resolve_device
from vaepipe.train.loop import fit, write_history
from vaepipe.train.errors import TrainingDiverged
from vaepipe.train.resume import Resume

PROBE_PER_CLASS = 200  # test images per class drawn in every GIF frame
STRIP = 10             # of them, shown as originals over reconstructions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train and measure one beta of the sweep (a DVC stage).")
    ap.add_argument("--beta", required=True, type=float)
    ap.add_argument("--data", required=True, type=Path, help="directory of train/val/test .npz")
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--history", required=True, type=Path)
    ap.add_argument("--gif", required=True, type=Path)
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        for flag in ("checkpoint", "history", "gif", "metrics"):
            check_output(getattr(args, flag), f"--{flag}")
        params = load_params(args.params)
        device = resolve_device(params.device)
        sweep = params.sweep
        names = read_class_names(args.data)
        classes = resolve_classes(sweep.classes, names, str(args.data))
        train, val, test = load_splits(args.data, "train", "val", "test")
        train_x, train_y = select_classes(*train, classes)
        val_x, _ = select_classes(*val, classes)
        test_x, test_y = select_classes(*test, classes)
        probe = probe_indices(test_y, classes, PROBE_PER_CLASS)
        check_batch_size("sweep.batch_size", sweep.batch_size, len(train_x))
    except (ConfigError, DeviceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not np.isfinite(args.beta) or args.beta < 0:
        print(f"error: --beta must be a finite number >= 0, got {args.beta}", file=sys.stderr)
        return 2

    cfg = train_config(sweep)
    torch.manual_seed(sweep.seed)
    model = build_model(KIND, image_shape=tuple(train_x.shape[1:]), latent_dim=sweep.latent_dim,
                        channels=sweep.channels).to(device)
    test_t = torch.as_tensor(test_x).to(device)
    batches = -(-len(train_x) // cfg.batch_size)
    recorder = FrameRecorder(test_t[probe], test_t[probe[:STRIP]],
                             frame_steps(cfg.epochs * batches, sweep.gif_frames), batches)
    recorder.start(model)
    meta = {"params": {"device": params.device, "beta": args.beta,
                       "data": {"dataset": params.data.dataset},
                       "sweep": {k: v for k, v in to_dict(sweep).items() if k != "betas"}}}
    resume = Resume(f"beta-sweep@{args.beta}", {**meta["params"], "args": vars(args)},
                    [split_file(args.data, n) for n in ("train", "val", "test")])
    resume.attach("frames", recorder.state, recorder.load_state)
    try:
        # the history after every epoch, for `dvc plots show` while the sweep runs
        result = fit(model, train_x, val_x, cfg, args.beta, sweep.seed, device,
                     on_batch=recorder, on_epoch=lambda done: write_history(args.history, done),
                     resume=resume)
    except TrainingDiverged as exc:
        resume.finish()
        print(f"error: {exc}", file=sys.stderr)
        return 1

    metrics = {"beta": args.beta, "epochs": cfg.epochs,
               **measure(model, args.beta, sweep.seed, torch.as_tensor(train_x).to(device),
                         train_y, test_t, test_y)}
    # timings only in metrics.json: the same weights must give the same checkpoint bytes
    save_checkpoint(args.checkpoint, model, {"epoch": cfg.epochs, "metrics": metrics, **meta})
    metrics["train_seconds"] = result.train_seconds

    start = time.perf_counter()
    class_names = [names[c] for c in classes]
    render_gif(args.gif, recorder.frames, test_y[probe], classes, class_names,
               strip_pixels(test_x[probe[:STRIP]]), f"beta = {args.beta:g}", cfg.epochs, batches)
    metrics["render_seconds"] = time.perf_counter() - start
    write_json(args.metrics, metrics)
    resume.finish()
    print(f"beta {args.beta:g}: test recon {metrics['test_recon']:.2f}, KL "
          f"{metrics['test_kl']:.2f}; {result.train_seconds:.0f} s training, "
          f"{metrics['render_seconds']:.1f} s for {len(recorder.frames)} GIF frames")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
