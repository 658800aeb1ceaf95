"""DVC stage ``download``: put the verified raw files of ``data.dataset`` into ``--out``.

    python stages/download.py --out data/raw/<dataset>

Sources (see :func:`vaepipe.data.sources.fetch_raw`): ``data.mirror``, the standard local directory,
then the official download. Exit codes: 0 done, 1 no source worked, 2 bad params or arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params
from vaepipe.data.catalog import DataError
from vaepipe.data.sources import fetch_raw


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the raw files")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        source = fetch_raw(params.data.dataset, args.out, mirror=params.data.mirror)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{params.data.dataset}: raw files in {args.out} (from {source})")
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
