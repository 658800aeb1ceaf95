"""`python -m vaepipe.grid` with real processes on 127.0.0.1: a `dask scheduler` and two `dask
worker`s, each with its own scratch folder, that share nothing with the driver but a bare git
repository and a folder used as the DVC remote. The grid lands in the driver's `dvc exp show`,
a worker killed mid-task loses its point to the other one (which resumes the training from the
shared resume folder) and a bad point fails alone. The embedded local cluster runs a grid too,
and nothing is submitted until the remotes hold what the workers need."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaepipe.grid import GridError, expand
from vaepipe.gridpoint import point_name

DASK = str(Path(sys.executable).parent / "dask")
TIMINGS = {"train_seconds", "images_per_second", "seconds", "eval_seconds"}


def test_points_are_dvcs_sweep_syntax_and_names_depend_on_commit_and_params_only():
    assert expand(["seed=1,2", "beta=0.5,2"]) == [
        ("seed=1", "beta=0.5"), ("seed=1", "beta=2"), ("seed=2", "beta=0.5"),
        ("seed=2", "beta=2")]
    assert expand([]) == [()]
    assert expand(["conv.channels=[16,32]", "seed=3"]) == [("conv.channels=[16,32]", "seed=3")]
    name = point_name("grid", "a" * 40, ("seed=1", "beta=0.5"))
    assert re.fullmatch(r"grid-[0-9a-f]{10}", name)
    assert point_name("grid", "a" * 40, ("beta=0.5", "seed=1")) == name
    assert point_name("grid", "b" * 40, ("seed=1", "beta=0.5")) != name
    assert point_name("grid", "a" * 40, ("seed=2", "beta=0.5")) != name
    with pytest.raises(GridError, match="^-S: "):
        expand(["seed=[1,2"])


def _grid(project, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaepipe.grid", *args], cwd=project.root,
                          env=env or project.env, capture_output=True, text=True, timeout=900)


def _remotes(project, base: Path, push: bool = True) -> tuple[Path, Path]:
    """A bare git repository (origin) and a DVC remote folder (default remote 'storage',
    committed), the commit and the baseline's outputs and run-cache pushed to them."""
    bare, store = base / "remote.git", base / "dvc-store"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    project.dvc("remote", "add", "-d", "storage", str(store))
    project.git("commit", "-q", "-m", "the DVC remote", ".dvc/config")
    project.git("remote", "add", "origin", str(bare))
    if push:
        project.git("push", "-q", "origin", "HEAD:main")
        project.dvc("push", "-q", "--run-cache")
    return bare, store


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_nothing_is_submitted_until_the_remotes_hold_what_workers_need(tiny_repro, tmp_path):
    project = tiny_repro
    line = _one_error(_grid(project, "-S", "seed=1,2"))
    assert "--git-remote: 'origin' is neither a remote of this repository" in line
    _remotes(project, tmp_path, push=False)
    commit = project.git("rev-parse", "HEAD").stdout.strip()
    line = _one_error(_grid(project, "-S", "seed=1,2"))
    assert f"commit {commit[:8]} is not on the git remote {tmp_path / 'remote.git'}" in line
    project.git("push", "-q", "origin", "HEAD:main")
    line = _one_error(_grid(project, "-S", "seed=1,2"))
    assert re.search(r"\d+ output\(s\) of commit \w{8} are not on the DVC remote .*dvc-store: "
                     r"push them first \(dvc push -r storage --run-cache\)$", line), line
    project.dvc("push", "-q")
    line = _one_error(_grid(project, "-S", "seed=1,2"))
    assert re.search(r"the run-cache of download, split, .* is not on the DVC remote .*dvc-store: "
                     r"push it first \(dvc push -r storage --run-cache\)$", line), line
    line = _one_error(_grid(project, "-S", "seed=1,2", "--rev", "no-such-branch"))
    assert line == f"error: --rev: 'no-such-branch' is not a commit of {project.root}"
    line = _one_error(_grid(project, "-S", "seed=1,2", "--workers", "0"))
    assert line == "error: --workers must be between 1 and 512, got 0"
    project.dvc("push", "-q", "--run-cache")
    # the work tree's own outputs (an experiment applied here, say) are not the commit's
    with (project.root / "reports/report.html").open("a") as html:
        html.write("<!-- changed in the work tree -->\n")
    project.dvc("commit", "-q", "-f", "visualize")
    line = _one_error(_grid(project, "-S", "seed=1,2", "--scheduler", "tcp://127.0.0.1:9"))
    assert line.startswith("error: --scheduler: cannot reach a Dask scheduler at "
                           "tcp://127.0.0.1:9 ("), line


