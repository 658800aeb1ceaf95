"""DVC stage evaluate: every measure of every VAE checkpoint on the test set.

    python stages/evaluate.py --data data/processed/fashion-mnist --models models \
        --classifier models/classifier.pt --arrays data/evaluate \
        --metrics reports/evaluate.json --details reports/evaluate_details.json \
        --summary reports/evaluation.md

Writes ``<metrics>`` (``<model>.<checkpoint>.<metric>`` plus a ``reference`` block, numbers
only), ``<details>`` (per-dimension lists, timings), ``<summary>`` (markdown) and
``<arrays>/<model>/<checkpoint>.npz`` (latent means, samples, reconstructions, frozen-latent
images) for the figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params, to_dict
from vaepipe.data.arrays import load_split
from vaepipe.data.baselines import read_baselines
from vaepipe.data.names import dataset_label
from vaepipe.evaluate.classifier import load_classifier
from vaepipe.evaluate.evaluation import build_reference, evaluate_checkpoint, same_weights
from vaepipe.evaluate.summary import summary_markdown
from vaepipe.io import check_output, write_json, write_npz, write_text
from vaepipe.models.vae import MODELS
from vaepipe.train.checkpoints import (CHECKPOINTS, CheckpointError, load_checkpoint,
                                       trained_pixels)
from vaepipe.train.device import DeviceError, device_name, resolve_device


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate every VAE checkpoint (a DVC stage).")
    ap.add_argument("--data", required=True, type=Path, help="directory of train/val/test .npz")
    ap.add_argument("--models", required=True, type=Path, help="holds <model>/<checkpoint>.pt")
    ap.add_argument("--classifier", required=True, type=Path)
    ap.add_argument("--arrays", required=True, type=Path, help="writes <model>/<checkpoint>.npz")
    ap.add_argument("--metrics", required=True, type=Path)
    ap.add_argument("--details", required=True, type=Path)
    ap.add_argument("--summary", required=True, type=Path)
    ap.add_argument("--baselines", required=True, type=Path,
                    help="the codec and histogram rates of the test set (the split stage's)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:  # everything that can be wrong with the inputs, before any work
        check_output(args.arrays, "--arrays", folder=True)
        for flag in ("metrics", "details", "summary"):
            check_output(getattr(args, flag), f"--{flag}")
        params = load_params(args.params)
        device = resolve_device(params.device)
        splits = {name: load_split(args.data, name) for name in ("train", "val", "test")}
        classifier, clf_ckpt = load_classifier(args.classifier, device)
        baselines = read_baselines(args.baselines)
        models = {kind: {ckpt: load_checkpoint(args.models / kind / f"{ckpt}.pt", device)
                         for ckpt in CHECKPOINTS} for kind in MODELS}
    except (ConfigError, DeviceError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    cfg, seed = params.evaluate, params.seed
    ref = build_reference(splits["train"], splits["val"], splits["test"], classifier, cfg, seed,
                          device, params.data.binarize_seed)
    metrics: dict = {}
    details: dict = {"reference_seconds": time.perf_counter() - start}
    for kind, by_ckpt in models.items():
        done: dict = {}
        for name, (model, ckpt) in by_ckpt.items():
            # the same weights (best.pt is final.pt when the last epoch is best) see the same
            # seeded noise, so their numbers are equal: computed once; the literature's test
            # NLL where asked for, on the best checkpoint only
            k = cfg.nll_samples.get(kind, 0) if name == "best" else 0
            twin = next((other for other in done if same_weights(by_ckpt[other][0], model)
                         and (not k or "test_nll" in done[other].metrics)), None)
            if twin is not None:
                result = done[twin]
            else:
                result = evaluate_checkpoint(model, ref, classifier, cfg, seed,
                                             trained_pixels(ckpt), k)
                done[name] = result
            metrics.setdefault(kind, {})[name] = result.metrics
            details.setdefault(kind, {})[name] = {"epoch": ckpt["epoch"], "same_weights_as": twin,
                                                  **result.details}
            write_npz(args.arrays / kind / f"{name}.npz", result.arrays)
            rate = result.metrics.get("bpd_8bit")
            print(f"{kind}/{name}: "
                  + (f"8-bit {rate:.3f} bits/dim, " if rate is not None else "binarized, ")
                  + f"nelbo {result.metrics['nelbo']:.2f}, iwae "
                  f"{result.metrics['iwae_nll']:.2f}, "
                  + (f"test nll {result.metrics['test_nll']:.2f} "
                     f"(K={cfg.nll_samples[kind]}), " if "test_nll" in result.metrics else "")
                  + (f"fid {result.metrics['fid']:.2f}, " if classifier is not None else "")
                  + f"{sum(result.details['seconds'].values()):.1f} s")
    metrics["reference"] = ref.numbers
    details["params"] = {"seed": seed, "evaluate": to_dict(cfg)}
    details["device"], details["threads"] = device_name(device), torch.get_num_threads()
    details["total_seconds"] = time.perf_counter() - start

    clf = ({"skipped": clf_ckpt["skipped"]} if classifier is None else
           {**clf_ckpt["metrics"], **clf_ckpt["model_args"], "epochs": clf_ckpt["epochs"]})
    # a two-level model's latent measures are its top level's
    dims = {kind: (f"{m.latent_dim} per level, 2 levels; latent measures of z2"
                   if m.levels == 2 else m.latent_dim)
            for kind, by_ckpt in models.items() for m in [by_ckpt["best"][0]]}
    likelihoods = {kind: by_ckpt["best"][0].likelihood for kind, by_ckpt in models.items()}
    summary = summary_markdown({k: metrics[k] for k in MODELS}, ref.numbers, clf, cfg, seed,
                               dataset_label(params.data), dims, baselines, likelihoods)
    write_json(args.metrics, metrics)
    write_json(args.details, details)
    write_text(args.summary, summary)
    print(f"evaluate: {len(MODELS) * len(CHECKPOINTS)} checkpoints in "
          f"{details['total_seconds']:.0f} s on {device}")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
