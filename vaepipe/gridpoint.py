"""One grid point of :mod:`vaepipe.grid`, run as a Dask task on a worker: clone the git remote
at the commit into the worker's scratch folder, ``dvc exp run --pull`` the point's params under
its deterministic name, ``dvc exp push`` it (git ref, outputs, run-cache), remove the clone.

Standard library and the worker's PATH (git, dvc) only: the driver sends this module's code to
the workers by value, so a worker needs the pipeline's environment but no copy of this
package; the stages run from the clone's own code (PYTHONPATH is the clone).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# the scratch folder's name inside a worker's local directory
SCRATCH = "vaepipe-grid"
# the DVC remote a point's clone pushes to and pulls from (its local config only)
CLONE_REMOTE = "vaepipe-grid"
# what a point's git commits are signed with where the worker's git has no identity
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "vaepipe grid",
                "GIT_AUTHOR_EMAIL": "vaepipe-grid@localhost",
                "GIT_COMMITTER_NAME": "vaepipe grid",
                "GIT_COMMITTER_EMAIL": "vaepipe-grid@localhost"}


@dataclass(frozen=True)
class Point:
    """One grid point: what a worker needs to run it, and nothing of this machine's."""

    name: str                  # the experiment's name: the same commit and params, the same name
    commit: str                # the baseline commit (full sha)
    settings: tuple[str, ...]  # `-S` values, e.g. ("seed=1", "beta=0.5")
    git_url: str
    dvc_url: str
    threads: int               # VAEPIPE_THREADS of the point's stages

    @property
    def ref(self) -> str:
        """The experiment's git ref, as DVC names it."""
        return f"refs/exps/{self.commit[:2]}/{self.commit[2:]}/{self.name}"

    @property
    def label(self) -> str:
        return " ".join(self.settings) or "(the commit's params)"


def point_name(prefix: str, commit: str, settings: Sequence[str]) -> str:
    """``<prefix>-<10 hex digits>`` of the commit and the sorted settings."""
    digest = hashlib.sha256(json.dumps([commit, sorted(settings)]).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def _run(args: Sequence[str], cwd: str | Path | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(last_error(proc.stdout + proc.stderr)
                           or f"{' '.join(args[:3])} exited with {proc.returncode}")
    return proc


def last_error(output: str) -> str:
    """The line that says why a command failed: a stage's ``error: ...`` (DVC prefixes it in
    red: ``ERROR: ...``), else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    for line in reversed(lines):
        if line.startswith("ERROR: "):
            return line[len("ERROR: "):]
    return lines[-1] if lines else ""


def remote_has(git_url: str, ref: str) -> bool:
    return bool(_run(["git", "ls-remote", git_url, ref]).stdout.strip())


def _scratch() -> Path:
    try:
        from distributed import get_worker
        base = Path(get_worker().local_directory)
    except (ImportError, ValueError):  # not on a Dask worker
        base = Path(tempfile.gettempdir())
    folder = base / SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_point(point: Point) -> dict[str, Any]:
    """Clone, ``dvc exp run --pull``, ``dvc exp push``; the outcome as a plain dict:
    ``state`` (landed / already / failed), ``error``, ``resumed``, ``seconds``, ``host``
    (its metrics reach this machine with the experiment: ``dvc exp pull``)."""
    start = time.monotonic()
    outcome: dict[str, Any] = {"name": point.name, "settings": list(point.settings),
                               "error": "", "resumed": [],
                               "host": os.uname().nodename}
    if remote_has(point.git_url, point.ref):  # run before, and its report was lost with a worker
        return {**outcome, "state": "already", "seconds": 0.0}
    work = Path(tempfile.mkdtemp(prefix=f"{point.name}-", dir=_scratch()))
    env = {**GIT_IDENTITY, **os.environ, "PYTHONPATH": str(work),
           "VAEPIPE_THREADS": str(point.threads)}
    env.pop("VIRTUAL_ENV", None)
    try:
        _run(["git", "clone", "--quiet", "--no-checkout", point.git_url, str(work)])
        _run(["git", "checkout", "--quiet", point.commit], cwd=work)
        _run(["dvc", "remote", "add", "--local", "--force", "--default", CLONE_REMOTE,
              point.dvc_url], cwd=work, env=env)
        settings = [arg for s in point.settings for arg in ("-S", s)]
        ran = _run(["dvc", "exp", "run", "--pull", "-n", point.name, *settings], cwd=work,
                   env=env, check=False)
        log = ran.stdout + ran.stderr
        outcome["resumed"] = [line.strip() for line in log.splitlines()
                              if ": resuming at epoch " in line]
        if ran.returncode != 0:
            return {**outcome, "state": "failed", "seconds": time.monotonic() - start,
                    "error": last_error(log) or f"dvc exp run exited with {ran.returncode}"}
        if remote_has(point.git_url, point.ref):  # a twin of this task finished first
            return {**outcome, "state": "already", "seconds": time.monotonic() - start}
        _run(["dvc", "exp", "push", "--run-cache", "-r", CLONE_REMOTE, point.git_url,
              point.name], cwd=work, env=env)
        return {**outcome, "state": "landed", "seconds": time.monotonic() - start}
    except (OSError, RuntimeError, ValueError) as exc:
        return {**outcome, "state": "failed", "seconds": time.monotonic() - start,
                "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    finally:
        shutil.rmtree(work, ignore_errors=True)




def executing(dask_worker: Any) -> list[str]:
    """The keys of the tasks ``dask_worker`` is running now (``Client.run`` calls it there):
    what the driver counts as running, where the scheduler's count also holds the tasks
    waiting on a worker for its thread."""
    return [str(ts.key) for ts in dask_worker.state.executing]