def _exp_refs(bare: Path) -> list[str]:
    out = subprocess.run(["git", "ls-remote", str(bare), "refs/exps/*"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[1].rsplit("/", 1)[1] for line in out.splitlines()]


def _shown(project) -> dict:
    """run label (an experiment's name) -> its Run (params and metrics flattened), read from
    `dvc exp show --json` the way `make compare` reads it."""
    from vaepipe.compare import runs_from_exp_show

    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    return {run.label: run for run in runs_from_exp_show(shown)}


def _landed(output: str) -> dict[str, str]:
    """point name -> its settings, from the driver's lines."""
    return dict((m.group(1), m.group(2)) for m in
                re.finditer(r"^  (grid-[0-9a-f]{10}) \((.*)\) landed in", output, re.M))


class Cluster:
    """`dask scheduler` and `dask worker`s on 127.0.0.1, each in its own process group."""

    def __init__(self, base: Path, env: dict):
        self.base, self.env, self.procs = base, env, []
        info = base / "scheduler.json"
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                      "--no-dashboard", "--scheduler-file", str(info)], base)
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(info.read_text())["address"]

    def _start(self, argv, cwd) -> subprocess.Popen:
        log = open(cwd / f"{argv[1]}-{len(self.procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def worker(self, name: str) -> subprocess.Popen:
        scratch = self.base / name
        scratch.mkdir()
        return self._start([DASK, "worker", self.address, "--nthreads", "1", "--nworkers", "1",
                            "--host", "127.0.0.1", "--no-dashboard", "--name", name,
                            "--local-directory", str(scratch)], scratch)

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=120)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _saved_under(worker: subprocess.Popen, states: Path) -> int:
    """The epochs saved by the train-conv running in ``worker``'s process tree (0 if none):
    its state is the one whose lock file that stage holds open."""
    import psutil

    from conftest import state_epochs

    try:
        for child in psutil.Process(worker.pid).children(recursive=True):
            argv = child.cmdline()
            if argv and os.path.basename(argv[0]).startswith("python") \
                    and "stages/train.py --model conv" in " ".join(argv):
                for opened in child.open_files():
                    lock = Path(opened.path)
                    if lock.parent == states and lock.suffix == ".lock":
                        return state_epochs(lock.with_suffix(".pt"))
    except psutil.NoSuchProcess:
        pass
    return 0


