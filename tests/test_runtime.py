"""vaepipe.runtime and the atomic writer: kernel settings that take effect in a stage process,
a thread count decided once from the stages running, the same bits for the same thread count,
Ctrl-C / SIGTERM without a traceback, no leftover temporaries.

Everything runs in real subprocesses: slots are ``flock``s held by processes, signals are real.
"""
import fcntl
import hashlib
import io
import json
import os
import platform
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vaepipe import runtime
from vaepipe.data.arrays import save_arrays
from vaepipe.io import atomic_path, remove_stale_temporaries
from vaepipe.train.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
HOLD_SLOT = ("import sys; from vaepipe import runtime; runtime.running_stages(); "
             "print('held', flush=True); sys.stdin.read()")
KERNEL_VARS = ("VAEPIPE_THREADS", "VAEPIPE_STRICT_KERNELS", "MKL_CBWR", "ATEN_CPU_CAPABILITY",
               "ONEDNN_MAX_CPU_ISA", "MKL_VERBOSE", "ONEDNN_VERBOSE", "LD_PRELOAD")


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


X86_AVX2 = platform.machine() in {"x86_64", "AMD64"} and "avx2" in _cpu_flags()
NEEDS_X86_AVX2 = pytest.mark.skipif(
    not X86_AVX2, reason=f"strict kernels cap x86 CPUs at AVX2; this is {platform.machine()} "
                         f"{'without AVX2' if platform.machine() == 'x86_64' else ''}".strip())


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARS}
    env["VAEPIPE_CPU_SLOTS"] = str(tmp_path / "slots")
    env["PYTHONPATH"] = str(ROOT)
    return env


def _holder(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SLOT], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # the slot is held from here on
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


# a stage as the scripts are: every stage script's imports, then run_stage(main) at the end
FAKE_STAGE = """
import importlib.util, json, os, sys
from pathlib import Path
for script in sorted(Path(sys.argv[1]).glob("*.py")) if len(sys.argv) > 1 else ():
    # every stage's imports, none of its work
    spec = importlib.util.spec_from_file_location("stage_" + script.stem, script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import torch
from threadpoolctl import threadpool_info
from vaepipe import runtime

def main():
    x = torch.randn(64, 64)
    x @ x  # oneMKL
    torch.nn.functional.conv2d(torch.randn(2, 16, 8, 8), torch.randn(16, 16, 3, 3))  # oneDNN
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(),
                      "blas": sorted({p["num_threads"] for p in threadpool_info()}),
                      "env": {k: os.environ.get(k) for k in ("MKL_CBWR", "ATEN_CPU_CAPABILITY",
                                                             "ONEDNN_MAX_CPU_ISA")}}), flush=True)
    sys.stdin.readline()  # the test may start other stages now
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
    return 0

runtime.run_stage(main)
"""


