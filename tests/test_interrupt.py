"""Interrupting `dvc repro` for real: SIGKILL of each long stage (a training, the sweep,
evaluate) leaves no half-written output and the next `dvc repro` completes; Ctrl-C (SIGINT
to the whole process group, as a terminal sends it) ends with one line and no traceback.
"""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from PIL import Image


TEMPORARY = re.compile(r"^\..+\.\d+\..+\.tmp$")  # vaepipe.io.atomic_path's names

# stage -> (its script, its outputs, params that make it run long, params that make it rerun
# briefly, the file it finishes first: the kill comes after it, so it must be left whole)
LONG_STAGES = {
    "train-mlp": ("stages/train.py",
                  ["models/mlp", "reports/train/mlp_history.csv", "reports/train/mlp.json"],
                  {"mlp": {"epochs": 400}}, {"mlp": {"epochs": 3}}, "models/mlp/epoch_01.pt"),
    "beta-sweep@0.1": ("stages/beta_sweep.py",
                       ["models/sweep/beta_0.1.pt", "reports/sweep/beta_0.1"],
                       {"sweep": {"epochs": 400}}, {"sweep": {"epochs": 2}},
                       "reports/sweep/beta_0.1/history.csv"),
    "evaluate": ("stages/evaluate.py",
                 ["data/evaluate", "reports/evaluate.json", "reports/evaluate_details.json",
                  "reports/evaluation.md"],
                 {"evaluate": {"samples": 20000}}, {"evaluate": {"samples": 120}},
                 "data/evaluate/mlp/epoch_01.npz"),
}


def _with(project, overrides: dict) -> None:
    params = project.params()
    for section, values in overrides.items():
        params[section].update(values)
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _files(project, outs: list[str]) -> list[Path]:
    found = []
    for out in outs:
        path = project.root / out
        found += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [p for p in found if p.name != ".gitignore"]  # DVC's own, for cached outputs


def _check_whole(path: Path) -> None:
    """Read ``path`` completely with the reader its type needs (raises if it is truncated)."""
    suffix = path.suffix
    if suffix == ".pt":
        assert isinstance(torch.load(path, weights_only=True), dict)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".csv":
        assert len(pd.read_csv(path)) > 0
    elif suffix == ".npz":
        with np.load(path) as arrays:  # reading every array checks each member's CRC
            assert arrays.files and all(arrays[name].size > 0 for name in arrays.files)
    elif suffix in {".png", ".gif"}:
        with Image.open(path) as image:
            for frame in range(getattr(image, "n_frames", 1)):
                image.seek(frame)
                image.load()
    elif suffix == ".md":
        assert path.read_text().strip()
    else:
        pytest.fail(f"unexpected output file {path}")


