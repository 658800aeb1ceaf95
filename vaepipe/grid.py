"""Experiment grids on a Dask cluster: ``python -m vaepipe.grid`` (``make grid``).

    python -m vaepipe.grid -S seed=1,2,3 -S beta=0.5,1.0       # a local cluster on this machine
    python -m vaepipe.grid -S seed=1,2 --scheduler tcp://10.0.0.5:8786 --threads 8

The ``-S`` grid syntax is `dvc exp run --queue`'s (DVC expands it): every combination is one
point. Each point is one Dask task: a worker clones the git remote at the commit (default
HEAD) into its scratch folder, runs ``dvc exp run --pull`` there with the point's params under
a name derived from the commit and the params (stages whose inputs did not change are pulled
or restored from the DVC remote's run-cache, never recomputed), and ``dvc exp push``es the
experiment (its git ref and its outputs, run-cache included); its clone is then removed. This
machine then ``dvc exp pull``s every finished point, so ``dvc exp show``, ``dvc metrics diff``
and ``make compare`` see them, and prints the comparison.

Before anything is submitted the command checks that the commit is on the git remote and that
the baseline's outputs and run-cache are on the DVC remote (``dvc push --run-cache``), and says
in one line what to push if not. Scheduling, retries and a dead worker's lost task are Dask's:
a task that finds its point already on the git remote returns it without running it again, so
a point never lands twice. Exit codes: 0 every point landed, 1 some failed (each with its
one-line error), 2 bad arguments, remotes not ready or no scheduler (nothing submitted), 130
interrupted (what landed stays; the same command then runs the rest).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vaepipe.gridpoint import (CLONE_REMOTE, Point, executing, last_error, point_name,
                              run_point)

ROOT_MARKERS = ("dvc.yaml", ".dvc")


class GridError(Exception):
    """Bad arguments or remotes that are not ready: one line, before anything is submitted."""


# --------------------------------------------------------------------------------------------
# The points


def expand(settings: Sequence[str]) -> list[tuple[str, ...]]:
    """The grid's points as `-S` values, expanded by DVC's own sweep parser."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps, to_hydra_overrides

    if not settings:
        return [()]
    try:
        overrides = to_path_overrides(list(settings))
        sweep = any(o.is_sweep_override() for path in overrides
                    for o in to_hydra_overrides(overrides[path]))
    except Exception as exc:  # noqa: BLE001 - hydra's parser raises several kinds
        raise GridError(f"-S: {exc}".splitlines()[0]) from exc
    points = get_hydra_sweeps(overrides) if sweep else [overrides]
    return [tuple(value if path == "params.yaml" else f"{path}:{value}"
                  for path, values in point.items() for value in values) for point in points]


# --------------------------------------------------------------------------------------------
# This machine: remotes, checks, the driver


def find_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if all((folder / m).exists() for m in ROOT_MARKERS):
            return folder
    raise GridError(f"{start} is not inside a DVC project (no dvc.yaml and .dvc above it)")


def _git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise GridError(f"git {' '.join(args)}: {last_error(proc.stderr) or 'failed'}")
    return proc.stdout.strip()


def resolve_commit(root: Path, rev: str) -> str:
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if not commit:  # --quiet: nothing on stdout where rev is no commit
        raise GridError(f"--rev: {rev!r} is not a commit of {root}")
    return commit


def git_url(root: Path, remote: str) -> str:
    """A git remote's URL (a configured name, or a URL or path given as is)."""
    names = _git(root, "remote").split()
    if remote in names:
        url = _git(root, "remote", "get-url", remote)
    elif "://" in remote or "@" in remote or Path(remote).exists():
        url = remote
    else:
        raise GridError(f"--git-remote: {remote!r} is neither a remote of this repository "
                        f"({', '.join(names) or 'none configured'}) nor a URL or path")
    if "://" not in url and "@" not in url and not Path(url).is_absolute():
        url = str((root / url).resolve())
    return url


