"""DVC stage ``download``: put the verified raw files of ``data.dataset`` into ``--out``.

    python stages/download.py --out data/raw/<dataset>

Sources (see :func:`vaepipe.data.sources.fetch_raw`): ``data.mirror``, the standard local directory,
then the official download. With ``data.dataset: folder`` it ingests the image folder
``data.path`` instead (:func:`vaepipe.data.folder.ingest_folder`): ``images.npz`` and a manifest
of every file used and skipped. Exit codes: 0 done, 1 no source worked (or the folder holds no
usable image), 2 bad params or arguments (an ``--out`` that is a file, or whose parent cannot be
created). An image that cannot be used (corrupt, truncated, over Pillow's decompression-bomb
limit) is a counted skip with its reason in the manifest, never a stop.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vaepipe import runtime
from vaepipe.config import ConfigError, load_params
from vaepipe.data.catalog import DataError
from vaepipe.data.folder import ingest_folder
from vaepipe.data.sources import fetch_raw
from vaepipe.io import OutputPathError, check_output


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the raw files")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        check_output(args.out, "--out", folder=True)
        params = load_params(args.params)
    except (ConfigError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    data = params.data
    try:
        if data.dataset == "folder":
            manifest = ingest_folder(data.path, args.out, data.image_size, data.channels)
            counts = manifest["counts"]
            done = (f"{data.path}: {counts['used']} images of {len(manifest['class_names'])} "
                    f"class(es) at {manifest['channels']}x{data.image_size}x{data.image_size} "
                    f"in {args.out}; {counts['skipped']} skipped (listed with the reason in "
                    f"{args.out}/manifest.json)")
        else:
            source = fetch_raw(data.dataset, args.out, mirror=data.mirror)
            done = f"{data.dataset}: raw files in {args.out} (from {source})"
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(done)
    return 0


if __name__ == "__main__":
    runtime.run_stage(main)