def _start(project, *args: str) -> subprocess.Popen:
    """``dvc <args>`` in its own process group, as a shell job."""
    dvc = str(Path(project.env["PATH"].split(os.pathsep)[0]) / "dvc")
    return subprocess.Popen([dvc, *args], cwd=project.root, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_stage(proc: subprocess.Popen, script: str, first: Path | None,
                    timeout: float = 120) -> None:
    """Until the stage's python process has written ``first`` (or, without one, has run for
    three seconds: past its imports, mid-way through its work)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if script in " ".join(child.cmdline()):
                    if first is not None and first.is_file():
                        time.sleep(0.2)  # into the next piece of work
                        return
                    if first is None and time.time() - child.create_time() > 3.0:
                        return
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.05)
    pytest.fail(f"{script} did not {'write ' + str(first) if first else 'start'} within "
                f"{timeout} s")


@pytest.mark.slow  # three stages killed and rerun through DVC
def test_sigkill_mid_stage_leaves_only_whole_files_and_repro_completes(tiny_repro):
    project = tiny_repro
    for stage, (script, outs, long_params, rerun_params, first) in LONG_STAGES.items():
        _with(project, long_params)
        proc = _start(project, "repro", stage)
        _wait_for_stage(proc, script, project.root / first if first else None)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage, no chance to clean up
        proc.wait(timeout=30)

        # atomic_path's temporaries aside (no reader looks for them, the next write removes
        # them), what the stage had finished is left, whole; DVC removed the older outputs
        left = [p for p in _files(project, outs) if not TEMPORARY.match(p.name)]
        if first is None:
            assert left == [], stage
        else:
            assert project.root / first in left, stage
        for path in left:
            _check_whole(path)

        project.git("checkout", "--", "params.yaml")
        _with(project, rerun_params)  # new values: the stage must really run again
        out = project.dvc("repro", stage).stdout
        assert f"Running stage '{stage}'" in out
        assert "up to date" in project.dvc("status", stage).stdout
        leftovers = [p for p in _files(project, outs) if TEMPORARY.match(p.name)]
        assert leftovers == [], stage
        for path in _files(project, outs):
            _check_whole(path)
        project.git("checkout", "--", "params.yaml")


def test_ctrl_c_stops_repro_with_one_line_and_no_traceback(tiny_repro):
    project = tiny_repro
    _with(project, {"mlp": {"epochs": 400}})
    proc = _start(project, "repro", "train-mlp")
    first = project.root / LONG_STAGES["train-mlp"][4]
    _wait_for_stage(proc, "stages/train.py", first)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: dvc and the stage
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert "train: interrupted by SIGINT; files it had finished are kept, none is half-written" \
        in lines
    left = _files(project, LONG_STAGES["train-mlp"][1])
    assert first in left
    for path in left:
        assert TEMPORARY.match(path.name) is None  # SIGINT runs the cleanup
        _check_whole(path)


def test_a_running_experiment_shows_its_epochs_and_a_kill_leaves_them_whole(tiny_repro):
    # the history and the metrics file (marked partial) are rewritten whole after every epoch,
    # so `dvc plots show` and `dvc exp show` read a running experiment's progress from them
    project = tiny_repro
    _with(project, {"mlp": {"epochs": 3000}})
    proc = _start(project, "exp", "run", "-n", "running")
    metrics_path = project.root / "reports/train/mlp.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:  # the committed run's metrics are there until the first epoch replaces them
            written = json.loads(metrics_path.read_text())
            done = written["epochs"] if written["partial"] else 0
        except (FileNotFoundError, KeyError, ValueError):
            done = 0
        if done >= 2:
            break
        time.sleep(0.01)
    plots = json.loads(project.dvc("plots", "show", "--json",
                                   "reports/train/mlp_history.csv").stdout)["data"]
    drawn = plots["dvc.yaml::reports/train/mlp_history.csv"][0]["content"]["data"]["values"]
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    live = shown[0]["data"]["metrics"]["reports/train/mlp.json"]["data"]
    assert proc.poll() is None, "the experiment ended before it was read"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    metrics = json.loads(metrics_path.read_text())
    history = pd.read_csv(project.root / "reports/train/mlp_history.csv")
    assert metrics["partial"] is True and metrics["epochs"] >= 2
    # the two files can be one epoch apart at most (the kill can fall between them)
    assert len(history) in (metrics["epochs"], metrics["epochs"] + 1)
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert history.notna().all().all() and (history["val_nelbo"] > 0).all()
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert {row["epoch"] for row in drawn} >= {"1", "2"}  # CSV values: strings
    assert shown[0]["rev"] == "workspace" and live["partial"] is True and live["epochs"] >= 2


# stage -> (params that make it run a while, its outputs: compared, timings aside)
RESUMED = {
    "train-conv": ({"conv": {"epochs": 12, "channels": [16, 32]}},
                   ["models/conv/epoch_01.pt", "models/conv/best.pt", "models/conv/final.pt",
                    "reports/train/conv_history.csv", "reports/train/conv.json"]),
    "beta-sweep@0.1": ({"sweep": {"epochs": 12, "channels": [16, 32]}},
                       ["models/sweep/beta_0.1.pt", "reports/sweep/beta_0.1/history.csv",
                        "reports/sweep/beta_0.1/latent.gif",
                        "reports/sweep/beta_0.1/metrics.json"]),
    "train-classifier": ({"classifier": {"epochs": 12, "channels": [16, 32]}},
                         ["models/classifier.pt", "reports/classifier.json"]),
}
TIMINGS = {"seconds", "images_per_second", "train_seconds", "render_seconds"}


def _untimed(path: Path):
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        return table.drop(columns=[c for c in table.columns if c in TIMINGS]).to_dict("list")
    if path.suffix == ".json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMINGS}
    return path.read_bytes()


@pytest.mark.slow  # each training run twice through DVC, once killed mid-way
def test_a_killed_training_resumes_to_the_outputs_of_an_uninterrupted_run(tiny_repro, tmp_path):
    from conftest import copy_project, saved_epochs

    killed = tiny_repro
    states = Path(killed.env["VAEPIPE_RESUME_DIR"])
    whole = copy_project(tiny_repro, tmp_path / "whole")
    for stage, (params, outs) in RESUMED.items():
        for project in (killed, whole):
            _with(project, params)
        whole.dvc("repro", stage)
        proc = _start(killed, "repro", stage)
        deadline = time.monotonic() + 300
        while saved_epochs(states) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage, in its third epoch or later
        proc.wait(timeout=30)
        out = killed.dvc("repro", stage)
        text = out.stdout + out.stderr
        resumed = re.search(rf"{re.escape(stage)}: resuming at epoch (\d+) of 12 \(saved ", text)
        assert resumed and int(resumed.group(1)) >= 3, text
        for name in outs:
            assert _untimed(killed.root / name) == _untimed(whole.root / name), name
        assert list(states.glob("*.pt")) == []  # a finished stage removes its state
        # the same inputs again: nothing reruns, so no state is read
        assert f"Stage '{stage}' didn't change" in killed.dvc("repro", stage).stdout
