"""The whole pipeline's cost: seconds and peak memory per stage of one `dvc repro`, against the
recipes' reference training loop measured in the same run, on the same machine.

    python bench/pipeline.py                  # `dvc repro -f` in a temporary clone of HEAD
    python bench/pipeline.py --workspace      # `dvc repro` here (what is stale), e.g. the real run
    python bench/pipeline.py --json out.json  # also write the table as JSON
    python bench/pipeline.py --preload /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

``--preload`` gives the pipeline's processes that allocator (what `make repro` and `make bench`
do where tcmalloc is installed); the reference below always runs with the default one.

The temporary clone gets this checkout's ``data/raw`` (so `download` copies local files and
never needs the internet) and its own DVC cache. Per stage: the wall time from DVC's
"Running stage" line to the next stage's (DVC's hashing and caching included), and the peak
resident memory of the stage's process tree, sampled every 0.1 s.

The reference is ``bench/train_throughput.py``'s loop (torchvision dataset, DataLoader, stock
Adam), one epoch of the default MLP and conv models, run after the pipeline. Its per-epoch
seconds times the epochs the pipeline trains (train-mlp, train-conv, and each beta of the
sweep, scaled by the sweep's share of the training images) estimate what the recipes' loop
would spend on training alone; the pipeline's total over that estimate is the figure to keep
<= 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from train_throughput import reference_train  # noqa: E402  (bench/ is not a package)

from vaepipe.config import load_params  # noqa: E402
from vaepipe.data.arrays import load_split  # noqa: E402
from vaepipe.models.vae import build_model, model_args# noqa: E402
from vaepipe.sweep.study import select_classes# noqa: E402
from vaepipe.train.device import cpu_model, device_name, resolve_device# noqa: E402

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class StageClock:
    """Reads `dvc repro` output; times each stage and samples its processes' memory."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.start = time.monotonic()
        self.current: str | None = None
        self.stages: dict[str, dict] = {}
        self.lines: list[str] = []
        self._done = threading.Event()

    def read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if not line.startswith("\r"):  # not a progress bar's redraw
                sys.stdout.write(line)
            match = STAGE_LINE.search(line)
            if match:
                self._close(time.monotonic())
                self.current = match.group(1)
                self.stages[self.current] = {"start": time.monotonic() - self.start,
                                             "peak_rss_mb": 0.0}
        self._close(time.monotonic())
        self._done.set()

    def _close(self, now: float) -> None:
        if self.current is not None:
            stage = self.stages[self.current]
            stage["seconds"] = now - self.start - stage["start"]
            self.current = None

    def sample(self) -> None:
        parent = psutil.Process(self.proc.pid)
        while not self._done.wait(0.1):
            name = self.current
            if name is None:
                continue
            rss = 0
            try:
                for child in parent.children(recursive=True):
                    try:
                        rss += child.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            stage = self.stages.get(name)
            if stage is not None:
                stage["peak_rss_mb"] = max(stage["peak_rss_mb"], rss / 2**20)


def run_pipeline(project: Path, force: bool,
                 preload: str | None) -> tuple[dict[str, dict], float]:
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro"] + (["-f"] if force else [])
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")]),
           # the clone's own vaepipe, not the editable install of the working tree
           "PYTHONPATH": str(project)}
    if preload:
        env["LD_PRELOAD"] = preload
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    clock = StageClock(proc)
    reader = threading.Thread(target=clock.read)
    sampler = threading.Thread(target=clock.sample, daemon=True)
    reader.start()
    sampler.start()
    reader.join()
    code = proc.wait()
    total = time.monotonic() - clock.start
    if code != 0:
        raise SystemExit(f"dvc repro exited with {code}")
    return clock.stages, total


def temporary_clone(tmp: Path) -> Path:
    project = tmp / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    raw = ROOT / "data/raw"
    if not raw.is_dir():
        raise SystemExit(f"{raw} is missing: run `dvc repro download` here first")
    # the download stage then finds every file in place and only verifies it
    shutil.copytree(raw, project / "data/raw")
    params = project / "params.yaml"
    text = params.read_text()
    params.write_text(re.sub(r"(?m)^(\s*mirror:).*$", rf"\1 {raw / 'fashion-mnist'}", text, 1))
    return project


