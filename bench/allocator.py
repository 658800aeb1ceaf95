"""glibc's malloc against tcmalloc (what `make repro` preloads), same machine.

The allocator is chosen when a process starts, so each measurement is a child process: it
trains the default MLP and conv VAE shapes for a fixed number of steps on random batches and
prints the median step time. Children with either allocator alternate, ``--rounds`` times,
and the medians over rounds are compared.

    python bench/allocator.py                # 3 rounds of 60 steps per model and allocator
    python bench/allocator.py /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from ctypes.util import find_library

CHILD = r"""
import json, statistics, sys, time, torch
from vaepipe.runtime import configure_kernels
configure_kernels()  # the stages' kernel settings
from vaepipe.models.vae import build_model
from vaepipe.train.objective import vae_loss
steps = int(sys.argv[1])
out = {}
for kind, args in (("mlp", {"latent_dim": 32, "hidden": (512, 256)}),
                   ("conv", {"latent_dim": 16, "channels": (32, 64)})):
    torch.manual_seed(0)
    model = build_model(kind, image_shape=(1, 28, 28), **args).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(128, 1, 28, 28)
    times = []
    for i in range(steps + 5):
        start = time.perf_counter()
        logits, mu, logvar, z = model(x)
        loss = vae_loss(model, x, logits, mu, logvar, z).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 5:  # the first steps build oneDNN's kernels
            times.append(time.perf_counter() - start)
    out[kind] = statistics.median(times) * 1000
print(json.dumps(out))
"""


def child(steps: int, preload: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    run = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("lib", nargs="?", help="the tcmalloc library (default: found by soname)")
    args = ap.parse_args(argv)
    lib = args.lib or find_library("tcmalloc_minimal") or find_library("tcmalloc")
    if lib is None:
        sys.exit("tcmalloc is not installed (Debian: apt-get install libtcmalloc-minimal4)")
    results = {"glibc": [], "tcmalloc": []}
    for _ in range(args.rounds):
        results["glibc"].append(child(args.steps, None))
        results["tcmalloc"].append(child(args.steps, lib))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {lib}")
    print(f"{'model':6s} {'glibc ms/step':>14s} {'tcmalloc ms/step':>17s} {'speed-up':>9s}")
    for kind in ("mlp", "conv"):
        base = statistics.median(r[kind] for r in results["glibc"])
        fast = statistics.median(r[kind] for r in results["tcmalloc"])
        print(f"{kind:6s} {base:14.2f} {fast:17.2f} {base / fast:8.2f}x")


if __name__ == "__main__":
    main()
