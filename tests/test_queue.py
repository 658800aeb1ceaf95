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
