"""DVC stage sweep-table: the beta sweep's comparison table, metrics and overlaid curves.

    python stages/sweep_table.py --metrics 'reports/sweep/beta_*/metrics.json' \
        --histories 'reports/sweep/beta_*/history.csv' --csv reports/sweep.csv \
        --markdown reports/sweep.md --json reports/sweep.json --curves reports/sweep_curves.csv \
        --data data/processed/fashion-mnist

The ``*`` of each pattern is the beta as DVC spells it; only the betas in ``sweep.betas``
are tabulated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params
from vaepipe.data.arrays import read_class_names
from vaepipe.data.names import dataset_label, resolve_classes
from vaepipe.io import OutputPathError, atomic_path, check_output, write_json, write_text
from vaepipe.sweep.table import collect_runs, curves, markdown, metrics_tree, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Tabulate the beta sweep (a DVC stage).")
    ap.add_argument("--metrics", required=True, help="glob of per-beta metrics.json, one '*'")
    ap.add_argument("--histories", required=True, help="glob of per-beta history.csv, one '*'")
    ap.add_argument("--csv", required=True, type=Path)
    ap.add_argument("--markdown", required=True, type=Path)
    ap.add_argument("--json", required=True, type=Path)
    ap.add_argument("--curves", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path,
                    help="the split's directory, whose manifest names the classes")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        for flag in ("csv", "markdown", "json", "curves"):
            check_output(getattr(args, flag), f"--{flag}")
        params = load_params(args.params)
        runs = collect_runs(args.metrics, args.histories, params.sweep.betas)
        tree = metrics_tree(runs)
        names = read_class_names(args.data)
        classes = resolve_classes(params.sweep.classes, names, str(args.data))
    except (ConfigError, OutputPathError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with atomic_path(args.csv) as tmp:
        table(runs).to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(args.curves) as tmp:
        curves(runs).to_csv(tmp, index=False, float_format="%.6g")
    text = markdown(runs, [names[c] for c in classes], dataset_label(params.data))
    write_text(args.markdown, text)
    write_json(args.json, tree)
    print(text)
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
