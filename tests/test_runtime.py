"""vaepipe.runtime and the atomic writer: the CPU share between running stages, weights that do
not depend on the thread count, Ctrl-C / SIGTERM without a traceback, no leftover temporaries.

Everything runs in real subprocesses: slots are ``flock``s held by processes, signals are real.
"""
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vaepipe.data.arrays import save_arrays
from vaepipe.io import atomic_path, remove_stale_temporaries
from vaepipe.runtime import fast_allocator
from vaepipe.training import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
HOLD_SLOT = ("import sys; from vaepipe import runtime; runtime._share.acquire(); "
             "print(runtime._share.slot, flush=True); sys.stdin.read()")


@pytest.fixture
def env(tmp_path):
    env = dict(os.environ)
    env["VAEPIPE_CPU_SLOTS"] = str(tmp_path / "slots")
    env["PYTHONPATH"] = str(ROOT)
    for name in ("VAEPIPE_THREADS", "VAEPIPE_STRICT_KERNELS", "MKL_CBWR", "ATEN_CPU_CAPABILITY",
                 "ONEDNN_MAX_CPU_ISA", "VAEPIPE_ALLOCATOR", "LD_PRELOAD"):
        env.pop(name, None)
    return env


def _python(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def _holder(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SLOT], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip().isdigit()  # the slot is held from here on
    return proc


PROBE = ("from vaepipe import runtime; t = runtime.share_threads(); "
         "print(runtime.cores(), t, runtime._share.slot)")


def test_running_stages_divide_the_cores_and_a_killed_one_frees_its_share(env):
    cores, threads, slot = map(int, _python(PROBE, env))
    assert (threads, slot) == (cores, 0)
    holder = _holder(env)  # slot 0
    try:
        cores, threads, slot = map(int, _python(PROBE, env))
        assert (threads, slot) == (max(1, cores // 2), 1)
        second = _holder(env)  # slot 1: three stages now
        cores, threads, slot = map(int, _python(PROBE, env))
        assert (threads, slot) == (max(1, cores // 3), 2)
        second.kill()  # SIGKILL: its lock goes with it
        second.wait()
        cores, threads, slot = map(int, _python(PROBE, env))
        assert (threads, slot) == (max(1, cores // 2), 1)
    finally:
        holder.stdin.close()
        holder.wait()
    assert list(map(int, _python(PROBE, env)))[1:] == [cores, 0]


def test_a_running_stage_takes_its_new_share_and_pinned_threads_override_it(env):
    code = f"""
import subprocess, sys, torch
from vaepipe import runtime
runtime._share.active = True
alone = runtime.rebalance(force=True)
holder = subprocess.Popen([sys.executable, "-c", {HOLD_SLOT!r}], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
holder.stdout.readline()
shared = runtime.rebalance(force=True)
torch_shared = torch.get_num_threads()
holder.stdin.close(); holder.wait()
print(runtime.cores(), alone, shared, torch_shared, runtime.rebalance(force=True),
      torch.get_num_threads())
"""
    cores, alone, shared, torch_shared, back, torch_back = map(int, _python(code, env))
    assert (alone, shared, torch_shared) == (cores, max(1, cores // 2), max(1, cores // 2))
    assert (back, torch_back) == (cores, cores)
    # outside run_stage (tests, notebooks) nothing changes
    assert _python("from vaepipe import runtime; print(runtime.rebalance(force=True))",
                   env) == ["0"]
    pinned = _python("from vaepipe import runtime; runtime._share.active = True; "
                     "print(runtime.rebalance(force=True))", {**env, "VAEPIPE_THREADS": "3"})
    assert pinned == ["3"]


def test_a_bad_thread_count_stops_the_stage_with_one_line(env, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "stages/sweep_table.py"), "--help"],
                          env={**env, "VAEPIPE_THREADS": "zero"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "error: VAEPIPE_THREADS must be a positive integer, got 'zero'\n"


# a stage script's first lines, then what the process ended up as
STAGE_START = """from vaepipe import runtime
if __name__ == "__main__":
    runtime.use_fast_allocator()
    import os, sys
    maps = open("/proc/self/maps").read()
    print(os.getpid(), "tcmalloc" in maps, *sys.argv[1:])
"""


@pytest.mark.skipif(fast_allocator() is None, reason="tcmalloc is not installed "
                    "(Debian: libtcmalloc-minimal4); stages then keep glibc's malloc")
def test_a_stage_reexecutes_itself_under_tcmalloc_with_its_pid_and_arguments(env, tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE_START)
    proc = subprocess.Popen([sys.executable, str(script), "--beta", "0.5"], env=env,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert out.split() == [str(proc.pid), "True", "--beta", "0.5"]
    system = subprocess.run([sys.executable, str(script)], env={**env, "VAEPIPE_ALLOCATOR":
                            "system"}, capture_output=True, text=True, timeout=60)
    assert system.stdout.split()[1] == "False"


def test_an_unknown_allocator_stops_the_stage_with_one_line(env):
    proc = subprocess.run([sys.executable, str(ROOT / "stages/sweep_table.py"), "--help"],
                          env={**env, "VAEPIPE_ALLOCATOR": "jemalloc"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "error: VAEPIPE_ALLOCATOR must be tcmalloc or system, got 'jemalloc'\n"


def test_kernel_settings_are_set_for_every_stage_and_strict_mode_caps_the_isa(env):
    code = ("from vaepipe import runtime; import torch; torch.ones(2) @ torch.ones(2); "
            "print(runtime.kernel_settings()['MKL_CBWR'], torch.backends.cpu.get_cpu_capability())")
    cbwr, capability = _python(code, env)
    assert cbwr == "AUTO"
    cbwr, capability = _python(code, {**env, "VAEPIPE_STRICT_KERNELS": "1"})
    assert (cbwr, capability) == ("AVX2,STRICT", "AVX2")
    # a value the caller set wins
    cbwr, _ = _python(code, {**env, "VAEPIPE_STRICT_KERNELS": "1", "MKL_CBWR": "COMPATIBLE"})
    assert cbwr == "COMPATIBLE"


# ---------------------------------------------------------------------------------------------
# The same weights with 1 and 2 threads, through the stage scripts


@pytest.fixture
def small_split(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name, n in (("train", 512), ("val", 64), ("test", 64)):
        save_arrays(data / f"{name}.npz", rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int64))
    # the default layer shapes, one epoch: the classifier's 10-class head on 128 features at
    # batch 128 is the product whose summation order followed the thread count before MKL_CBWR
    params = {"device": "cpu", "mlp": {"epochs": 1}, "conv": {"epochs": 1},
              "classifier": {"epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return data


def _train_all(tmp_path: Path, data: Path, env: dict, threads: int) -> dict[str, bytes]:
    out = tmp_path / f"threads-{threads}"
    env = {**env, "VAEPIPE_THREADS": str(threads)}
    params = ["--params", str(tmp_path / "params.yaml")]
    for kind in ("mlp", "conv"):
        subprocess.run([sys.executable, str(ROOT / "stages/train.py"), "--model", kind,
                        "--data", str(data), "--checkpoints", str(out / kind),
                        "--metrics", str(out / f"{kind}.json"),
                        "--history", str(out / f"{kind}.csv"), *params],
                       env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "stages/train_classifier.py"), "--data", str(data),
                    "--out", str(out / "classifier.pt"), "--metrics", str(out / "clf.json"),
                    *params], env=env, check=True, capture_output=True, timeout=300)
    files = [out / "mlp/final.pt", out / "conv/final.pt", out / "classifier.pt"]
    return {f.relative_to(out).as_posix(): f.read_bytes() for f in files}


def test_default_shapes_train_to_the_same_bytes_with_one_and_two_threads(tmp_path, small_split,
                                                                         env):
    # Layers of 16 channels and more run oneDNN kernels, whose sums do not depend on the thread
    # count; the channels-last BatchNorm kernels would (per-thread partial sums), so
    # vaepipe.layers runs them at a fixed count. Narrower convolutions (the tests' 4-8 channel
    # models) take PyTorch's own kernels, whose weight gradient sums per-thread partials:
    # there 1 and 2 threads differ in the last bits.
    one = _train_all(tmp_path, small_split, env, 1)
    two = _train_all(tmp_path, small_split, env, 2)
    assert one.keys() == two.keys()
    assert {name for name in one if one[name] != two[name]} == set()


# ---------------------------------------------------------------------------------------------
# Signals


def _start_training(tmp_path: Path, data: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    params = {"device": "cpu", "conv": {"epochs": 200, "channels": [8, 16], "latent_dim": 4,
                                        "batch_size": 32}}
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(params))
    ckpts = tmp_path / "ckpts"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "stages/train.py"), "--model", "conv", "--data", str(data),
         "--checkpoints", str(ckpts), "--metrics", str(tmp_path / "m.json"),
         "--history", str(tmp_path / "h.csv"), "--params", str(tmp_path / "long.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ckpts / "epoch_01.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.05)
    time.sleep(0.3)  # inside a later epoch, or writing best.pt
    return proc, ckpts


@pytest.mark.parametrize("signum, status, word", [(signal.SIGINT, 130, "interrupted by SIGINT"),
                                                  (signal.SIGTERM, 143, "terminated by SIGTERM")])
def test_a_signal_stops_a_stage_with_one_line_and_keeps_only_whole_files(
        tmp_path, small_split, env, signum, status, word):
    proc, ckpts = _start_training(tmp_path, small_split, env)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert "Traceback" not in stdout + stderr
    assert stderr.strip().splitlines()[-1] == (
        f"train: {word}; files it had finished are kept, none is half-written")
    assert sorted(p.name for p in ckpts.iterdir()) in (["epoch_01.pt"], ["best.pt", "epoch_01.pt"])
    for path in ckpts.iterdir():
        load_checkpoint(path)  # whole, loadable
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "h.csv").exists()


def test_sigkill_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "out" / "best.pt"
    code = (f"import os, sys; from vaepipe.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            f"    tmp.write_bytes(b'half'); print(tmp, flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.parent == target.parent and tmp.name.startswith(f".best.pt.{proc.pid}.")
    # a live writer's temporary is not touched
    assert remove_stale_temporaries(target) == [] and tmp.exists()
    proc.kill()
    proc.wait()
    assert tmp.exists() and not target.exists()  # SIGKILL: no cleanup ran, no target either
    with atomic_path(target) as fresh:
        fresh.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in target.parent.iterdir()) == ["best.pt"]


# ---------------------------------------------------------------------------------------------
# Strict kernels: the same weights on every CPU?

# sha256 of each checkpoint's weights (state_dict tensors in order) after `small_split`'s
# one-epoch trainings with VAEPIPE_STRICT_KERNELS=1, recorded on the CPU named below (no AVX-512)
GOLDEN_CPU = "AMD EPYC"
GOLDEN_WEIGHTS = {
    "mlp/final.pt": "be430deb7507cefe58ff51918e64dcda37740fbb0fd22fc3d4a6f019c75e6643",
    "conv/final.pt": "f380d94535d56e234451d16dbfbf51d857c34bc5403ed456d845603958e3161c",
    "classifier.pt": "7bf2fafec918e1afb737959aa033616baa2dd8d96bd82194a4ddaa0407b56d1d",
}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def weights_sha256(data: bytes) -> str:
    state = torch.load(io.BytesIO(data), weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_strict_kernels_train_the_golden_weights(tmp_path, small_split, env, request):
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("needs /proc/cpuinfo to name the CPU")
    avx512 = " avx512f" in Path("/proc/cpuinfo").read_text()
    if GOLDEN_CPU not in _cpu_model() or avx512:
        # Recorded on one CPU family only: whether AVX2-capped kernels give the same bits on
        # another (an AVX-512 Xeon) is what this run finds out; it is reported, not enforced.
        request.node.add_marker(pytest.mark.xfail(
            reason=f"golden weights recorded on an {GOLDEN_CPU} without AVX-512, this is "
                   f"{_cpu_model()!r}{' with AVX-512' if avx512 else ''}",
            strict=False))
    trained = _train_all(tmp_path, small_split, {**env, "VAEPIPE_STRICT_KERNELS": "1"}, 2)
    assert {name: weights_sha256(data) for name, data in trained.items()} == GOLDEN_WEIGHTS
