"""Process set-up shared by every stage: kernel settings, a fair share of the CPU, Ctrl-C.

A stage script imports this module before anything that loads PyTorch::

    from vaepipe import runtime  # first: kernel settings must precede the first BLAS call
    if __name__ == "__main__":
        runtime.use_fast_allocator()
        runtime.handle_signals()

    ...
    if __name__ == "__main__":
        runtime.run_stage(main)

Four things happen here, none of which changes what a stage computes:

* **tcmalloc** (:func:`use_fast_allocator`): the stage re-executes itself with gperftools'
  tcmalloc preloaded where it is installed; ``VAEPIPE_ALLOCATOR=system`` keeps glibc's.

* **Thread-independent BLAS.** ``MKL_CBWR=AUTO`` (oneMKL's conditional numerical
  reproducibility) makes matrix products give the same bits whatever the number of threads.
  Without it a skinny product (a 10-class head's weight gradient at batch 128) sums in a
  different order with 1 and 2 threads, so the CPU share below would change the weights.
* **A share of the cores.** Every running stage holds one slot, an ``flock``-ed file in a
  directory shared by all processes of the user (``VAEPIPE_CPU_SLOTS``, default
  ``$TMPDIR/vaepipe-<uid>-cpu-slots``); a stage uses ``cores // running stages`` threads and
  re-checks every second while it trains (:func:`rebalance`). Two ``dvc queue`` workers on two
  cores then run one thread each instead of four threads fighting over two cores, and the
  one still running takes both cores back when the other ends. A lock dies with its process,
  even one killed by SIGKILL, so no slot leaks. ``VAEPIPE_THREADS=N`` pins the count instead.
* **Strict kernels** (``VAEPIPE_STRICT_KERNELS=1``): PyTorch's vectorised kernels, oneMKL and
  oneDNN all capped at AVX2 (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR=AVX2,STRICT``,
  ``ONEDNN_MAX_CPU_ISA``), so a CPU with AVX-512 runs the same code paths as one without.
  Variables the caller already set are left as they are.

:func:`handle_signals` turns Ctrl-C (SIGINT) and SIGTERM into one line on stderr and exit
status 130 / 143 instead of a traceback; files are written through :func:`vaepipe.io.atomic_path`,
so an interrupted stage leaves its earlier complete files and no partial one.
"""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NoReturn

ALLOCATOR_ENV = "VAEPIPE_ALLOCATOR"
THREADS_ENV = "VAEPIPE_THREADS"
SLOTS_ENV = "VAEPIPE_CPU_SLOTS"
STRICT_ENV = "VAEPIPE_STRICT_KERNELS"
STRICT_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT",
                  "ONEDNN_MAX_CPU_ISA": "AVX2"}
MAX_SLOTS = 64
RECHECK_SECONDS = 1.0


def strict_requested() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _configure_kernels() -> None:
    if strict_requested():
        for name, value in STRICT_KERNELS.items():
            os.environ.setdefault(name, value)
    os.environ.setdefault("MKL_CBWR", "AUTO")


_configure_kernels()  # at import, before any module of this process runs a matrix product


def kernel_settings() -> dict[str, str]:
    """The kernel variables this process runs with (recorded beside timings)."""
    return {name: os.environ.get(name, "") for name in ("MKL_CBWR", "ATEN_CPU_CAPABILITY",
                                                          "ONEDNN_MAX_CPU_ISA")}


# ---------------------------------------------------------------------------------------------
# Allocator


def fast_allocator() -> str | None:
    """The soname of gperftools' tcmalloc (Debian: ``libtcmalloc-minimal4``), or None."""
    from ctypes.util import find_library

    return find_library("tcmalloc_minimal") or find_library("tcmalloc")


def use_fast_allocator() -> None:
    """Re-execute this stage with tcmalloc preloaded, where it is installed (Linux only).

    PyTorch's CPU kernels allocate and free a few hundred buffers per training step; glibc's
    malloc returns large ones to the kernel and faults them in again, tcmalloc keeps them:
    a conv step is 1.12x and an MLP step 1.08x faster on a 2-core CPU (``make bench-alloc``).
    Every tensor is 64-byte aligned whichever allocator runs, so the numbers are the same
    bits. ``VAEPIPE_ALLOCATOR=system`` keeps glibc's malloc. The process keeps its PID (exec),
    so DVC, signals and CPU slots see one process. Call it first, before the slow imports.
    """
    choice = os.environ.get(ALLOCATOR_ENV, "").strip().lower() or "tcmalloc"
    if choice not in {"tcmalloc", "system"}:
        print(f"error: {ALLOCATOR_ENV} must be tcmalloc or system, got "
              f"{os.environ[ALLOCATOR_ENV]!r}", file=sys.stderr)
        raise SystemExit(2)
    if (sys.platform != "linux" or choice == "system"
            or "tcmalloc" in os.environ.get("LD_PRELOAD", "")):
        return
    lib = fast_allocator()
    if lib is None:
        return
    preload = os.environ.get("LD_PRELOAD", "")
    os.environ["LD_PRELOAD"] = f"{lib}:{preload}" if preload else lib
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps interpreter options (-X, -m ...) as the stage was started
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# ---------------------------------------------------------------------------------------------
# CPU share


def cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def slots_dir() -> Path:
    return Path(os.environ.get(SLOTS_ENV) or
                Path(tempfile.gettempdir()) / f"vaepipe-{os.getuid()}-cpu-slots")


class _Share:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.slot: int | None = None
        self.threads: int | None = None
        self.checked = 0.0
        self.active = False  # set by run_stage: library calls elsewhere leave threads alone

    def acquire(self) -> None:
        """Hold the first free slot (a process holds at most one)."""
        if self.fd is not None:
            return
        folder = slots_dir()
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(MAX_SLOTS):
            fd = os.open(folder / f"slot-{i:02d}", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.fd, self.slot = fd, i
            return
        # more than MAX_SLOTS stages at once: run unregistered, counted by the others' view

    def running(self) -> int:
        """Stages holding a slot now, this one included."""
        folder = slots_dir()
        count = 1 if self.fd is not None else 0
        for i in range(MAX_SLOTS):
            if i == self.slot:
                continue
            path = folder / f"slot-{i:02d}"
            if not path.exists():
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                count += 1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return max(count, 1)


_share = _Share()


def share_threads() -> int:
    """The thread count this stage should use now: ``VAEPIPE_THREADS``, else its core share."""
    pinned = os.environ.get(THREADS_ENV)
    if pinned:
        try:
            value = int(pinned)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {pinned!r}")
        return value
    _share.acquire()
    return max(1, cores() // _share.running())


def _apply(threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if threads != _share.threads:
        threadpool_limits(threads)  # numpy / scipy / scikit-learn pools follow the same share
    _share.threads = threads


def rebalance(force: bool = False) -> int:
    """Re-read the share (at most once per second unless ``force``) and apply it to PyTorch
    and the BLAS / OpenMP pools of numpy, scipy and scikit-learn. Returns the thread count.

    Only inside :func:`run_stage`; elsewhere (tests, notebooks) it returns 0 and changes
    nothing. Training loops call it after every step: it costs a clock read."""
    now = time.monotonic()
    if not _share.active:
        return _share.threads or 0
    if _share.threads is not None and not force and now - _share.checked < RECHECK_SECONDS:
        return _share.threads
    _share.checked = now
    threads = share_threads()
    _apply(threads)
    return threads


# ---------------------------------------------------------------------------------------------
# Stage entry point


_SIGNALS = {signal.SIGINT: ("interrupted by SIGINT", 130),
            signal.SIGTERM: ("terminated by SIGTERM", 143)}


def _on_signal(signum, frame) -> NoReturn:
    word, status = _SIGNALS[signum]
    _close_progress_bars()
    print(f"{Path(sys.argv[0]).stem}: {word}; files it had finished are kept, none is "
          f"half-written", file=sys.stderr)
    # SystemExit unwinds like an exception, so atomic_path's cleanup still runs, but Python
    # prints no traceback for it
    raise SystemExit(status)


def handle_signals() -> None:
    """From now on SIGINT and SIGTERM end this process with one line and status 130 / 143.

    A stage script calls it right after importing this module, before its slow imports
    (PyTorch takes seconds), so a Ctrl-C during them is no traceback either.
    """
    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)


def _close_progress_bars() -> None:
    """Erase any tqdm bar, so the last line is the stage's message, not a half-drawn bar."""
    std = sys.modules.get("tqdm.std")
    if std is not None:
        for bar in list(getattr(std.tqdm, "_instances", ())):
            bar.close()


def run_stage(main: Callable[[], int]) -> NoReturn:
    """Run a stage's ``main()`` with its CPU share; exit with its status.

    SIGINT (Ctrl-C) and SIGTERM end the stage with one line on stderr and status 130 / 143:
    no traceback, and no partial output (every file is written to a temporary name first and
    renamed when complete; the temporary is removed as the exit unwinds).
    """
    name = Path(sys.argv[0]).stem
    handle_signals()
    _share.active = True
    try:
        threads = rebalance(force=True)
    except ValueError as exc:  # a bad VAEPIPE_THREADS
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("VAEPIPE_VERBOSE_RUNTIME"):
        print(f"{name}: {threads} threads, kernels {kernel_settings()}", file=sys.stderr)
    sys.exit(main())
