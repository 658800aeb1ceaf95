"""How a stage process starts: kernel settings, a thread count decided once, Ctrl-C / SIGTERM.

Every stage script ends with ``runtime.run_stage(main)``, the one place that sets up the
process. Before ``main`` runs it

* **sets the kernels' environment** (:func:`configure_kernels`): ``MKL_CBWR=AUTO`` (oneMKL's
  conditional numerical reproducibility: a matrix product gives the same bits with 1 and 2
  threads), and with ``VAEPIPE_STRICT_KERNELS=1`` PyTorch's vectorised kernels, oneMKL and
  oneDNN capped at AVX2, so a CPU with AVX-512 runs the same code paths as one without.
  Variables the caller already set are kept. The libraries read these variables at their
  first kernel call, not when they are imported, so this is in time as long as importing a
  stage's modules computes nothing (``tests/test_runtime.py`` checks that each setting takes
  effect in a real stage process);
* **decides the thread count once** (:func:`stage_threads`): ``VAEPIPE_THREADS`` if set, else
  this stage's share of the cores among the stages running at that moment. Each running
  stage holds one slot, an ``flock``-ed file in a directory shared by the user's processes
  (``VAEPIPE_CPU_SLOTS``, default ``$TMPDIR/vaepipe-<uid>-cpu-slots``); a lock dies with its
  process, even one killed by SIGKILL. Two ``dvc queue`` workers on two cores then run one
  thread each instead of four threads fighting over two cores. The count applies to PyTorch
  and to the BLAS / OpenMP pools of numpy, scipy and scikit-learn, and is recorded in the
  stage's metrics;
* **turns SIGINT (Ctrl-C) and SIGTERM into one line** on stderr and exit status 130 / 143
  instead of a traceback. Files are written through :func:`vaepipe.io.atomic_path`, so an
  interrupted stage leaves its earlier complete files and no partial one.

Importing this module changes nothing; outside ``run_stage`` (tests, notebooks) PyTorch keeps
its own defaults.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn

from vaepipe.io import try_lock

THREADS_ENV = "VAEPIPE_THREADS"
SLOTS_ENV = "VAEPIPE_CPU_SLOTS"
STRICT_ENV = "VAEPIPE_STRICT_KERNELS"
STRICT_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT",
                  "ONEDNN_MAX_CPU_ISA": "AVX2"}
MAX_SLOTS = 64

_held: list[int] = []  # this process's slot file descriptor, kept open (and locked) until exit


def configure_kernels() -> None:
    """Set the kernel variables (see the module docstring) unless the caller set them."""
    if os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}:
        for name, value in STRICT_KERNELS.items():
            os.environ.setdefault(name, value)
    os.environ.setdefault("MKL_CBWR", "AUTO")


def cores() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def slots_dir() -> Path:
    return Path(os.environ.get(SLOTS_ENV) or
                Path(tempfile.gettempdir()) / f"vaepipe-{os.getuid()}-cpu-slots")


def running_stages() -> int:
    """Hold a free slot (once per process) and count the slots held, this one included."""
    folder = slots_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(MAX_SLOTS if not _held else 0):
        fd = try_lock(folder / f"slot-{i:02d}")
        if fd is not None:
            _held.append(fd)
            break
    held = 0
    for path in folder.glob("slot-*"):
        # a second open file of our own slot conflicts with our lock too: counted as held
        fd = try_lock(path)
        if fd is None:
            held += 1
        else:
            os.close(fd)  # closing the descriptor releases the probe's lock
    return max(held, 1)


def stage_threads() -> int:
    """``VAEPIPE_THREADS``, else ``cores // running stages`` (at least 1)."""
    pinned = os.environ.get(THREADS_ENV)
    if pinned:
        if not pinned.strip().isdigit() or int(pinned) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {pinned!r}")
        return int(pinned)
    return max(1, cores() // running_stages())


_SIGNALS = {signal.SIGINT: ("interrupted by SIGINT", 130),
            signal.SIGTERM: ("terminated by SIGTERM", 143)}


def _on_signal(signum, frame) -> NoReturn:
    word, status = _SIGNALS[signum]
    # on a terminal, a progress bar (tqdm, leave=False) is drawn on the cursor's line: "\r" and
    # "erase in line" remove it, so the stage's line stands alone and comes last
    erase = "\r\033[K" if sys.stderr.isatty() else ""
    print(f"{erase}{Path(sys.argv[0]).stem}: {word}; files it had finished are kept, none is "
          f"half-written", file=sys.stderr)
    # SystemExit unwinds like an exception, so atomic_path's cleanup still runs, but Python
    # prints no traceback for it
    raise SystemExit(status)


def run_stage(main: Callable[[], int]) -> NoReturn:
    """Set up the process (signals, kernels, threads), run a stage's ``main()``, exit with its
    status. A bad ``VAEPIPE_THREADS`` is one line and status 2."""
    for signum in _SIGNALS:
        signal.signal(signum, _on_signal)
    configure_kernels()
    try:
        threads = stage_threads()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)  # numpy / scipy / scikit-learn pools follow the same count
    sys.exit(main())
