"""DVC stages train-mlp and train-conv: train one VAE kind on the split's train/val arrays.

    python stages/train.py --model mlp --data data/processed/fashion-mnist \
        --checkpoints models/mlp --metrics reports/train/mlp.json \
        --history reports/train/mlp_history.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vaepipe import runtime
from vaepipe.config import ConfigError, check_batch_size, load_params, to_dict, training_data
from vaepipe.data.arrays import load_splits, split_file
from vaepipe.io import check_output, write_json
from vaepipe.models.batches import binarize_eval_splits
from vaepipe.models.vae import MODELS, build_model, model_args
from vaepipe.train.device import DeviceError, resolve_device
from vaepipe.train.loop import fit, summarize, write_history
from vaepipe.train.errors import TrainingDiverged
from vaepipe.train.resume import Resume


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train one VAE (a DVC stage).")
    ap.add_argument("--model", required=True, choices=sorted(MODELS))
    ap.add_argument("--data", required=True, type=Path, help="directory of train/val .npz")
    ap.add_argument("--checkpoints", required=True, type=Path)
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--history", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        check_output(args.checkpoints, "--checkpoints", folder=True)
        for flag, path in (("--metrics", args.metrics), ("--history", args.history)):
            check_output(path, flag)
        params = load_params(args.params)
        device = resolve_device(params.device)
        (train_x, _), (val_x, _) = load_splits(args.data, "train", "val")
        check_batch_size(f"{args.model}.batch_size", getattr(params, args.model).batch_size,
                         len(train_x))
    except (ConfigError, DeviceError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    section = getattr(params, args.model)
    torch.manual_seed(params.seed)
    model = build_model(args.model, image_shape=tuple(train_x.shape[1:]),
                        **model_args(args.model, section))
    pixels = model.likelihood.training_pixels(params.data.dequantize, params.data.binarize)
    if pixels == "binarized":  # validated on one fixed binarization, as evaluate tests
        val_x = binarize_eval_splits(val_x, val_x[:0], params.data.binarize_seed)[0]
    # not data.mirror: the same files from another directory must give the same checkpoint
    # bytes (and DVC hashes); nor a folder's keys, unless the data is a folder
    data = training_data(params.data)
    meta = {"params": {"seed": params.seed, "beta": params.beta, "device": params.device,
                       "data": data, args.model: to_dict(section)}}

    def epoch_done(result) -> None:
        # the epochs so far, each file replaced whole: `dvc plots show` and `dvc exp show`
        # read a running experiment's progress from them
        write_history(args.history, result)
        write_json(args.metrics, summarize(result, device, model, partial=True))

    # found again by the same params, split files, code and paths only
    resume = Resume(f"train-{args.model}", {**meta["params"], "args": vars(args)},
                    [split_file(args.data, name) for name in ("train", "val")])
    try:
        result = fit(model, train_x, val_x, section, params.beta, params.seed, device,
                     checkpoint_dir=args.checkpoints, meta=meta,
                     pixels=pixels, on_epoch=epoch_done, resume=resume)
    except TrainingDiverged as exc:
        resume.finish()  # a rerun would diverge at the same step
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.metrics, summarize(result, device, model))
    resume.finish()
    print(f"{args.model}: best epoch {result.best_epoch}, validation NELBO "
          f"{result.best['val_nelbo']:.2f} nats, {result.train_seconds:.0f} s on {device}")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