def check_git(root: Path, url: str, commit: str, remote: str) -> None:
    """The commit is on the git remote (some ref there has it)."""
    proc = subprocess.run(["git", "ls-remote", url], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GridError(f"the git remote {url} cannot be read: "
                        f"{last_error(proc.stderr) or 'git ls-remote failed'}")
    tips = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    for tip in tips:  # a tip this repository does not have exits 128: not an ancestor
        if subprocess.run(["git", "merge-base", "--is-ancestor", commit, tip], cwd=root,
                          capture_output=True).returncode == 0:
            return
    raise GridError(f"commit {commit[:8]} is not on the git remote {url}: push it first "
                    f"(git push {remote} HEAD:<branch>)")


def dvc_remote(repo: Any, remote: str | None) -> tuple[str, str]:
    """(name, URL) of the DVC remote: a configured name (default: the default remote) or a
    URL or path given to the command (then named for this command only)."""
    configured = repo.config.get("remote", {})
    if remote is None:
        remote = repo.config["core"].get("remote")
        if remote is None:
            raise GridError("no DVC remote: give --dvc-remote, or set a default one "
                            "(dvc remote add -d NAME URL)")
    if remote in configured:
        url = str(configured[remote]["url"])
        if "://" not in url and not Path(url).is_absolute():  # relative to .dvc/
            url = str((Path(repo.dvc_dir) / url).resolve())
        return remote, url
    if "://" in remote or Path(remote).is_absolute():
        return CLONE_REMOTE, remote
    raise GridError(f"--dvc-remote: {remote!r} is neither a DVC remote of this repository "
                    f"({', '.join(configured) or 'none configured'}) nor a URL or absolute path")


def check_dvc(root: Path, commit: str, remote: str | None) -> tuple[str, str]:
    """The commit's outputs and its stages' run-cache entries are on the DVC remote; its
    (name, URL), the name :data:`CLONE_REMOTE` for a URL given to the command."""
    from dvc.repo import Repo

    with Repo(str(root)) as probe:
        name, url = dvc_remote(probe, remote)
    extra = {"remote": {name: {"url": url}}} if name == CLONE_REMOTE else None
    with Repo(str(root), config=extra) as repo:
        used: dict = {}
        for _ in repo.brancher(revs=[commit], workspace=False):  # the commit, not the work tree
            for odb, objs in repo.index.used_objs(remote=name).items():
                used.setdefault(odb, set()).update(objs)
        missing = 0
        for odb, objs in used.items():  # outside the commit: its config may lack the remote
            status = repo.cloud.status(objs, remote=name, odb=odb)
            missing += len(status.new) + len(status.missing)
        if missing:
            raise GridError(f"{missing} output(s) of commit {commit[:8]} are not on the DVC "
                            f"remote {url}: push them first (dvc push -r {name} --run-cache)")
        absent = _runs_not_on_remote(repo, commit, name)
        if absent:
            raise GridError(f"the run-cache of {', '.join(absent)} is not on the DVC remote "
                            f"{url}: push it first (dvc push -r {name} --run-cache)")
    return name, url


def _runs_not_on_remote(repo: Any, commit: str, remote: str) -> list[str]:
    """The stages of ``commit`` that DVC keeps in its run-cache (a command, and no uncached
    output but metrics and plots) whose entry is not on the remote. The entry's key is DVC's
    own: the hash of the stage's dvc.lock entry, outputs by path."""
    from dvc.stage.cache import _get_cache_hash
    from dvc.utils.serialize import parse_yaml

    text = _git(Path(repo.root_dir), "show", f"{commit}:dvc.lock", check=False)
    locked = (parse_yaml(text, "dvc.lock") or {}).get("stages", {}) if text else {}
    odb = repo.cloud.get_remote_odb(remote, "grid", hash_name="md5-dos2unix")
    absent = []
    for _ in repo.brancher(revs=[commit], workspace=False):
        for stage in repo.index.stages:
            if not stage.cmd or stage.always_changed or stage.name not in locked \
                    or any(out.persist or not (out.use_cache or out.is_metric or out.is_plot)
                           for out in stage.outs):
                continue
            key = _get_cache_hash(dict(locked[stage.name]), key=True)
            if not odb.fs.exists(odb.fs.join(odb.path, "runs", key[:2], key)):
                absent.append(stage.name)
    return absent


@dataclass
class Progress:
    """Points done / running / failed, printed as one line whenever it changes."""

    total: int
    landed: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    running: int = 0
    _last: str = ""

    def show(self, out=sys.stdout) -> None:
        line = (f"grid: {len(self.landed)} done, {self.running} running, "
                f"{len(self.failed)} failed of {self.total}")
        if line != self._last:
            print(line, file=out, flush=True)
            self._last = line


def _running(client: Any, keys: set) -> int:
    """How many of ``keys`` a worker is running now (0 where a worker cannot be asked)."""
    try:
        running = client.run(executing, on_error="return")
    except Exception:  # noqa: BLE001 - only the progress line needs it
        return 0
    return sum(1 for found in running.values() if isinstance(found, list)
               for key in found if key in keys)


def submit(client: Any, points: Sequence[Point], out=sys.stdout) -> Progress:
    """Run the points as one Dask task each (one at a time per worker thread), printing
    progress and each point's outcome as it arrives."""
    import cloudpickle
    from distributed import as_completed

    cloudpickle.register_pickle_by_value(sys.modules[run_point.__module__])
    futures = {client.submit(run_point, p, key=f"grid-point-{p.name}", pure=False): p
               for p in points}
    keys = {f.key for f in futures}
    progress = Progress(len(points), running=_running(client, keys))
    progress.show(out)
    pending = as_completed(futures, with_results=False)
    while not pending.is_empty():
        batch = pending.next_batch(block=False) if pending.has_ready() else []
        for future in batch:
            point = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a task Dask gave up on (KilledWorker)
                result = {"name": point.name, "state": "failed", "settings": list(point.settings),
                          "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                          "resumed": [], "seconds": 0.0}
            (progress.failed if result["state"] == "failed" else progress.landed).append(result)
            _report(point, result, out)
        progress.running = _running(client, keys - {f.key for f in futures if f.done()})
        progress.show(out)
        if not batch:
            time.sleep(1.0)
    return progress


def _report(point: Point, result: dict, out) -> None:
    for line in result.get("resumed", []):
        print(f"  {point.name}: {line}", file=out)
    if result["state"] == "failed":
        print(f"  {point.name} ({point.label}) failed: {result['error']}", file=out, flush=True)
    else:
        note = " (already on the git remote)" if result["state"] == "already" else ""
        print(f"  {point.name} ({point.label}) landed in {result['seconds']:.0f} s"
              f"{note}", file=out, flush=True)


def pull(root: Path, git_remote: str, dvc: tuple[str, str], names: Sequence[str]) -> None:
    """`dvc exp pull` the named experiments into this repository (git refs and outputs);
    ``dvc``: the DVC remote's (name, URL) from :func:`check_dvc`. The remote is named in the
    local config for the pull only: `dvc exp pull` reads the experiments' committed config,
    which need not hold a remote added after their commit."""
    if not names:
        return
    _, url = dvc
    subprocess.run(["dvc", "remote", "add", "--local", "--force", CLONE_REMOTE, url], cwd=root,
                   capture_output=True, check=True)
    try:
        proc = subprocess.run(["dvc", "exp", "pull", "--force", "-r", CLONE_REMOTE, git_remote,
                               *names], cwd=root, capture_output=True, text=True)
    finally:
        subprocess.run(["dvc", "remote", "remove", "--local", CLONE_REMOTE], cwd=root,
                       capture_output=True)
    if proc.returncode != 0:
        raise GridError(f"dvc exp pull: {last_error(proc.stdout + proc.stderr)}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vaepipe.grid", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", "--set-param", action="append", default=[], dest="settings",
                    metavar="KEY=V1,V2", help="a param and its values, as `dvc exp run "
                    "--queue -S` (repeatable; every combination is a point)")
    ap.add_argument("--rev", default="HEAD", help="the commit to run (default HEAD)")
    ap.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. "
                    "tcp://10.0.0.5:8786 (default: a local cluster on this machine)")
    ap.add_argument("--workers", type=int, default=None, help="the local cluster's workers "
                    "(default: one per two cores)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each point "
                    "(VAEPIPE_THREADS; default: the cores divided by the local workers, "
                    "or 2 on a scheduler's workers)")
    ap.add_argument("--git-remote", default="origin", help="where workers clone from and "
                    "push to: a git remote's name or URL (default origin)")
    ap.add_argument("--dvc-remote", help="a DVC remote's name or URL (default: the "
                    "repository's default remote)")
    ap.add_argument("--name", default="grid", help="the experiments' name prefix (default "
                    "grid): a point is <prefix>-<hash of commit and params>")
    ap.add_argument("--no-compare", action="store_true", help="skip the comparison table")
    args = ap.parse_args(argv)
    try:
        points, root, git = _prepare(args)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        client, cluster = _connect(args)
    except (OSError, ValueError) as exc:  # refused, timed out, or not an address
        where = (f"--scheduler: cannot reach a Dask scheduler at {args.scheduler}"
                 if args.scheduler else "the local Dask cluster did not start")
        print(f"error: {where} ({str(exc).splitlines()[0]})", file=sys.stderr)
        return 2
    print(f"grid: {len(points)} point(s) of commit {points[0].commit[:8]}, "
          f"{points[0].threads} torch thread(s) each", flush=True)
    try:
        progress = submit(client, points)
    except KeyboardInterrupt:
        print("grid: interrupted; the points that landed stay on the remotes, and the same "
              "command runs only the others", file=sys.stderr)
        return 130
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    names = [r["name"] for r in progress.landed]
    try:
        pull(root, git, args.dvc, names)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if names and not args.no_compare:
        _compare(root)
    return 1 if progress.failed else 0


def _prepare(args: argparse.Namespace) -> tuple[list[Point], Path, str]:
    for flag in ("workers", "threads"):
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= 512:
            raise GridError(f"--{flag} must be between 1 and 512, got {value}")
    if args.scheduler is not None and args.workers is not None:
        raise GridError("--workers sizes the local cluster; a scheduler's workers are "
                        "started where the cluster runs (docs/cluster.md)")
    if not args.name.replace("-", "").replace("_", "").isalnum():
        raise GridError(f"--name must be letters, digits, - and _, got {args.name!r}")
    root = find_root(Path.cwd())
    commit = resolve_commit(root, args.rev)
    git = git_url(root, args.git_remote)
    settings = expand(args.settings)
    check_git(root, git, commit, args.git_remote)
    args.dvc = check_dvc(root, commit, args.dvc_remote)
    cores = os.cpu_count() or 1
    if args.scheduler is None:
        args.workers = args.workers or max(1, cores // 2)
        threads = args.threads or max(1, cores // args.workers)
    else:
        threads = args.threads or 2
    points = [Point(point_name(args.name, commit, s), commit, s, git, args.dvc[1], threads)
              for s in settings]
    return points, root, git


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    if args.scheduler is not None:
        return Client(args.scheduler, timeout="10s"), None
    # a worker gets a point only when its thread is free: none waits behind a busy worker
    # while another is idle (Dask's default hands a 1-thread worker two)
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    return Client(cluster), cluster


def _compare(root: Path) -> None:
    from vaepipe.compare import main as compare

    cwd = Path.cwd()
    os.chdir(root)
    try:
        compare([])
    finally:
        os.chdir(cwd)


if __name__ == "__main__":
    sys.exit(main())
