"""Two experiments one after the other against the same two in `dvc queue start -j 2`.

    python bench/exp_queue.py                 # 2-epoch train-conv at beta 0.5 and 2.0: in
                                              # sequence, queued, queued with VAEPIPE_THREADS=1
    python bench/exp_queue.py --unshared      # also -j 2 with VAEPIPE_THREADS=<all cores> each

Runs in a temporary clone of HEAD that uses this checkout's DVC cache (so the clone's
`dvc checkout` restores every output and only `train-conv` reruns) and ``data/raw``.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import cpu_model, has_avx512  # noqa: E402

EXPERIMENTS = (("beta=0.5", "q-beta-05"), ("beta=2.0", "q-beta-2"))
# -f -s: train-conv itself always runs. Without it DVC's run-cache, shared through this
# checkout's cache, restores the queued experiments' outputs from the identical sequential
# ones (or an earlier benchmark), and the queue's time measures only DVC's own work.
FORCED = ("-f", "-s")


def dvc(project: Path, *args: str, env: dict | None = None) -> str:
    exe = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.run([exe, *args], cwd=project, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} exited {proc.returncode}:\n"
                         f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def clone(tmp: Path) -> Path:
    project = tmp / "project"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
    dvc(project, "cache", "dir", str(ROOT / ".dvc/cache"))
    dvc(project, "checkout")
    subprocess.run(["git", "-C", str(project), "config", "user.email", "bench@vaepipe.invalid"])
    subprocess.run(["git", "-C", str(project), "config", "user.name", "vaepipe bench"])
    return project


def sequential(project: Path, env: dict, epochs: int) -> float:
    start = time.monotonic()
    for setting, _ in EXPERIMENTS:
        dvc(project, "exp", "run", *FORCED, "-S", setting, "-S", f"conv.epochs={epochs}",
            "train-conv", env=env)
    return time.monotonic() - start


def queued(project: Path, env: dict, epochs: int, tag: str) -> float:
    names = []
    for setting, name in EXPERIMENTS:
        names.append(f"{name}-{tag}")
        dvc(project, "exp", "run", "--queue", *FORCED, "-S", setting, "-S",
            f"conv.epochs={epochs}", "-n", names[-1], "train-conv", env=env)
    start = time.monotonic()
    dvc(project, "queue", "start", "-j", "2", env=env)
    while True:
        status = dvc(project, "queue", "status", env=env)
        done = {n for n in names if re.search(rf"{re.escape(n)}\s.*\b(Success|Failed)\b", status)}
        if done == set(names):
            break
        time.sleep(1)
    seconds = time.monotonic() - start
    if "Failed" in status:
        raise SystemExit(status)
    return seconds


def threads_taken(project: Path, names: list[str], env: dict) -> dict[str, int]:
    """The thread count each named experiment's train-conv took (its metrics' ``threads``)."""
    import json
    taken = {}
    for row in json.loads(dvc(project, "exp", "show", "--json", env=env)):
        for exp in row.get("experiments") or ():
            for rev in exp["revs"]:
                if rev["name"] in names:
                    metrics = rev["data"]["metrics"]["reports/train/conv.json"]["data"]
                    taken[rev["name"]] = metrics.get("threads")  # None: not recorded
    return taken


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="conv epochs per experiment")
    ap.add_argument("--unshared", action="store_true",
                    help="also time -j 2 with every stage on all cores (the old behaviour)")
    args = ap.parse_args(argv)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")])}
    cores = len(os.sched_getaffinity(0))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, {cores} "
          f"cores, {'AVX-512' if has_avx512() else 'no AVX-512'}; two {args.epochs}-epoch "
          f"train-conv experiments (beta 0.5 and 2.0)", flush=True)
    with tempfile.TemporaryDirectory(prefix="vaepipe-queue-") as tmp:
        project = clone(Path(tmp))
        seq = sequential(project, env, args.epochs)
        print(f"one after the other (dvc exp run x 2): {seq:.0f} s", flush=True)
        par = queued(project, env, args.epochs, "shared")
        taken = threads_taken(project, [f"{name}-shared" for _, name in EXPERIMENTS], env)
        print(f"dvc queue start -j 2, cores shared:     {par:.0f} s ({seq / par:.2f}x); "
              f"threads taken: {taken}", flush=True)
        one = queued(project, {**env, "VAEPIPE_THREADS": "1"}, args.epochs, "one")
        print(f"dvc queue start -j 2, VAEPIPE_THREADS=1:  {one:.0f} s ({seq / one:.2f}x)",
              flush=True)
        if args.unshared:
            unshared = queued(project, {**env, "VAEPIPE_THREADS": str(cores)}, args.epochs,
                              "unshared")
            print(f"dvc queue start -j 2, {cores} threads each: {unshared:.0f} s "
                  f"({seq / unshared:.2f}x)", flush=True)
        shutil.rmtree(project / ".dvc/tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
