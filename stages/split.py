"""DVC stage ``split``: hold out seeded validation (and, for a folder, test) splits and save them.

    python stages/split.py --raw data/raw/<dataset> --out data/processed/<dataset> \
        --metrics reports/split.json --baselines reports/baselines.json

Writes ``train.npz``, ``val.npz``, ``test.npz`` and ``manifest.json`` (see
`vaepipe.data.split.write_split`), and the test set's rate under PNG, xz and a per-pixel
histogram of the training split (`vaepipe.data.baselines`), which evaluate puts beside every
model's 8-bit rate. Exit codes: 0 done, 1 unreadable raw data, 2 bad params or
arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params
from vaepipe.data.arrays import load_splits
from vaepipe.data.baselines import baseline_rates
from vaepipe.data.catalog import DataError
from vaepipe.data.split import write_split
from vaepipe.io import OutputPathError, check_output, write_json


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", required=True, type=Path, help="directory of the raw files")
    parser.add_argument("--out", required=True, type=Path, help="directory for the splits")
    parser.add_argument("--metrics", required=True, type=Path,
                        help="JSON of the image counts per split (a DVC metric)")
    parser.add_argument("--baselines", required=True, type=Path,
                        help="JSON of the codec and histogram rates of the test set (a metric)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        check_output(args.out, "--out", folder=True)
        for flag, path in (("--metrics", args.metrics), ("--baselines", args.baselines)):
            check_output(path, flag)
        params = load_params(args.params)
    except (ConfigError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = params.data
    try:
        manifest = write_split(args.raw, args.out, data.dataset, data.val_fraction,
                               data.split_seed, data.test_fraction, data.split_order)
    except (DataError, ValueError, FileNotFoundError) as exc:
        # DataFormatError names the bad file; ValueError: a split left empty by val_fraction;
        # FileNotFoundError: a missing raw file (run the download stage first)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    (train_x, _), (test_x, _) = load_splits(args.out, "train", "test")
    baselines = baseline_rates(train_x, test_x)
    write_json(args.metrics, {"images": counts})
    write_json(args.baselines, baselines)
    print(f"{data.dataset}: train {counts['train']}, val {counts['val']}, "
          f"test {counts['test']} -> {args.out}; test bits/dim: PNG "
          f"{baselines['png']['bpd']:.3f}, xz {baselines['xz']['bpd']:.3f}, histogram "
          f"{baselines['histogram']['bpd']:.3f}")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
