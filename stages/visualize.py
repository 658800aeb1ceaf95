"""DVC stage visualize: every figure of the recipes and the report, from what earlier stages saved.

    python stages/visualize.py --data data/processed/fashion-mnist --models models \
        --evaluate data/evaluate --evaluate-json reports/evaluate.json \
        --evaluation-md reports/evaluation.md --sweep-md reports/sweep.md \
        --sweep-dir reports/sweep --train-reports reports/train \
        --figures reports/figures --report reports/report.md --html reports/report.html \
        --noise reports/noise.json --baselines reports/baselines.json
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params
from vaepipe.data.arrays import load_split, read_class_names
from vaepipe.data.baselines import read_baselines
from vaepipe.data.catalog import DataFormatError
from vaepipe.data.names import dataset_label, figure_text
from vaepipe.figures import grids, plots
from vaepipe.figures.gallery import (COMPARED, InputError, ModelRun, draw_models,
                                     load_evaluation)
from vaepipe.figures.report import (FigureEntry, RunInfo, build_markdown, changed_params,
                                    git_revision, markdown_to_html, pipeline_files)
from vaepipe.io import OutputPathError, check_output, json_at, read_json, write_text
from vaepipe.models.vae import MODELS, model_title
from vaepipe.train.checkpoints import CheckpointError, load_checkpoint

# prior-sample grid sides where a model's differ from ModelRun's: recipe 004 drew its MLP's 10x10
SAMPLE_SIDES = {"mlp": (4, 8, 10)}


def read_history(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        return {key: np.array([float(r[key]) for r in rows]) for key in rows[0]} if rows else {}
    except (OSError, csv.Error, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a training history of numbers ({exc})") from None


def read_optional(path: Path) -> str | None:
    try:
        return path.read_text() if path.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not readable text ({exc})") from None


def read_object(path: Path | None, *keys: str) -> dict | None:
    """The JSON object in file ``path`` (or at ``keys`` in it); None without such a file. A
    file that is not JSON, or holds another shape there, raises InputError naming it."""
    if path is None or not path.is_file():
        return None
    return json_at(read_json(path, InputError), str(path), *keys, error=InputError)


def read_noise(path: Path | None) -> dict | None:
    """``reports/noise.json`` as `make compare` writes it (None when absent)."""
    noise = read_object(path)
    if noise is not None:
        json_at(noise, str(path), "seeds", kind=list, error=InputError)
        for metric in json_at(noise, str(path), "metrics", error=InputError) or {}:
            spread = json_at(noise, str(path), "metrics", metric, "single_run_difference",
                             kind=(int, float), error=InputError)
            if spread is None or metric.count(".") < 2:
                raise InputError(f"{path}: metrics.{metric}: expected a key model.checkpoint."
                                 f"metric holding a number single_run_difference")
    return noise


def checkpoint_epochs(path: Path, ckpt: dict, model: str) -> tuple[int, int]:
    """The epoch a checkpoint was saved at and the epochs its training ran for."""
    epoch = json_at(ckpt, str(path), "epoch", kind=int, error=CheckpointError)
    epochs = json_at(ckpt, str(path), "params", model, "epochs", kind=int, error=CheckpointError)
    if epoch is None or epochs is None:
        raise CheckpointError(f"{path}: no epoch or params.{model}.epochs; visualize reads the "
                              f"checkpoints the train stage writes")
    return epoch, epochs


def model_runs(args: argparse.Namespace, metrics: dict, test_y: np.ndarray) -> list[tuple]:
    """Each model's (ModelRun, training report, best checkpoint), from what earlier stages
    saved; a file that does not hold what they write raises an error naming it."""
    runs = []
    for m in MODELS:
        evaluations = {c: load_evaluation(args.evaluate / m / f"{c}.npz", test_y)
                       for c in COMPARED}
        loaded = {c: load_checkpoint(args.models / m / f"{c}.pt") for c in COMPARED}
        history_path = args.train_reports / f"{m}_history.csv"
        train = read_object(args.train_reports / f"{m}.json") or {}
        runs.append((ModelRun(
            name=m, evaluations=evaluations,
            decoders={c: model for c, (model, _) in loaded.items()},
            epochs={c: checkpoint_epochs(args.models / m / f"{c}.pt", ckpt, m)[0]
                    for c, (_, ckpt) in loaded.items()},
            history=read_history(history_path) if history_path.is_file() else None,
            best_epoch=train.get("best_epoch"),
            metrics=json_at(metrics, str(args.evaluate_json), m, error=InputError) or {},
            sample_sides=SAMPLE_SIDES.get(m, ModelRun.sample_sides)),
            train, loaded["best"][1]))
    return runs


def draw_overview(histories: Mapping[str, Mapping[str, np.ndarray]], train_images: np.ndarray,
                  train_labels: np.ndarray, class_names: Sequence[str], dataset: str,
                  out_dir: str | Path) -> list[FigureEntry]:
    """Figures about the data and both models together: training images, validation NELBO."""
    out = Path(out_dir)
    drawn = []
    path = out / "training_images.png"
    grids.class_examples(train_images.astype(np.float32) / 255.0, train_labels, class_names,
                           path, f"{figure_text(dataset)}: training images, one row per class")
    drawn.append(FigureEntry(path, "Data and training", "Training images",
                             "Eight training images of each class with the class name "
                             "(recipe 002's sanity check of the loaded data)."))
    if histories:
        path = out / "val_nelbo.png"
        plots.validation_nelbo(
            {model_title(m): (h["epoch"], h["val_nelbo"]) for m, h in histories.items()},
            path, "Validation NELBO per epoch")
        drawn.append(FigureEntry(path, "Data and training", "Validation NELBO",
                                 "Validation NELBO (KL weight 1) of both models per epoch."))
    return drawn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Draw the figures and write the report (a DVC stage).")
    for name in ("data", "models", "evaluate", "evaluate-json", "evaluation-md", "sweep-md",
                 "sweep-dir", "train-reports", "figures", "report", "html"):
        ap.add_argument(f"--{name}", required=True, type=Path)
    ap.add_argument("--noise", type=Path, help="the seeds' spread, from `make compare`")
    ap.add_argument("--baselines", type=Path, help="the codecs' rates, from the split stage")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        check_output(args.figures, "--figures", folder=True)
        for flag, path in (("--report", args.report), ("--html", args.html)):
            check_output(path, flag)
        params = load_params(args.params)
        class_names = read_class_names(args.data)
        test_x, test_y = load_split(args.data, "test")
        train_x, train_y = load_split(args.data, "train")
        metrics = read_object(args.evaluate_json) or {}
        noise = read_noise(args.noise)
        baselines = read_baselines(args.baselines) if args.baselines is not None else None
        runs = model_runs(args, metrics, test_y)
        texts = read_optional(args.evaluation_md), read_optional(args.sweep_md)
    except (ConfigError, DataFormatError, InputError, CheckpointError, OutputPathError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    args.figures.mkdir(parents=True, exist_ok=True)
    for stale in args.figures.glob("*.png"):  # only this run's figures get listed
        stale.unlink()
    entries = draw_overview({r.name: r.history for r, _, _ in runs if r.history},
                            train_x, train_y, class_names, dataset_label(params.data),
                            args.figures)
    entries += draw_models([r for r, _, _ in runs], test_x, test_y, class_names,
                           params.visualize, params.seed, args.figures)

    c, h, w = test_x.shape[1:]
    revision, changed_files = git_revision(inputs=pipeline_files()[0])
    info = RunInfo(
        revision=revision, changed_files=changed_files,
        dataset=dataset_label(params.data),
        data_note=f"{len(train_x):,} training images (after the validation split), "
                  f"{len(test_x):,} test images, {c}x{h}x{w}",
        devices={model_title(r.name): t.get("device", "unknown") for r, t, _ in runs},
        checkpoints={model_title(r.name): f"epoch 1 and best (epoch {r.epochs['best']} of "
                     f"{best['params'][r.name]['epochs']})" for r, _, best in runs},
        changed_params=changed_params(params))
    gifs = {p.parent.name.removeprefix("beta_"): p
            for p in sorted(args.sweep_dir.glob("beta_*/latent.gif"),
                            key=lambda p: float(p.parent.name.removeprefix("beta_")))}
    markdown = build_markdown(info, entries, args.report.parent, *texts, gifs,
                              {k: v for k, v in metrics.items() if k in MODELS}, noise, baselines)
    write_text(args.report, markdown)
    write_text(args.html, markdown_to_html(markdown, args.report.parent,
                                           f"VAE report: {dataset_label(params.data)}"))
    print(f"visualize: {len(entries)} figures, {args.report}, {args.html} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