def _fake_stage(tmp_path: Path, env: dict, verbose: bool = False):
    """Start FAKE_STAGE; returns (process, its first JSON line, the kernel libraries' lines).
    With ``verbose`` it imports every stage script's modules and the kernels log their set-up.
    """
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE_STAGE)
    args = [sys.executable, str(script)]
    if verbose:
        env = {**env, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
        args.append(str(ROOT / "stages"))
    proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stdout:
        if line.startswith("{"):
            return proc, json.loads(line), lines
        lines.append(line)
    pytest.fail(f"the fake stage ended early: {proc.wait()} {lines}")


def _finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def _kernels(lines: list[str]) -> tuple[str, str]:
    """oneMKL's conditional-reproducibility mode and oneDNN's ISA, from their verbose lines."""
    cnr = next(w for line in lines if line.startswith("MKL_VERBOSE") and "CNR:" in line
               for w in line.split() if w.startswith("CNR:"))
    isa = next(line.split("isa:", 1)[1].strip() for line in lines if ",isa:" in line)
    return cnr, isa


def test_run_stage_sets_the_kernels_before_their_first_call(tmp_path, env):
    proc, seen, lines = _fake_stage(tmp_path, env, verbose=True)
    _finish(proc)
    cnr, _ = _kernels(lines)
    assert seen["env"]["MKL_CBWR"] == "AUTO" and cnr == "CNR:AUTO"


def test_kernel_variables_the_caller_set_are_kept(monkeypatch):
    # on a stand-in for os.environ: a variable left in the test process's environment would
    # reach every later test's stage processes (other kernels, other bits)
    environ = {"MKL_CBWR": "COMPATIBLE", "VAEPIPE_STRICT_KERNELS": "1"}
    monkeypatch.setattr(runtime.os, "environ", environ)
    runtime.configure_kernels()
    assert environ == {"MKL_CBWR": "COMPATIBLE", "VAEPIPE_STRICT_KERNELS": "1",
                       "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@NEEDS_X86_AVX2
def test_strict_kernels_cap_pytorch_onemkl_and_onednn_at_avx2(tmp_path, env):
    proc, seen, lines = _fake_stage(tmp_path, {**env, "VAEPIPE_STRICT_KERNELS": "1"},
                                    verbose=True)
    _finish(proc)
    cnr, isa = _kernels(lines)
    assert seen["capability"] == "AVX2"
    assert "STRICT" in cnr  # oneMKL's strict mode; AMD CPUs report the branch as AUTO
    assert isa == "Intel AVX2"
    assert seen["env"] == {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2",
                           "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_a_stage_takes_its_share_of_the_cores_once_when_it_starts(tmp_path, env):
    cores = len(os.sched_getaffinity(0))
    holder = _holder(env)  # another stage runs: this one gets half the cores
    try:
        proc, seen, _ = _fake_stage(tmp_path, env)
        assert seen["threads"] == max(1, cores // 2)
        assert seen["blas"] == [max(1, cores // 2)]  # numpy / scipy pools follow
    finally:
        _release(holder)  # the other stage ends: the count stays what it was at the start
    assert _finish(proc)["threads"] == max(1, cores // 2)

    proc, seen, _ = _fake_stage(tmp_path, env)  # alone now: every core
    holder = _holder(env)
    _release(holder)
    assert seen["threads"] == cores and _finish(proc)["threads"] == cores


def test_running_stages_count_each_other_and_a_killed_one_frees_its_slot(env):
    probe = "from vaepipe import runtime; print(runtime.running_stages())"
    count = lambda: int(subprocess.run([sys.executable, "-c", probe], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    assert count() == 1
    first = _holder(env)
    second = _holder(env)
    try:
        assert count() == 3
        second.kill()  # SIGKILL: its lock goes with it
        second.wait()
        assert count() == 2
    finally:
        _release(first)
    assert count() == 1


def test_pinned_threads_override_the_share_and_a_bad_value_is_one_line(tmp_path, env):
    holder = _holder(env)
    try:
        proc, seen, _ = _fake_stage(tmp_path, {**env, "VAEPIPE_THREADS": "3"})
        assert seen["threads"] == 3
        _finish(proc)
    finally:
        _release(holder)
    proc = subprocess.run([sys.executable, str(ROOT / "stages/sweep_table.py"), "--help"],
                          env={**env, "VAEPIPE_THREADS": "zero"}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2  # before main() ran: no usage text
    assert proc.stderr == "error: VAEPIPE_THREADS must be a positive integer, got 'zero'\n"
    assert proc.stdout == ""


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", " "])
def test_other_bad_thread_counts_are_refused(monkeypatch, bad):
    monkeypatch.setenv("VAEPIPE_THREADS", bad)
    with pytest.raises(ValueError, match=f"^VAEPIPE_THREADS must be a positive integer, got "
                                         f"{re.escape(repr(bad))}$"):
        runtime.stage_threads()


# ---------------------------------------------------------------------------------------------
# The same bits for the same thread count, through the stage scripts


@pytest.fixture
def small_split(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name, n in (("train", 512), ("val", 64), ("test", 64)):
        save_arrays(data / f"{name}.npz", rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int64))
    # the class names the classifier's size comes from, as the split stage writes them
    (data / "manifest.json").write_text(json.dumps({"class_names": [str(c) for c in range(10)]}))
    # the default layer shapes, one epoch each
    params = {"device": "cpu", "mlp": {"epochs": 1}, "conv": {"epochs": 1},
              "classifier": {"epochs": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return data


def _train_all(out: Path, data: Path, env: dict, threads: int) -> dict[str, bytes]:
    """train-mlp, train-conv and train-classifier's scripts at ``threads`` threads into ``out``;
    returns the final checkpoints' bytes."""
    env = {**env, "VAEPIPE_THREADS": str(threads)}
    params = ["--params", str(data.parent / "params.yaml")]
    for kind in ("mlp", "conv"):
        subprocess.run([sys.executable, str(ROOT / "stages/train.py"), "--model", kind,
                        "--data", str(data), "--checkpoints", str(out / kind),
                        "--metrics", str(out / f"{kind}.json"),
                        "--history", str(out / f"{kind}.csv"), *params],
                       env=env, check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "stages/train_classifier.py"), "--data", str(data),
                    "--out", str(out / "classifier.pt"), "--metrics", str(out / "clf.json"),
                    *params], env=env, check=True, capture_output=True, timeout=300)
    for metrics in ("mlp.json", "conv.json", "clf.json"):  # the count is recorded
        assert json.loads((out / metrics).read_text())["threads"] == threads
    files = [out / "mlp/final.pt", out / "conv/final.pt", out / "classifier.pt"]
    return {f.relative_to(out).as_posix(): f.read_bytes() for f in files}


@pytest.mark.slow  # six stage runs; the golden test below checks exact bits in the fast suite
def test_the_same_thread_count_trains_the_same_bytes(tmp_path, small_split, env):
    # What differs with another count (channels-last BatchNorm and narrow convolutions sum
    # per-thread partials) is said in the README; with the same count every byte repeats.
    first = _train_all(tmp_path / "first", small_split, env, 2)
    second = _train_all(tmp_path / "second", small_split, env, 2)
    assert first.keys() == second.keys()
    assert {name for name in first if first[name] != second[name]} == set()


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
    # the progress files of the epochs done (history first, then metrics), each whole
    if (tmp_path / "m.json").exists():
        metrics = json.loads((tmp_path / "m.json").read_text())
        rows = (tmp_path / "h.csv").read_text().splitlines()[1:]
        assert metrics["partial"] is True and len(rows) in (metrics["epochs"],
                                                            metrics["epochs"] + 1)


STAGE_WITH_A_BAR = """
import os, signal, time
from tqdm import tqdm
from vaepipe import runtime

def main():
    bar = tqdm(total=100, desc="epoch 1/9", leave=False)  # as the training loop draws it
    bar.update(40)
    bar.refresh()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)

runtime.run_stage(main)
"""


def _screen(text: str) -> list[str]:
    """The non-blank lines a terminal shows for ``text``: "\\r" goes back to the line's start,
    "\\033[K" erases from the cursor to the line's end, other characters overwrite."""
    shown = []
    for raw in text.split("\n"):
        line, col = "", 0
        for token in re.findall(r"\x1b\[K|\r|[^\r\x1b]+", raw):
            if token == "\r":
                col = 0
            elif token == "\x1b[K":
                line = line[:col]
            else:
                line, col = line[:col] + token + line[col + len(token):], col + len(token)
        shown.append(line.rstrip())
    return [line for line in shown if line]


def test_a_signal_on_a_terminal_leaves_the_stage_line_and_no_progress_bar(tmp_path, env):
    (tmp_path / "stage.py").write_text(STAGE_WITH_A_BAR)
    ours, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    proc = subprocess.Popen([sys.executable, str(tmp_path / "stage.py")], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(ours, 4096)
        except OSError:  # EIO: the stage exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(ours)
    assert proc.wait(timeout=60) == 130
    text = b"".join(chunks).decode()
    assert "epoch 1/9:  40%" in text  # the bar was drawn
    assert _screen(text) == [
        "stage: interrupted by SIGINT; files it had finished are kept, none is half-written"]


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
# one-epoch trainings at 2 threads with VAEPIPE_STRICT_KERNELS=1; the same on AMD EPYCs with
# AVX2 only and with AVX-512. Strict mode is the same across the CPU kinds of one vendor only:
# oneMKL follows the AVX2 branch it is given on Intel CPUs but keeps its own branch on AMD
# ones (it reports AUTO there), and an Intel Xeon (AVX-512) trained other bits.
GOLDEN_VENDOR = "AuthenticAMD"
GOLDEN_WEIGHTS = {
    "mlp/final.pt": "be430deb7507cefe58ff51918e64dcda37740fbb0fd22fc3d4a6f019c75e6643",
    "conv/final.pt": "f380d94535d56e234451d16dbfbf51d857c34bc5403ed456d845603958e3161c",
    "classifier.pt": "7bf2fafec918e1afb737959aa033616baa2dd8d96bd82194a4ddaa0407b56d1d",
}


def weights_sha256(data: bytes) -> str:
    state = torch.load(io.BytesIO(data), weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cpu_vendor() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    return found.group(1) if found else "unknown"


@NEEDS_X86_AVX2
@pytest.mark.skipif(_cpu_vendor() != GOLDEN_VENDOR,
                    reason=f"golden strict-kernel weights are recorded for {GOLDEN_VENDOR} CPUs "
                           f"(oneMKL takes another code branch on each vendor); this is "
                           f"{_cpu_vendor()}")
def test_strict_kernels_train_the_golden_weights_on_every_amd_cpu_with_avx2(tmp_path,
                                                                            small_split, env):
    trained = _train_all(tmp_path / "strict", small_split,
                         {**env, "VAEPIPE_STRICT_KERNELS": "1"}, 2)
    assert {name: weights_sha256(data) for name, data in trained.items()} == GOLDEN_WEIGHTS
