"""The resume state of a training: saved after every epoch, so a killed stage goes on where it
stopped and ends with the bytes an uninterrupted run would have written.

DVC deletes a stage's outputs before it reruns it, and a ``persist`` output would switch off
its run-cache, so the state lives outside the project: in ``$VAEPIPE_RESUME_DIR``, else
``$XDG_CACHE_HOME/vaepipe/resume`` (``~/.cache/vaepipe/resume``). Its file name is a digest of
everything that decides the run: the stage's name and params, the content of its input files
and of its code (every vaepipe module the process imported, and the stage's script), so the
same inputs find it and other inputs never do. A state holds what the rest of the run depends
on (weights, optimizer and scheduler, every random generator, the history, the bytes of the
checkpoints written so far, a stage's own extras); it is written atomically and fsynced, one
process at a time (a lock), and removed when the stage has finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from vaepipe.io import atomic_path, try_lock
from vaepipe.train.device import cpu_model

RESUME_ENV = "VAEPIPE_RESUME_DIR"
STATE_FORMAT = 1


def resume_dir() -> Path:
    """Where resume states live: ``$VAEPIPE_RESUME_DIR``, else the user's cache folder."""
    if os.environ.get(RESUME_ENV):
        return Path(os.environ[RESUME_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vaepipe" / "resume"


def _digest_files(paths: Iterable[str | Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        out[Path(path).name] = h.hexdigest()
    return out


def code_digest() -> str:
    """A digest of the code this process runs: each imported vaepipe module and the script."""
    package = Path(__file__).resolve().parents[1]
    files = {Path(sys.argv[0]).resolve()} if sys.argv and sys.argv[0] else set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(package):
            files.add(Path(path).resolve())
    h = hashlib.sha256()
    for path in sorted(files):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def machine() -> dict[str, Any]:
    """What can change a result's last bits: threads, CPU kind, torch version."""
    return {"threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": str(torch.__version__)}


def rng_state() -> dict[str, Any]:
    """torch's global CPU (and CUDA) generator states."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Resume:
    """The resume state of one stage's training (``stage`` names it in every line it prints).

    ``params`` are the params the stage reads, ``inputs`` its input files. :meth:`load` gives
    the saved state or None, :meth:`save` writes one after an epoch, :meth:`finish` removes it.
    Stages add their own extras with :meth:`attach` (the sweep's recorded frames).
    """

    def __init__(self, stage: str, params: Any, inputs: Iterable[str | Path],
                 log: Callable[[str], None] | None = None):
        self.stage = stage
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        key = json.dumps({"stage": stage, "params": params, "inputs": _digest_files(inputs),
                          "code": code_digest()}, sort_keys=True, default=str)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)
        self.path = resume_dir() / f"{safe}-{self.key}.pt"
        self._lock: int | None = None
        self._extras: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self.enabled = True

    def attach(self, name: str, get: Callable[[], Any], put: Callable[[Any], None]) -> None:
        """Save ``get()`` with every state under ``name``; a resumed state calls ``put``."""
        self._extras[name] = (get, put)

    def load(self) -> dict | None:
        """The saved state of these inputs, or None (with one line saying why, where one was
        there but cannot be used). Takes the lock: a second process with the same inputs
        neither resumes nor saves."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = try_lock(self.path.with_suffix(".lock"))
        except OSError as exc:
            return self._disable(f"its folder {self.path.parent} is not usable ({exc})")
        if self._lock is None:
            return self._disable("another process is training with the same inputs")
        if not self.path.exists():
            self._other_states()
            return None
        try:
            state = self._read()
        except Exception as exc:  # noqa: BLE001 - a truncated file raises any of many errors
            self.log(f"{self.stage}: the saved state {self.path} is unreadable and was ignored "
                     f"({type(exc).__name__}); starting at epoch 1")
            return None
        self._say_resumed(state)
        for name, (_, put) in self._extras.items():
            put(state["extras"][name])
        return state

    def _read(self) -> dict:
        state = torch.load(self.path, weights_only=True, map_location="cpu")
        needed = {"epoch", "epochs", "saved", "machine", "rng", "extras"}
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT \
                or not needed <= state.keys() or not isinstance(state["machine"], dict) \
                or not set(self._extras) <= state["extras"].keys():
            raise ValueError("not a resume state of this code")
        return state

    def _disable(self, why: str) -> None:
        self.enabled = False
        self.log(f"{self.stage}: {why}; this run neither resumes nor saves a state")
        return None

    def _other_states(self) -> None:
        prefix = self.path.name.rsplit("-", 1)[0] + "-"
        others = [p for p in self.path.parent.glob(f"{prefix}*.pt") if p != self.path]
        if others:
            self.log(f"{self.stage}: a saved state of other params, data or code is not "
                     f"used; starting at epoch 1")

    def _say_resumed(self, state: dict) -> None:
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state["saved"]))
        self.log(f"{self.stage}: resuming at epoch {state['epoch'] + 1} of {state['epochs']} "
                 f"(saved {saved})")
        now = machine()
        if state["machine"] != now:
            differs = ", ".join(f"{k} {state['machine'][k]} -> {now[k]}" for k in now
                                if state["machine"].get(k) != now[k])
            self.log(f"{self.stage}: saved under other settings ({differs}): the result may "
                     f"differ in the last bits from an uninterrupted run")

    def save(self, epoch: int, epochs: int, state: dict | Callable[[], dict]) -> None:
        """Write the state after ``epoch`` of ``epochs`` atomically and durably; ``state``, or
        the function that makes it, is called only while saving is on. Where the stage's
        outputs were removed under it (a deleted experiment folder: FileNotFoundError), the
        last good state is kept and this run saves no more, saying so in one line."""
        if not self.enabled:
            return
        try:
            state = state() if callable(state) else state
        except FileNotFoundError as exc:
            self._disable(f"{exc}")
            return
        state = {"format": STATE_FORMAT, "epoch": epoch, "epochs": epochs, "saved": time.time(),
                 "machine": machine(), "rng": rng_state(),
                 "extras": {name: get() for name, (get, _) in self._extras.items()}, **state}
        with atomic_path(self.path) as tmp, tmp.open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.path.parent)

    def finish(self) -> None:
        """The stage is done: remove its state (and lock file) and release the lock."""
        if self.enabled:
            self.path.unlink(missing_ok=True)
        if self._lock is not None:
            self.path.with_suffix(".lock").unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Release the lock and keep the state, as the end of the process does."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def history_rows(rows: Iterable[dict]) -> list[dict]:
    """A saved history as the loop builds it: its keys interned like the loop's own literals,
    so a resumed run pickles it (in the classifier's checkpoint) to the same bytes."""
    return [{sys.intern(k): v for k, v in row.items()} for row in rows]


def file_tensors(paths: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    """The files ``paths``, each as a uint8 tensor (a state restores them; tensors, so the
    state loads with ``weights_only=True``). Every one must be there: a missing one was
    removed under the running stage (FileNotFoundError), and a state without it would
    resume into a run that lacks it."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} removed while the stage ran")
    return {str(p): torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
            for p in paths}


def restore_files(files: dict[str, torch.Tensor]) -> None:
    """Write back the files a state holds (DVC removed them before the rerun)."""
    for path, data in files.items():
        with atomic_path(path) as tmp:
            tmp.write_bytes(data.numpy().tobytes())
