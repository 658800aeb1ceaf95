"""`dvc exp run --queue` + `dvc queue start -j 2` on the tiny pipeline: two experiments finish
with their metrics, a third with a bad param fails alone and `dvc queue logs` says why."""
import json
import re
import time

import pytest

from vaepipe.config import ConfigError, parse_params


def _queue_status(project) -> dict[str, str]:
    """experiment name -> status, from `dvc queue status`."""
    rows = {}
    for line in project.dvc("queue", "status").stdout.splitlines():
        match = re.match(r"^\S+\s+(\S+)\s+.*\b(Queued|Running|Success|Failed)\b", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _wait_until_done(project, names: set[str], timeout: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _queue_status(project)
        if names <= status.keys() and all(status[n] in {"Success", "Failed"} for n in names):
            return status
        time.sleep(2)
    raise AssertionError(f"queue not done in {timeout} s: {_queue_status(project)}")


def _metric(shown: list, name: str, path: str, key: str):
    """A metric of experiment ``name`` in `dvc exp show --json` output."""
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("name") == name:
                    data = rev["data"]["metrics"][path]["data"]
                    for part in key.split("."):
                        data = data[part]
                    return data, rev["data"]["params"]["params.yaml"]["data"]
    raise KeyError(name)


@pytest.mark.slow  # three queued experiments, about a minute and a half
def test_two_workers_run_two_experiments_and_a_bad_one_fails_alone(tiny_repro):
    project = tiny_repro
    bad = project.params()
    bad["mlp"]["latent_dim"] = 0
    try:
        parse_params(bad)
        raise AssertionError("latent_dim 0 was accepted")
    except ConfigError as exc:
        reason = str(exc)

    for name, setting in (("beta-05", "beta=0.5"), ("beta-2", "beta=2.0"),
                          ("bad-latent", "mlp.latent_dim=0")):
        project.dvc("exp", "run", "--queue", "-S", setting, "-n", name)
    assert set(_queue_status(project)) == {"beta-05", "beta-2", "bad-latent"}
    project.dvc("queue", "start", "-j", "2")
    status = _wait_until_done(project, {"beta-05", "beta-2", "bad-latent"})
    assert status == {"beta-05": "Success", "beta-2": "Success", "bad-latent": "Failed"}

    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    nelbo = {}
    for name, beta in (("beta-05", 0.5), ("beta-2", 2.0)):
        value, params = _metric(shown, name, "reports/evaluate.json", "mlp.best.nelbo")
        assert params["beta"] == beta and value > 0
        nelbo[name] = value
    assert nelbo["beta-05"] != nelbo["beta-2"]

    logs = project.dvc("queue", "logs", "bad-latent").stdout
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {reason}"] and "mlp.latent_dim" in reason
    assert "Traceback" not in logs
    project.dvc("queue", "stop", check=False)


def _start_workers(project) -> None:
    """`dvc queue start -j 1`, returning at once: the worker it spawns keeps any pipe of ours
    open, so reading its output would wait for the whole queue."""
    import subprocess
    import sys
    from pathlib import Path

    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "queue", "start", "-j", "1"], cwd=project.root, env=project.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)


def _kill_stage(script: str) -> None:
    """SIGKILL to the running stage ``script`` alone, as a preempted or OOM-killed stage: its
    process group is the queue worker's, which would die with it and leave the entry
    'Running' for good. The Python process itself, not the shell DVC runs it through
    (``$SHELL -c``, or /bin/sh where SHELL is unset: dash forks instead of exec'ing, and
    killing it would leave the stage running as an orphan)."""
    import os
    import signal

    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if argv and os.path.basename(argv[0]).startswith("python") \
                and script in " ".join(argv):
            os.kill(proc.pid, signal.SIGKILL)
            return
    raise AssertionError(f"no running python {script}")


@pytest.mark.slow  # a queued experiment killed, queued again, and one run in the workspace
def test_a_killed_queued_experiment_resumes_when_queued_again(tiny_repro, tmp_path):
    from pathlib import Path

    from conftest import copy_project, saved_epochs

    killed, whole = tiny_repro, copy_project(tiny_repro, tmp_path / "whole")
    settings = ["-S", "conv.epochs=150", "-S", "conv.channels=[16,32]"]  # about 15 s
    whole.dvc("exp", "run", *settings)
    states = Path(killed.env["VAEPIPE_RESUME_DIR"])
    killed.dvc("exp", "run", "--queue", *settings, "-n", "first")
    _start_workers(killed)
    deadline = time.monotonic() + 300
    while saved_epochs(states) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_stage("stages/train.py --model conv")
    assert _wait_until_done(killed, {"first"}) == {"first": "Failed"}

    killed.dvc("exp", "run", "--queue", *settings, "-n", "second")
    killed.dvc("queue", "start", "-j", "1")
    status = _wait_until_done(killed, {"second"})["second"]
    logs = killed.dvc("queue", "logs", "second").stdout
    assert status == "Success", logs
    assert re.search(r"train-conv: resuming at epoch \d+ of 150 \(saved ", logs), logs
    killed.dvc("exp", "apply", "second")
    for name in ("models/conv/epoch_01.pt", "models/conv/best.pt", "models/conv/final.pt"):
        assert (killed.root / name).read_bytes() == (whole.root / name).read_bytes(), name
    timings = {"train_seconds", "images_per_second"}
    metrics = [{k: v for k, v in p.read_json("reports/train/conv.json").items()
                if k not in timings} for p in (killed, whole)]
    assert metrics[0] == metrics[1]
    assert list(states.glob("*.pt")) == []
    killed.dvc("queue", "stop", check=False)
