"""The beta sweep's comparison table: one row per beta from each beta's metrics.json and history.

Reads what the beta-sweep stages wrote and writes it three ways: CSV, a self-contained
markdown section (``###`` heading, one line per column on how it was computed) and nested
DVC metrics ``sweep.<beta>.<metric>``. No torch here: rebuilding the table trains nothing.
"""
from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from vaepipe.data.names import markdown_text
from vaepipe.io import json_at, read_json


@dataclass(frozen=True)
class Column:
    key: str     # in each beta's metrics.json
    header: str  # in the markdown table
    digits: int  # decimals shown in the markdown table
    how: str     # one line on how it is computed; {placeholders} come from the metrics


COLUMNS = (
    Column("test_recon", "recon", 2,
           "Bernoulli reconstruction term -log p(x|z), nats per image, one posterior sample "
           "z ~ q(z|x) per test image (seeded)."),
    Column("test_kl", "KL", 2,
           "KL(q(z|x) || N(0, I)) in closed form, nats per image."),
    Column("test_nelbo", "NELBO", 2,
           "recon + KL: the negative ELBO at KL weight 1, whatever beta trained the model."),
    Column("sharpness", "sharpness", 4,
           "variance of the 3x3 Laplacian of each reconstruction sigmoid(decode(mu)) "
           "(pixels in [0, 1], border pixels dropped), averaged over images."),
    Column("sharpness_ratio", "sharpness / real", 3,
           "sharpness divided by the same measure on the real test images "
           "({real_sharpness:.4f}); 1 would be as sharp as the data."),
    Column("diversity", "diversity", 3,
           "mean Euclidean distance ({pixel_values:,.0f} pixel values in [0, 1]) between every "
           "pair of {prior_samples:,.0f} decoded prior samples sigmoid(decode(z)), z ~ N(0, I); "
           "{real_diversity_images:,.0f} real test images give {real_diversity:.3f}."),
    Column("silhouette", "silhouette", 3,
           "mean silhouette of the test images' latent means mu grouped by class "
           "(Euclidean; 1 = tight, far-apart clusters, 0 = overlapping)."),
    Column("probe_accuracy", "probe accuracy", 3,
           "accuracy on the test latent means of a logistic regression fit on the "
           "{probe_train_images:,.0f} training images' latent means (standardised)."),
)
CSV_KEYS = ("beta", "epochs", *(c.key for c in COLUMNS), "real_sharpness", "real_diversity",
            "test_images")


@dataclass(frozen=True)
class Run:
    label: str       # the beta as DVC names its stage and directory, e.g. "0.1"
    metrics: dict
    history: pd.DataFrame


def _pattern_regex(pattern: str) -> re.Pattern:
    """A glob pattern with exactly one ``*`` as a regex that captures what ``*`` matched."""
    if pattern.count("*") != 1:
        raise ValueError(f"pattern must hold exactly one '*' (the beta), got {pattern!r}")
    before, after = pattern.split("*")
    return re.compile(re.escape(before) + "(.+)" + re.escape(after) + "$")


def collect_runs(metrics_pattern: str, history_pattern: str, betas: Sequence[float]) -> list[Run]:
    """The runs of ``betas``, sorted by beta, found by two glob patterns with one ``*`` each.

    What ``*`` matches labels the run (DVC's spelling of the matrix value, so ``sweep.json``
    keys match stage names); each metrics.json's own ``beta`` picks the runs of ``betas``, so
    the directory of a beta removed from params.yaml is ignored. A missing beta is an error.
    """
    regex = _pattern_regex(metrics_pattern)
    found: dict[float, Run] = {}
    for path in sorted(glob.glob(metrics_pattern)):
        label = regex.match(path).group(1)
        metrics = read_json(path)
        beta = json_at(metrics, path, "beta", kind=(int, float))
        if beta is None:
            raise ValueError(f"{path}: no beta (a number); rerun `dvc repro beta-sweep`")
        beta = float(beta)
        if beta not in betas:
            continue
        history = pd.read_csv(history_pattern.replace("*", label))
        found[beta] = Run(label, metrics, history)
    missing = [b for b in betas if b not in found]
    if missing:
        raise FileNotFoundError(f"no sweep results for beta {', '.join(f'{b:g}' for b in missing)}"
                                f" (looked for {metrics_pattern}); run `dvc repro beta-sweep`")
    return [found[b] for b in sorted(found)]


def measured(runs: Sequence[Run]) -> list[Column]:
    """The columns the runs measured: all but silhouette and probe when they hold one class."""
    return [c for c in COLUMNS if c.key in runs[0].metrics]


def table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per beta: the CSV's columns."""
    return pd.DataFrame([{k: run.metrics[k] for k in CSV_KEYS if k in run.metrics}
                         for run in runs])


def metrics_tree(runs: Sequence[Run]) -> dict:
    """``{"sweep": {label: {metric: number}}}`` for ``dvc metrics``: the table's columns only."""
    tree = {run.label: {c.key: float(run.metrics[c.key]) for c in measured(runs)}
            for run in runs}
    bad = [f"{label}.{k}" for label, row in tree.items() for k, v in row.items()
           if not math.isfinite(v)]
    if bad:
        raise ValueError(f"non-finite sweep metrics: {', '.join(bad)}")
    return {"sweep": tree}


def markdown(runs: Sequence[Run], class_names: Sequence[str], dataset: str) -> str:
    """The ``### Beta sweep`` section: a table and one line per column."""
    first, columns = runs[0].metrics, measured(runs)
    lines = [
        "### Beta sweep: measured comparison",
        "",
        f"Conv VAE with a 2-D latent trained for {first['epochs']:.0f} epochs at each KL weight "
        f"beta on {markdown_text(dataset)} classes "
        f"{', '.join(map(markdown_text, class_names))}; every column "
        f"is measured on the {first['test_images']:,.0f} test images of these classes with the "
        f"final weights.",
        "",
        "| beta | " + " | ".join(c.header for c in columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for run in runs:
        cells = [f"{run.metrics[c.key]:.{c.digits}f}" for c in columns]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    lines += ["", "How each column is computed:", ""]
    lines += [f"- **{c.header}**: {c.how.format(**first)}" for c in columns]
    if len(columns) < len(COLUMNS):
        lines.append("- no silhouette or probe accuracy: the sweep's images are of one class, "
                     "and both compare classes.")
    return "\n".join(lines) + "\n"


def curves(runs: Sequence[Run]) -> pd.DataFrame:
    """Every beta's per-epoch history in one long table (a ``beta`` column first), for the
    overlay plot."""
    frames = [run.history.assign(beta=run.label) for run in runs]
    out = pd.concat(frames, ignore_index=True)
    return out[["beta", *[c for c in out.columns if c != "beta"]]]
