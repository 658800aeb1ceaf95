"""DVC stage train-classifier: the CNN whose features define FID and precision/recall.

    python stages/train_classifier.py --data data/processed/fashion-mnist \
        --out models/classifier.pt --metrics reports/classifier.json

Reads only ``device`` and ``classifier.*`` (never ``seed``, ``beta`` or a VAE's params), so an
experiment on the VAEs, or a seed replicate of them, reuses the cached classifier.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params, to_dict
from vaepipe.data.arrays import load_splits, read_class_names, split_file
from vaepipe.evaluate.classifier import (ONE_CLASS, Classifier, accuracy, save_no_classifier,
                                         train_classifier)
from vaepipe.io import check_output, write_json
from vaepipe.train.checkpoints import save_checkpoint
from vaepipe.train.device import DeviceError, device_name, resolve_device
from vaepipe.train.errors import TrainingDiverged
from vaepipe.train.resume import Resume


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Train the FID feature classifier (a DVC stage).")
    ap.add_argument("--data", required=True, type=Path, help="directory of train/val/test .npz")
    ap.add_argument("--out", required=True, type=Path, help="the checkpoint to write")
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        for flag in ("out", "metrics"):
            check_output(getattr(args, flag), f"--{flag}")
        params = load_params(args.params)
        device = resolve_device(params.device)
        splits = dict(zip(("train", "val", "test"),
                          load_splits(args.data, "train", "val", "test")))
        cfg = params.classifier
        train_x, train_y = splits["train"]
        torch.manual_seed(cfg.seed)  # the initial weights
        classes = len(read_class_names(args.data))
        # built for one class too, so a classifier.channels the images cannot take is an error
        model = Classifier(tuple(train_x.shape[1:]), max(classes, 2), cfg.channels,
                           cfg.features)
    except (ConfigError, DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if classes < 2:
        save_no_classifier(args.out, ONE_CLASS)
        write_json(args.metrics, {"classes": classes, "skipped": ONE_CLASS})
        print(f"classifier: none ({ONE_CLASS})")
        return 0

    resume = Resume("train-classifier", {"device": params.device,
                                         "classifier": to_dict(cfg), "args": vars(args)},
                    [split_file(args.data, name) for name in ("train", "val", "test")])
    try:
        history = train_classifier(model, train_x, train_y, cfg.epochs, cfg.batch_size, cfg.lr,
                                   cfg.weight_decay, cfg.seed, device, resume=resume)
    except ConfigError as exc:  # classifier.batch_size over the training set: before any step
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        resume.finish()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = sum(h["seconds"] for h in history)
    metrics = {
        "test_accuracy": accuracy(model, *splits["test"], device),
        "val_accuracy": accuracy(model, *splits["val"], device),
        "train_accuracy": history[-1]["train_accuracy"],
        "epochs": cfg.epochs,
        "train_seconds": seconds,
        "images_per_second": cfg.epochs * len(train_x) / seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    # no wall-clock seconds in the checkpoint: the same weights must give the same bytes (and
    # DVC hash), or every rerun looks like a new classifier to evaluate (they are in metrics)
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    meta = {"epochs": cfg.epochs, "history": untimed,
            "metrics": {k: v for k, v in metrics.items() if k.endswith("accuracy")},
            "params": {"device": params.device,
                       "classifier": to_dict(cfg)}}
    save_checkpoint(args.out, model, meta)
    write_json(args.metrics, metrics)
    resume.finish()
    print(f"classifier: test accuracy {metrics['test_accuracy']:.4f} after {cfg.epochs} epochs, "
          f"{seconds:.0f} s on {device}")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
