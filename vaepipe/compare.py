"""Which experiments beat their seeds' noise: ``python -m vaepipe.compare`` (``make compare``).

    dvc exp run --queue -S seed=1,2,3            # replicates of the workspace's params
    dvc exp run --queue -S seed=1,2,3 -S beta=0.5
    dvc queue start && dvc queue status          # wait until they are done
    python -m vaepipe.compare                    # or: make compare

Reads ``dvc exp show --json`` (``--json FILE`` reads a saved copy) and nothing else; it never
retrains. Runs are grouped by their baseline commit and their params other than ``seed``; the
workspace and HEAD rows are counted once when they are the same run. For each metric it prints
every group's mean with a 95 % t-interval over its seeds and, against the baseline group (the
one with the workspace's params, or ``--baseline``), the difference with its Welch interval and
a verdict: ``better``, ``worse`` or ``within noise`` (Welch's t-test over seeds, p-values
Holm-corrected across the metrics shown, alpha 0.05). A group with one seed gets the test-set
standard error its run recorded (``<metric>_se``) and no verdict.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

from vaepipe.config import Params, flatten, to_dict
from vaepipe.io import JSON_TYPES, check_output, json_at, read_json, write_json

# what the README's results table reports, each model at its best validation loss
DEFAULT_METRICS = ("mlp.best.bpd_8bit", "conv.best.bpd_8bit", "mlp.best.nelbo",
                   "conv.best.nelbo", "mlp.best.iwae_nll", "conv.best.iwae_nll", "mlp.best.fid",
                   "conv.best.fid", "mlp.best.precision", "conv.best.precision",
                   "mlp.best.recall", "conv.best.recall", "mlp.best.probe_accuracy",
                   "conv.best.probe_accuracy")
ALPHA = 0.05
# the direction of "better" by a metric's last name: -1 lower is better, +1 higher is better
LOWER = {"recon", "nelbo", "bpd", "bpd_8bit", "bpd_8bit_iwae", "nelbo_above_floor", "iwae_nll",
         "test_nll", "fid", "fid_recon", "best_val_loss", "best_val_nelbo", "best_val_recon",
         "final_val_nelbo", "test_recon", "test_nelbo"}
HIGHER = {"precision", "recall", "probe_accuracy", "silhouette", "test_accuracy",
          "val_accuracy", "active_units", "test_probe_accuracy"}
SMALL_GROUPS = ("With 2 or 3 seeds a group, *within noise* is not *no effect*: the test only "
                "sees differences several times the seeds' spread.")


def direction(metric: str) -> int:
    """+1 where higher is better, -1 where lower is, 0 where neither (KL, diversity)."""
    name = metric.rsplit(".", 1)[-1]
    if name in LOWER or name.startswith("frozen_fid"):
        return -1
    return 1 if name in HIGHER else 0


# --------------------------------------------------------------------------------------------
# Runs and groups, from `dvc exp show --json`


@dataclass
class Run:
    label: str             # "workspace", a short commit or an experiment's name
    baseline: str          # the commit it ran on
    params: dict           # params.yaml, flattened
    metrics: dict          # every metrics file, flattened and merged
    workspace: bool = False  # the workspace's run (or HEAD's, when they are the same run)

    @property
    def seed(self) -> Any:
        return self.params.get("seed")


@dataclass
class Group:
    name: str
    baseline: str
    params: dict           # params other than seed
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> np.ndarray:
        return np.array([r.metrics[metric] for r in self.runs if _number(r.metrics.get(metric))],
                        dtype=np.float64)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _run(entry: dict, label: str, baseline: str, where: str) -> Run | None:
    data = json_at(entry, where, "data") or {}
    metrics: dict = {}
    for name, found in (json_at(data, f"{where}.data", "metrics") or {}).items():
        metrics.update(flatten(json_at(found, f"{where}.data.metrics.{name}", "data") or {}))
    params = flatten(json_at(data, f"{where}.data", "params", "params.yaml", "data") or {})
    if not metrics or entry.get("error"):
        return None  # queued, running, failed: nothing to compare yet
    return Run(label, baseline, params, metrics)


def runs_from_exp_show(shown: list, source: str | Path = "input") -> list[Run]:
    """Every finished run of ``dvc exp show --json``: the workspace (unless it is the same run
    as HEAD), each commit row and each experiment; queued, running and failed ones are left
    out. JSON of another shape raises ValueError naming ``source`` and the place."""
    at = f"{source}: not `dvc exp show --json` output at "
    if not isinstance(shown, list):
        raise ValueError(f"{at}the top: expected a list, found {JSON_TYPES.get(type(shown))}")
    runs: list[Run] = []
    workspace = None
    for i, row in enumerate(shown):
        if (rev := json_at(row, f"{at}[{i}]", "rev", kind=str)) is None:
            raise ValueError(f"{at}[{i}]: no \"rev\" (a commit or \"workspace\")")
        if rev == "workspace":
            workspace = _run(row, "workspace", "", f"{at}[{i}]")
            if workspace is not None:
                workspace.workspace = True
            continue
        commit = _run(row, rev[:7], rev, f"{at}[{i}]")
        if workspace is not None:
            workspace.baseline = rev
            if commit is None or (workspace.params, workspace.metrics) != (commit.params,
                                                                           commit.metrics):
                runs.append(workspace)
            else:
                commit.workspace, commit.label = True, f"{commit.label} (workspace)"
            workspace = None
        if commit is not None:
            runs.append(commit)
        for j, exp in enumerate(json_at(row, f"{at}[{i}]", "experiments", kind=list) or []):
            place = f"{at}[{i}].experiments[{j}]"
            for k, revision in enumerate(json_at(exp, place, "revs", kind=list) or []):
                name = json_at(revision, f"{place}.revs[{k}]", "name", kind=str)
                found = _run(revision, name or str(revision.get("rev"))[:7], rev,
                             f"{place}.revs[{k}]")
                if found is not None:
                    runs.append(found)
    if workspace is not None:  # no commit rows (a repository without experiments)
        runs.append(workspace)
    return runs


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Runs with the same baseline commit and the same params but ``seed``, in first-seen
    order, named A, B, C..."""
    groups: dict[str, Group] = {}
    for run in runs:
        params = {k: v for k, v in run.params.items() if k != "seed"}
        key = json.dumps([run.baseline, params], sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(chr(ord("A") + len(groups)) if len(groups) < 26
                                else f"G{len(groups) + 1}", run.baseline, params)
        groups[key].runs.append(run)
    return list(groups.values())


def differing_params(group: Group, baseline: Group) -> str:
    """``key=value`` for each param in which ``group`` differs from ``baseline``."""
    keys = sorted(set(group.params) | set(baseline.params))
    diffs = [f"{k}={group.params.get(k)}" for k in keys
             if group.params.get(k) != baseline.params.get(k)]
    return ", ".join(diffs) if diffs else "the baseline's params"


# --------------------------------------------------------------------------------------------
# Statistics


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (nan with one value)."""
    n = len(values)
    if n < 2:
        return float(values.mean()) if n else math.nan, math.nan
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half)


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of means a - b, the half-width of its 95 % Welch interval, and the two-sided
    p-value of Welch's t-test."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0:  # no spread in either group: any difference is exact
        return diff, 0.0, 1.0 if diff == 0 else 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return diff, float(stats.t.ppf(1 - ALPHA / 2, df) * se), p


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (nan stays nan and is not counted)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class Row:
    group: Group
    metric: str
    n: int
    mean: float
    half: float            # 95 % half-width over seeds; nan with one seed
    test_se: float | None  # the run's own <metric>_se, for a group of one seed
    diff: float = math.nan
    diff_half: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    verdict: str = ""


def judge(groups: Sequence[Group], baseline: Group, metrics: Sequence[str]) -> list[Row]:
    """One row per (metric, group), with verdicts against ``baseline``."""
    rows = []
    for metric in metrics:
        base = baseline.values(metric)
        for group in groups:
            values = group.values(metric)
            if not len(values):
                continue
            mean, half = interval(values)
            se = group.runs[0].metrics.get(f"{metric}_se") if len(values) == 1 else None
            se = se if _number(se) else None
            row = Row(group, metric, len(values), mean, half, se)
            if group is not baseline and len(values) > 1 and len(base) > 1:
                row.diff, row.diff_half, row.p = welch(values, base)
            elif group is not baseline and len(base):
                row.diff = mean - float(base.mean())
            rows.append(row)
    for group in groups:  # Holm across the metrics shown, per comparison
        mine = [r for r in rows if r.group is group]
        for row, adjusted in zip(mine, holm([r.p for r in mine])):
            row.p_holm = adjusted
            if group is baseline:
                row.verdict = "baseline"
            elif math.isnan(adjusted):
                row.verdict = "no verdict (one seed)"
            elif adjusted >= ALPHA:
                row.verdict = "within noise"
            else:
                sign = direction(row.metric) * np.sign(row.diff)
                row.verdict = ({1: "better", -1: "worse"}.get(int(sign))
                               or ("higher" if row.diff > 0 else "lower"))
    return rows


# --------------------------------------------------------------------------------------------
# Output


def _g(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}g}"


def markdown(groups: Sequence[Group], baseline: Group, rows: Sequence[Row]) -> str:
    out = ["### Groups", "", "| group | params other than seed | seeds | runs |",
           "|---|---|---|---|"]
    for g in groups:
        what = "baseline" if g is baseline else differing_params(g, baseline)
        out.append(f"| {g.name} | {what} | {', '.join(str(r.seed) for r in g.runs)} | "
                   f"{', '.join(r.label for r in g.runs)} |")
    for metric in dict.fromkeys(r.metric for r in rows):
        better = {-1: "lower is better", 1: "higher is better", 0: "no better direction"}
        out += ["", f"### `{metric}` ({better[direction(metric)]})", "",
                "| group | seeds | mean ± 95 % interval | vs baseline ± 95 % interval | "
                "p (Holm) | verdict |", "|---|---:|---|---|---:|---|"]
        for r in (r for r in rows if r.metric == metric):
            spread = (f"± {_g(r.half, 3)}" if r.n > 1 else
                      f"(one seed; test-set SE {_g(r.test_se, 3)})")
            diff = "" if r.group is baseline else (
                f"{r.diff:+.4g}" + (f" ± {_g(r.diff_half, 3)}" if r.n > 1 else ""))
            out.append(f"| {r.group.name} | {r.n} | {_g(r.mean, 6)} {spread} | {diff} | "
                       f"{_g(r.p_holm, 2)} | {r.verdict} |")
    out += ["", "Intervals are over seeds (training and evaluation noise together); verdicts come "
            f"from Welch's t-test, Holm-corrected across the {len(set(r.metric for r in rows))} "
            f"metrics shown, alpha {ALPHA}. {SMALL_GROUPS}"]
    return "\n".join(out) + "\n"


def plot(groups: Sequence[Group], rows: Sequence[Row], path: Path) -> Path:
    """A panel per metric: a point per seed, the 95 % interval of each group as a bar."""
    from vaepipe.figures.grids import new_figure, save_png

    metrics = list(dict.fromkeys(r.metric for r in rows))
    cols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig = new_figure(300 * cols, 250 * nrows + 20, layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for x, g in enumerate(groups):
            values = g.values(metric)
            if len(values):
                ax.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)),
                           values, s=14, color="#1f77b4", zorder=3)
                mean, half = interval(values)
                if not math.isnan(half):
                    ax.errorbar([x + 0.25], [mean], yerr=[half], fmt="_", color="#d62728",
                                capsize=4, markersize=12)
        ax.set_xticks(range(len(groups)), [g.name for g in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=8)
    return save_png(fig, path)


def noise(baseline: Group, metrics: Sequence[str]) -> dict:
    """The baseline group's spread over seeds, as the report states it: per metric the seeds'
    mean and standard deviation, and the difference two single runs stay within 95 % of the
    time from seed noise alone (1.96 * sqrt(2) * SD)."""
    defaults = flatten(to_dict(Params()))
    out = {"seeds": [r.seed for r in baseline.runs], "baseline": baseline.baseline,
           "differs_from_defaults": {k: v for k, v in baseline.params.items()
                                     if k in defaults and defaults[k] != v},
           "metrics": {}}
    for metric in metrics:
        values = baseline.values(metric)
        if len(values) > 1:
            sd = float(values.std(ddof=1))
            out["metrics"][metric] = {"n": len(values), "mean": float(values.mean()), "sd": sd,
                                      "single_run_difference": 1.96 * math.sqrt(2) * sd}
    return out


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def read_shown(path: Path | None, num: int) -> Any:
    """The JSON of a saved `dvc exp show --json` (``path``) or of running it (``-n num``); an
    unreadable file or a failing dvc raises ValueError in one line."""
    if path is not None:
        return read_json(path)
    try:
        proc = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(num)],
                              capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)
    except subprocess.CalledProcessError as exc:
        raise ValueError(f"`dvc exp show --json` failed: {' '.join(exc.stderr.split())}") from None
    except (OSError, RecursionError, json.JSONDecodeError) as exc:
        raise ValueError(f"`dvc exp show --json`: cannot run or read it ({exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vaepipe.compare", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="a saved `dvc exp show --json` (default: run it)")
    ap.add_argument("-n", "--num", type=int, default=1, help="commits back from HEAD whose "
                    "experiments are read (`dvc exp show -n`; default 1: HEAD's)")
    ap.add_argument("--metric", action="append", dest="metrics",
                    help="a flattened metric key, e.g. conv.best.fid (repeatable; default: "
                         "NELBO, IWAE, FID, precision, recall, probe accuracy of both models)")
    ap.add_argument("--baseline", help="the baseline group's letter (default: the workspace's)")
    ap.add_argument("--png", type=Path, help="also draw the comparison here")
    ap.add_argument("--noise", type=Path, help="also write the baseline group's spread over "
                    "seeds here (reports/noise.json: the report states it)")
    args = ap.parse_args(argv)
    try:
        for flag, path in (("--png", args.png), ("--noise", args.noise)):
            if path is not None:
                check_output(path, flag)
        runs = runs_from_exp_show(read_shown(args.json, args.num),
                                  args.json or "`dvc exp show --json`")
    except ValueError as exc:  # OutputPathError, or input that is not dvc's JSON
        return _fail(str(exc))
    groups = group_runs(runs)
    if not groups:
        return _fail("`dvc exp show` has no finished run with metrics")
    names = {g.name: g for g in groups}
    if args.baseline is not None and args.baseline not in names:
        return _fail(f"--baseline must be one of {', '.join(names)}, got {args.baseline!r}")
    workspace = next((g for g in groups for r in g.runs if r.workspace), None)
    baseline = names[args.baseline] if args.baseline else (workspace or groups[0])
    metrics = args.metrics or [m for m in DEFAULT_METRICS
                               if any(m in r.metrics for r in runs)]
    unknown = [m for m in metrics if not any(m in r.metrics for r in runs)]
    if unknown or not metrics:
        known = sorted(k for k in runs[0].metrics if _number(runs[0].metrics[k]))
        return _fail(f"--metric {', '.join(unknown) or '(none)'} is in no run's metrics; "
                     f"known: {', '.join(known[:12])}, ...")
    rows = judge(groups, baseline, metrics)
    print(markdown(groups, baseline, rows), end="")
    spread = noise(baseline, metrics) if args.noise is not None else None
    if spread is not None and not spread["metrics"]:
        return _fail(f"--noise needs two or more seeds in the baseline group {baseline.name}")
    if args.png is not None:
        plot(groups, rows, args.png)
    if spread is not None:
        write_json(args.noise, spread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