@pytest.mark.slow  # a 2 x 2 grid with a worker killed, one point rerun here, a bad point
def test_a_grid_on_a_scheduler_and_two_workers_survives_a_killed_worker(tiny_repro, tmp_path):
    from conftest import copy_project

    project = tiny_repro
    bare, _ = _remotes(project, tmp_path)
    here = copy_project(project, tmp_path / "here")
    shared = {**project.env, "VAEPIPE_RESUME_DIR": str(tmp_path / "shared-resume")}
    cluster = Cluster(tmp_path, shared)
    try:
        first, _second = cluster.worker("worker-1"), cluster.worker("worker-2")
        cluster.wait_for_workers(2)
        fixed = ["-S", "conv.channels=[16,32]"]
        log = (tmp_path / "driver.log").open("w")
        driver = subprocess.Popen(
            [sys.executable, "-m", "vaepipe.grid", "-S", "conv.epochs=150,151", "-S",
             "conv.latent_dim=3,5", *fixed, "--scheduler", cluster.address, "--threads", "1"],
            cwd=project.root, env=project.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        states = tmp_path / "shared-resume"
        while _saved_under(first, states) < 2 and time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # the worker, its nanny, its dvc and its stage
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()
        output = (tmp_path / "driver.log").read_text()

        landed = _landed(output)
        assert len(landed) == 4 and "grid: 4 done, 0 running, 0 failed of 4" in output, output
        assert sorted(_exp_refs(bare)) == sorted(landed)  # each point once on the remote
        shown = _shown(project)
        for name, settings in landed.items():
            run = shown[name]
            for setting in settings.split():
                key, value = setting.split("=", 1)
                assert str(run.params[key]).replace(" ", "") == value
            assert run.metrics["conv.best.nelbo"] > 0
        resumed = re.findall(r"^  (grid-\w+): train-conv: resuming at epoch (\d+) of 15[01] ",
                             output, re.M)
        assert resumed, output
        name = resumed[0][0]

        # the resumed point, run here with the same params and thread count: the same bytes
        here.env["VAEPIPE_THREADS"] = "1"
        here.dvc("exp", "run", *[a for s in landed[name].split() for a in ("-S", s)])
        project.dvc("exp", "apply", name)
        for path in ("models/conv/epoch_01.pt", "models/conv/best.pt", "models/conv/final.pt"):
            assert (project.root / path).read_bytes() == (here.root / path).read_bytes(), path
        for path in ("reports/train/conv.json", "reports/evaluate.json"):
            ours, theirs = (p.read_json(path) for p in (project, here))
            assert _untimed(ours) == _untimed(theirs), path

        # a bad point fails with its one line, the other lands
        bad = _grid(project, "-S", "conv.latent_dim=0,7", "--scheduler", cluster.address,
                    "--threads", "1", "--no-compare")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        failed = re.findall(r"^  grid-\w+ \(conv.latent_dim=0\) failed: (.*)$", bad.stdout, re.M)
        assert failed == ["conv.latent_dim must be >= 1; got 0"] or \
            (len(failed) == 1 and "conv.latent_dim" in failed[0]), bad.stdout
        assert len(_landed(bad.stdout)) == 1 and "Traceback" not in bad.stdout + bad.stderr
        assert len(_exp_refs(bare)) == 5
    finally:
        cluster.stop()


def _untimed(tree):
    if isinstance(tree, dict):
        return {k: _untimed(v) for k, v in tree.items() if k not in TIMINGS}
    return tree


@pytest.mark.slow  # two points on the embedded local cluster
def test_the_default_local_cluster_runs_a_grid_and_any_clone_gets_a_points_model(
        tiny_repro, tmp_path):
    project = tiny_repro
    bare, _ = _remotes(project, tmp_path)
    proc = _grid(project, "-S", "conv.latent_dim=3,5", "--workers", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    landed = _landed(proc.stdout)
    assert sorted(landed.values()) == ["conv.latent_dim=3", "conv.latent_dim=5"]
    assert set(landed) <= set(_shown(project)) and sorted(_exp_refs(bare)) == sorted(landed)
    assert "conv.best.nelbo" in proc.stdout  # the comparison table, at the end

    # the documented route to a point's model from another clone: pull it, get the file
    name = next(n for n, s in landed.items() if s == "conv.latent_dim=5")
    other = tmp_path / "other"
    subprocess.run(["git", "clone", "-q", str(bare), str(other)], check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    env = project.env
    for argv in (["exp", "pull", "origin", name],
                 ["get", ".", "models/conv/best.pt", "--rev", name, "-o", "best.pt"]):
        subprocess.run([dvc, *argv], cwd=other, env=env, check=True, capture_output=True)
    sample = subprocess.run([sys.executable, "-m", "vaepipe.sample", "best.pt", "prior", "--n",
                             "4", "--out", "four.png"], cwd=other, env=env, capture_output=True,
                            text=True)
    assert sample.returncode == 0, sample.stderr
    from PIL import Image
    assert Image.open(other / "four.png").size[0] > 0
    import torch
    args = torch.load(other / "best.pt", weights_only=False, map_location="cpu")["model_args"]
    assert args["latent_dim"] == 5
