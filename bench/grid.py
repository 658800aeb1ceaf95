"""A 4-point seed grid three ways on this machine: one after another (`dvc exp run` each), with
`dvc queue start -j 2`, and through `python -m vaepipe.grid` on its local cluster (2 workers).

    python bench/grid.py                  # real Fashion-MNIST, the reduced budget below
    python bench/grid.py --points 2       # fewer points

Runs in a temporary clone of HEAD that uses this checkout's DVC cache. The clone first
reproduces the pipeline at a reduced budget (BUDGET: 2 epochs per VAE, 1 for the sweep and the
classifier, a smaller evaluation), commits it and pushes it to a bare git repository and a
local-folder DVC remote; that baseline's time and the push's are reported. Each way then runs
its own seeds (a seed changes train-mlp, train-conv, evaluate and visualize), so no way
restores another's results from the run-cache. One thread per point where two run at once
(VAEPIPE_THREADS=1), two where one runs. Prints one table; the README's numbers come from it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import cpu_model  # noqa: E402

BUDGET = {"mlp": {"epochs": 2, "warmup_epochs": 1}, "conv": {"epochs": 2},
          "sweep": {"epochs": 1}, "classifier": {"epochs": 1},
          "evaluate": {"samples": 500, "iwae_images": 50},
          "visualize": {"scatter_points": 500, "tsne_iterations": 250}}
BIN = Path(sys.executable).parent


def run(project: Path, *argv: str, env: dict) -> str:
    proc = subprocess.run(list(argv), cwd=project, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n"
                         f"{proc.stderr}")
    return proc.stdout


def merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def baseline(tmp: Path, env: dict) -> tuple[Path, dict]:
    """The reduced-budget pipeline reproduced, committed and pushed; (clone, seconds)."""
    project = tmp / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    dvc = str(BIN / "dvc")
    run(project, dvc, "cache", "dir", str(ROOT / ".dvc/cache"), env=env)
    # what the cache holds comes back; the rest is rebuilt by the repro below
    subprocess.run([dvc, "checkout"], cwd=project, env=env, capture_output=True)
    for key, value in (("user.email", "bench@vaepipe.invalid"), ("user.name", "vaepipe bench")):
        run(project, "git", "config", key, value, env=env)
    params = merge(yaml.safe_load((project / "params.yaml").read_text()), BUDGET)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds = {}
    start = time.monotonic()
    run(project, dvc, "repro", env={**env, "VAEPIPE_THREADS": "2"})
    seconds["baseline repro"] = time.monotonic() - start
    run(project, "git", "commit", "-qam", "bench: reduced budget", env=env)
    bare = tmp / "remote.git"
    run(tmp, "git", "init", "-q", "--bare", "-b", "main", str(bare), env=env)
    run(project, "git", "remote", "set-url", "origin", str(bare), env=env)
    run(project, "git", "push", "-q", "origin", "HEAD:main", env=env)
    run(project, dvc, "remote", "add", "-d", "storage", str(tmp / "dvc-store"), env=env)
    start = time.monotonic()
    run(project, dvc, "push", "-q", "--run-cache", env=env)
    seconds["dvc push --run-cache"] = time.monotonic() - start
    size = sum(p.stat().st_size for p in (tmp / "dvc-store").rglob("*") if p.is_file())
    seconds["remote MB"] = size / 1e6
    return project, seconds


def one_after_another(project: Path, seeds: list[int], env: dict) -> float:
    start = time.monotonic()
    for seed in seeds:
        run(project, str(BIN / "dvc"), "exp", "run", "-S", f"seed={seed}",
            env={**env, "VAEPIPE_THREADS": "2"})
    return time.monotonic() - start


def queued(project: Path, seeds: list[int], env: dict) -> float:
    dvc = str(BIN / "dvc")
    run(project, dvc, "exp", "run", "--queue", "-S", "seed=" + ",".join(map(str, seeds)),
        env=env)
    start = time.monotonic()
    subprocess.run([dvc, "queue", "start", "-j", "2"], cwd=project,
                   env={**env, "VAEPIPE_THREADS": "1"}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    while True:
        status = run(project, dvc, "queue", "status", env=env)
        done = len(re.findall(r"\b(Success|Failed)\b", status))
        if done >= len(seeds):
            break
        time.sleep(1)
    seconds = time.monotonic() - start
    if "Failed" in status:
        raise SystemExit(f"a queued point failed:\n{status}")
    run(project, dvc, "queue", "stop", env=env)
    return seconds


def grid(project: Path, seeds: list[int], env: dict) -> tuple[float, list[float]]:
    start = time.monotonic()
    out = run(project, sys.executable, "-m", "vaepipe.grid", "-S",
              "seed=" + ",".join(map(str, seeds)), "--workers", "2", "--threads", "1",
              "--no-compare", env=env)
    seconds = time.monotonic() - start
    per_point = [float(s) for s in re.findall(r"landed in (\d+) s", out)]
    if len(per_point) != len(seeds):
        raise SystemExit(f"the grid did not land every point:\n{out}")
    return seconds, per_point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=4)
    args = ap.parse_args()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    try:
        project, setup = baseline(tmp, {**env, "PYTHONPATH": str(tmp / "project")})
        env["PYTHONPATH"] = str(project)
        n = args.points
        rows = {"one after another (dvc exp run, 2 threads)":
                one_after_another(project, list(range(1, n + 1)), env),
                "dvc queue start -j 2 (1 thread each)":
                queued(project, list(range(n + 1, 2 * n + 1)), env)}
        total, per_point = grid(project, list(range(2 * n + 1, 3 * n + 1)), env)
        rows["python -m vaepipe.grid, local cluster 2 x 1 thread"] = total
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{cpu_model()}, {os.cpu_count()} cores; {n} seed points at the reduced budget")
    print(f"baseline: dvc repro {setup['baseline repro']:.0f} s, dvc push --run-cache "
          f"{setup['dvc push --run-cache']:.0f} s ({setup['remote MB']:.0f} MB)")
    print("| way | wall s | s per point | vs one after another |\n|---|---:|---:|---:|")
    first = next(iter(rows.values()))
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.0f} | {seconds / n:.0f} | {first / seconds:.2f}x |")
    print(f"grid points, each on its worker (clone, pull, run, push): "
          f"{', '.join(f'{s:.0f}' for s in per_point)} s")


if __name__ == "__main__":
    main()
