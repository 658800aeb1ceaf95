"""`python -m vaepipe.compare`: grouping, intervals and verdicts on real `dvc exp show --json`.

``tests/data/exp_show.json`` was captured from the tiny pipeline (``tiny.TINY_PIPELINE``):
`dvc repro`, a commit, then `dvc exp run --queue -S seed=1,2` and `dvc exp run --queue -S
seed=1,2 -S beta=0.5`, `dvc queue start -j 1`, and `dvc exp show --json` once all four had
finished: group A is the committed run (seed 42) with seeds 1 and 2, group B is beta 0.5.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from vaepipe import compare
from vaepipe.evaluate.measures import share_standard_error, standard_error

FIXTURE = Path(__file__).parent / "data" / "exp_show.json"
METRIC = "conv.best.nelbo"


def shown() -> list:
    return json.loads(FIXTURE.read_text())


def groups_of(data: list) -> list[compare.Group]:
    return compare.group_runs(compare.runs_from_exp_show(data))


def test_standard_errors_match_scipy():
    assert standard_error(np.full(50, 3.25)) == 0.0
    sample = np.random.default_rng(0).normal(10, 2, 37)
    assert standard_error(sample) == pytest.approx(scipy.stats.sem(sample), rel=1e-12)
    outcomes = np.array([1] * 70 + [0] * 30, dtype=float)
    assert share_standard_error(0.7, 100) == pytest.approx(scipy.stats.sem(outcomes), rel=1e-12)
    with pytest.raises(ValueError, match="at least two"):
        standard_error([1.0])


def test_holm_matches_the_textbook_example():
    # sorted p 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert compare.holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert compare.holm([0.5, float("nan")])[0] == 0.5


def test_the_fixture_groups_by_params_other_than_seed():
    groups = groups_of(shown())
    assert [g.name for g in groups] == ["A", "B"]
    a, b = groups
    assert sorted(r.seed for r in a.runs) == [1, 2, 42]
    assert sorted(r.seed for r in b.runs) == [1, 2]
    assert b.params["beta"] == 0.5 and a.params["beta"] == 1.0
    assert compare.differing_params(b, a) == "beta=0.5"
    # the workspace is the committed run: counted once, and it marks the baseline
    assert sum(r.workspace for r in a.runs) == 1 and not any(r.workspace for r in b.runs)
    means = [float(np.mean([r.metrics[METRIC] for r in g.runs])) for g in groups]
    assert [g.values(METRIC).mean() for g in groups] == pytest.approx(means)


def _set(data: list, seeds_values: dict, beta: float, metric: str = METRIC) -> None:
    """Give the runs of the group with ``beta`` the values ``{seed: value}``."""
    kind, ckpt, key = metric.split(".")
    for row in data:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                d = rev["data"]
                p = d["params"]["params.yaml"]["data"]
                if p["beta"] == beta:
                    d["metrics"]["reports/evaluate.json"]["data"][kind][ckpt][key] = \
                        seeds_values[p["seed"]]


def _verdict(data: list, metrics=(METRIC,)) -> dict:
    groups = groups_of(data)
    rows = compare.judge(groups, groups[0], list(metrics))
    return {(r.group.name, r.metric): r for r in rows}


@pytest.mark.parametrize("metric,shift,expected", [
    (METRIC, -5, "better"),           # lower NELBO by 5 between-seed SEs
    (METRIC, +5, "worse"),
    ("conv.best.precision", +5, "better"),  # higher is better here
    (METRIC, +0.1, "within noise"),
    ("conv.best.kl", +5, "higher"),   # no better direction for the KL
])
def test_verdicts_follow_the_size_and_direction_of_the_difference(metric, shift, expected):
    data = shown()
    base = groups_of(data)[0].values(metric)
    se = base.std(ddof=1) / np.sqrt(len(base))
    # every seed of B beats the baseline's mean by `shift` SEs, with a spread of its own
    _set(data, {1: base.mean() + shift * se - 0.3 * se, 2: base.mean() + shift * se + 0.3 * se},
         0.5, metric)
    row = _verdict(data, [metric])[("B", metric)]
    assert row.verdict == expected, (row, base)
    assert row.diff == pytest.approx(shift * se, rel=1e-9)


def test_holm_correction_can_turn_a_single_significant_metric_into_noise():
    data = shown()
    base = groups_of(data)[0].values(METRIC)
    se = base.std(ddof=1) / np.sqrt(len(base))
    _set(data, {1: base.mean() - 3.2 * se, 2: base.mean() - 2.8 * se}, 0.5)
    alone = _verdict(data)[("B", METRIC)]
    many = _verdict(data, [METRIC, "mlp.best.nelbo", "conv.best.fid", "mlp.best.fid"])
    assert many[("B", METRIC)].p_holm >= alone.p_holm
    assert many[("B", METRIC)].p == alone.p


def test_a_group_of_one_seed_gets_its_test_set_error_and_no_verdict():
    data = shown()
    # drop seed 2 of the beta 0.5 group
    for row in data:
        for exp in row.get("experiments") or []:
            exp["revs"] = [r for r in exp["revs"]
                           if not (r["data"]["params"]["params.yaml"]["data"]["beta"] == 0.5
                                   and r["data"]["params"]["params.yaml"]["data"]["seed"] == 2)]
    row = _verdict(data)[("B", METRIC)]
    assert row.n == 1 and row.verdict == "no verdict (one seed)"
    assert row.test_se is not None and row.test_se > 0
    text = compare.markdown(groups_of(data), groups_of(data)[0], [row])
    assert "one seed; test-set SE" in text


def test_the_command_prints_a_row_per_group_and_draws_a_panel_per_metric(tmp_path, capsys):
    png, noise = tmp_path / "compare.png", tmp_path / "noise.json"
    assert compare.main(["--json", str(FIXTURE), "--png", str(png), "--noise", str(noise),
                         "--metric", METRIC, "--metric", "mlp.best.fid"]) == 0
    out = capsys.readouterr().out
    table = out.split(f"### `{METRIC}` (lower is better)", 1)[1].split("###", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"^\| [AB] \|", line)]
    assert [r.split("|")[1].strip() for r in rows] == ["A", "B"]
    assert "| A | 3 |" in rows[0] and rows[0].rstrip().endswith("| baseline |")
    assert "not *no effect*" in out
    from PIL import Image
    assert Image.open(png).size == (600, 270)
    spread = json.loads(noise.read_text())
    assert sorted(spread["seeds"]) == [1, 2, 42]
    sd = groups_of(shown())[0].values(METRIC).std(ddof=1)
    assert spread["metrics"][METRIC]["sd"] == pytest.approx(sd)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert compare.main(["--json", str(FIXTURE), "--metric", "conv.best.nope"]) == 2
    assert "conv.best.nope is in no run's metrics" in capsys.readouterr().err
    assert compare.main(["--json", str(FIXTURE), "--baseline", "Z"]) == 2
    assert "--baseline must be one of A, B" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert compare.main(["--json", str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err


@pytest.mark.slow  # four queued tiny experiments, about two minutes
def test_a_queued_seed_grid_through_real_dvc(tiny_repro):
    project = tiny_repro
    project.dvc("exp", "run", "--queue", "-S", "seed=1,2")
    project.dvc("exp", "run", "--queue", "-S", "seed=1,2", "-S", "beta=0.5")
    project.dvc("queue", "start", "-j", "1")
    for _ in range(300):
        status = project.dvc("queue", "status").stdout
        if status.count("Success") == 4:
            break
        assert "Failed" not in status, status
        time.sleep(2)
    else:
        raise AssertionError(f"the queue did not finish: {status}")
    # -S seed=2 retrained neither the classifier nor the sweep: their outputs are the baseline's
    shown_json = json.loads(project.dvc("exp", "show", "--json").stdout)
    hashes = set()
    for row in shown_json:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                outs = rev["data"]["outs"]
                hashes.add((outs["models/classifier.pt"]["hash"],
                            outs["models/sweep/beta_0.1.pt"]["hash"]))
    assert len(hashes) == 1, hashes
    out = project.run("python", "-m", "vaepipe.compare", "--metric", METRIC).stdout
    table = out.split(f"### `{METRIC}`", 1)[1]
    assert len(re.findall(r"^\| [AB] \| [23] \|", table, re.M)) == 2, out
    project.dvc("queue", "stop", check=False)


def test_the_protocols_test_nll_is_lower_is_better():
    assert compare.direction("mlp.best.test_nll") == -1        # lower is better, as the bound
    assert compare.direction("conv.best.test_nll") == -1
    assert compare.direction("mlp.best.iwae_nll") == -1