def reference_epochs(project: Path, device: torch.device) -> dict[str, float]:
    """Seconds per epoch of the recipes' loop for the default MLP and conv models."""
    params = load_params(project / "params.yaml")
    train_x, _ = load_split(project / f"data/processed/{params.data.dataset}", "train")
    seconds = {}
    for kind in ("mlp", "conv"):
        cfg = getattr(params, kind).model_copy(update={"batch_size": 128})
        torch.manual_seed(params.seed)
        model = build_model(kind, image_shape=train_x.shape[1:], **model_args(kind, cfg))
        ips, spe = reference_train(model, cfg, params.beta, 1, device,
                                   project / f"data/raw/{params.data.dataset}", params.seed)
        seconds[kind] = spe
        print(f"reference {kind}: {spe:.1f} s per epoch ({ips:,.0f} img/s)", flush=True)
    return seconds


def training_speedups(project: Path, params, ref: dict[str, float], n_train: int,
                      sweep_share: float) -> dict[str, dict]:
    """Training images per second of train-mlp, train-conv and the sweep (their epochs' own
    timing, from the tracked JSON) against the reference recipe's, measured in this run."""
    if not ref:
        return {}
    rows = {}
    for kind in ("mlp", "conv"):
        report = project / f"reports/train/{kind}.json"
        ours = json.loads(report.read_text())["images_per_second"]
        rows[f"train-{kind}"] = {"images_per_second": ours,
                                 "reference_images_per_second": n_train / ref[kind]}
    sweep_images = n_train * sweep_share * params.sweep.epochs
    seconds = [json.loads(p.read_text())["train_seconds"]
               for p in sorted(project.glob("reports/sweep/beta_*/metrics.json"))]
    if seconds:
        rows["beta-sweep"] = {"images_per_second": sweep_images * len(seconds) / sum(seconds),
                              "reference_images_per_second": n_train / ref["conv"]}
    for row in rows.values():
        row["speedup"] = row["images_per_second"] / row["reference_images_per_second"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", action="store_true",
                    help="run `dvc repro` (not -f) in this checkout instead of a clone")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference epochs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--preload", help="a library to LD_PRELOAD into the pipeline's processes")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vaepipe-bench-") as tmp:
        project = ROOT if args.workspace else temporary_clone(Path(tmp))
        stages, total = run_pipeline(project, force=not args.workspace, preload=args.preload)
        params = load_params(project / "params.yaml")
        device = resolve_device(params.device)
        ref = {} if args.no_reference else reference_epochs(project, device)
        train_x, train_y = load_split(project / f"data/processed/{params.data.dataset}", "train")
        sweep_share = len(select_classes(train_x, train_y, params.sweep.classes)[0]) / len(train_y)
        speedups = training_speedups(project, params, ref, len(train_y), sweep_share)

    estimate = None
    if ref:
        estimate = (ref["mlp"] * params.mlp.epochs + ref["conv"] * params.conv.epochs
                    + ref["conv"] * sweep_share * params.sweep.epochs * len(params.sweep.betas))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_model()}, {psutil.cpu_count(logical=True)} CPUs, "
                   f"{'AVX-512' if has_avx512() else 'no AVX-512'}, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "device": device_name(device), "torch": torch.__version__,
        "command": "dvc repro" + ("" if args.workspace else " -f (temporary clone)"),
        "preload": args.preload,
        "stages": stages, "total_seconds": total,
        "reference_seconds_per_epoch": ref, "reference_training_estimate_seconds": estimate,
        "ratio_to_reference": total / estimate if estimate else None,
        "training_speedup": speedups,
    }
    print()
    print(f"{result['date']}; {result['machine']}; {result['device']}; {result['command']}")
    print("| stage | seconds | peak RSS (MiB) |")
    print("| --- | ---: | ---: |")
    for name, stage in stages.items():
        print(f"| {name} | {stage['seconds']:.1f} | {stage['peak_rss_mb']:.0f} |")
    print(f"| **total** | **{total:.1f}** | |")
    if estimate:
        print(f"reference recipe, same run: MLP {ref['mlp']:.1f} s/epoch, conv "
              f"{ref['conv']:.1f} s/epoch; its training alone for the same epochs "
              f"~{estimate:.0f} s; pipeline / reference = {total / estimate:.2f}")
    for name, row in speedups.items():
        print(f"{name}: {row['images_per_second']:,.0f} img/s in training against the "
              f"reference's {row['reference_images_per_second']:,.0f}: {row['speedup']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
