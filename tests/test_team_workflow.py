"""A team's workflow through real DVC on tiny generated data: two machines, one server.

A bare git repository and a local-directory DVC remote stand in for the team's server. Clone A
(a ``dvc_project``) runs the whole pipeline, pushes it, runs ``dvc exp run -S beta=0.5`` and
pushes the experiment; clone B (``git clone`` of the server) pulls the baseline, then the
experiment, and must end with exactly A's bytes. A also survives losing its cache and outputs,
``dvc plots diff`` draws both revisions, and a second fresh project reproduces A's baseline bit
for bit (timings aside).

A is a copy of the session's tiny project (conftest ``_tiny_baseline``: the whole pipeline
reproduced once per session); its experiment runs once per module. The fresh project runs the
whole pipeline again (about 2 minutes on 2 cores): it is the determinism check's other side.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, DvcProject, build_project, copy_project
from tiny import ALL_STAGES, TINY_PIPELINE as TINY
from vaepipe.train.checkpoints import load_checkpoint

EXP = "beta-0.5"
UP_TO_DATE = "Data and pipelines are up to date."
# The only metrics that measure the machine rather than the result: train/*.json and
# classifier.json (vaepipe.training.summarize, stages/train_classifier.py). Every other key of
# every metrics file, and every byte of every checkpoint, must repeat.
TIMING_KEYS = {"train_seconds", "images_per_second"}


def ran(stdout: str) -> set[str]:
    """The stages DVC says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", stdout))


def lock_outs(root: Path) -> dict[str, str]:
    """Every output in dvc.lock: path -> md5 (``<md5>.dir`` for a directory)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"]
            for stage in lock["stages"].values() for out in stage.get("outs", [])}


def sha256_files(root: Path, paths) -> dict[str, str]:
    """sha256 of every file under each of ``paths`` (files or directories), by relative path."""
    found = {}
    for rel in paths:
        path = root / rel
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                found[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def metrics_files(project: DvcProject) -> dict[str, dict]:
    """Every file DVC declares as metrics, by path, as DVC reads it (``dvc metrics show``)."""
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    files = shown[""]["data"]
    assert files and all("error" not in entry for entry in files.values()), files
    return {path: project.read_json(path) for path in files}


@dataclass
class Snapshot:
    """What a project's outputs are at one moment: dvc.lock's hashes and the files' bytes."""

    lock: dict[str, str]
    files: dict[str, str]

    @classmethod
    def of(cls, root: Path) -> "Snapshot":
        lock = lock_outs(root)
        return cls(lock, sha256_files(root, lock))


@dataclass
class Team:
    a: DvcProject            # the first machine
    server: Path             # the bare git repository ("origin")
    storage: Path            # the DVC remote ("storage", the default)
    baseline: Snapshot       # A after `dvc repro`, committed and pushed
    baseline_metrics: dict[str, dict]
    baseline_copy: Path      # holds a copy of A's models/ at the baseline
    experiment: Snapshot     # A after `dvc exp run -S beta=0.5`, pushed with `dvc exp push`
    metrics_diff: dict       # `dvc metrics diff --json` right after the experiment
    exp_show: list           # `dvc exp show --json` then


@pytest.fixture(scope="module")
def team(_tiny_baseline, tmp_path_factory) -> Team:
    # a copy of the session's tiny project: `dvc repro` ran every stage there and committed
    a = copy_project(_tiny_baseline, tmp_path_factory.mktemp("team"))
    # as in the real project: `dvc plots` pages with vega inlined, from a template in git
    shutil.copy2(REPO_ROOT / ".dvc/plots_offline.html", a.root / ".dvc/plots_offline.html")
    a.dvc("config", "plots.html_template", "plots_offline.html")
    server, storage = a.root.parent / "server.git", a.root.parent / "storage"
    a.run("git", "init", "-q", "--bare", "--initial-branch=main", str(server))
    a.git("remote", "add", "origin", str(server))
    a.dvc("remote", "add", "-d", "storage", str(storage))

    assert UP_TO_DATE in a.dvc("status").stdout
    baseline = Snapshot.of(a.root)
    baseline_metrics = metrics_files(a)
    baseline_copy = a.root.parent / "baseline"
    shutil.copytree(a.root / "models", baseline_copy / "models")
    a.git("add", "-A")
    a.git("commit", "-q", "-m", "team server and remote")
    a.git("push", "-q", "-u", "origin", "main")
    assert re.search(r"^\d+ files pushed$", a.dvc("push").stdout, re.M)

    exp = a.dvc("exp", "run", "-S", "beta=0.5", "-n", EXP)
    # exactly the stages that read beta, and those downstream of them
    assert ran(exp.stdout) == {"train-mlp", "train-conv", "evaluate", "visualize"}
    experiment = Snapshot.of(a.root)
    metrics_diff = json.loads(a.dvc("metrics", "diff", "--json").stdout)
    exp_show = json.loads(a.dvc("exp", "show", "--json").stdout)
    pushed = a.dvc("exp", "push", "origin", EXP).stdout
    assert f"Pushed experiment {EXP} to Git remote 'origin'." in pushed
    # the experiment's new checkpoints, arrays and report went to the DVC remote with it
    assert re.search(r"^\d+ files uploaded$", pushed, re.M), pushed
    return Team(a, server, storage, baseline, baseline_metrics, baseline_copy, experiment,
                metrics_diff, exp_show)


def clone(team: Team, name: str) -> DvcProject:
    """``git clone`` of the server beside A: another machine, same tools, its own paths."""
    root = team.a.root.parent / name
    team.a.run("git", "clone", "-q", str(team.server), str(root))
    env = {**team.a.env, "PYTHONPATH": str(root),
           "DVC_SITE_CACHE_DIR": str(root.parent / f"{name}-dvc-site-cache")}
    b = DvcProject(root, env, team.a.mirror, team.a.md5_json)
    b.git("config", "user.name", "vaepipe tests (B)")
    b.git("config", "user.email", "b@vaepipe.invalid")
    return b


def test_the_experiment_changes_the_models_so_the_comparisons_below_can_fail(team):
    base, exp = team.baseline, team.experiment
    assert base.lock.keys() == exp.lock.keys() and "models/mlp/best.pt" in base.lock
    changed = {path for path in base.lock if base.lock[path] != exp.lock[path]}
    assert {"models/mlp/best.pt", "models/conv/final.pt", "reports/evaluate.json",
            "reports/report.html"} <= changed
    # stages that do not read beta kept their outputs
    assert not changed & {"data/raw/fashion-mnist", "models/classifier.pt",
                          "models/sweep/beta_0.1.pt", "reports/sweep.json"}


def test_the_experiment_records_its_beta_and_dvc_shows_what_it_changed(team):
    _, ckpt = load_checkpoint(team.a.root / "models/conv/final.pt")
    assert ckpt["params"]["beta"] == 0.5
    diff = team.metrics_diff
    assert "best_val_loss" in diff["reports/train/conv.json"]
    changed = {k for k in diff.get("reports/evaluate.json", {}) if k.endswith(".nelbo")}
    assert {"mlp.best.nelbo", "conv.final.nelbo"} <= changed
    # `dvc exp show`: the baseline commit at beta 1, its experiment EXP at beta 0.5
    betas = {}
    for row in team.exp_show:
        for exp in row.get("experiments") or ():
            for rev in exp["revs"]:
                betas[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]["beta"]
        if row.get("name") == "main":
            betas["main"] = row["data"]["params"]["params.yaml"]["data"]["beta"]
    assert betas == {"main": 1.0, EXP: 0.5}


def test_a_second_machine_pulls_the_baseline_then_the_experiment(team):
    b = clone(team, "b")
    assert not (b.root / "models").exists()
    pulled = b.dvc("pull").stdout
    assert re.search(r"^\d+ files fetched and \d+ files added$", pulled, re.M), pulled
    assert UP_TO_DATE in b.dvc("status").stdout
    assert Snapshot.of(b.root) == team.baseline            # every hash and every byte

    assert EXP in b.dvc("exp", "list", "origin").stdout
    b.dvc("exp", "pull", "origin", EXP)
    b.dvc("exp", "apply", EXP)
    assert b.params()["beta"] == 0.5
    # `dvc exp pull` fetched the experiment's cached outputs too: apply checked them out
    assert UP_TO_DATE in b.dvc("status").stdout
    assert "Everything is up to date." in b.dvc("pull").stdout
    assert Snapshot.of(b.root) == team.experiment


def test_plots_diff_draws_the_baseline_and_the_experiment_side_by_side(team):
    a = team.a
    out = a.root.parent / "plots-diff"
    shown = a.dvc("plots", "diff", "main", EXP, "-o", str(out)).stdout
    assert f"file://{out}/index.html" in shown
    page = (out / "index.html").read_text()
    assert not re.search(r'src="https?://', page)                 # the offline template
    exp_ref = a.git("for-each-ref", "--format=%(refname)", f"refs/exps/**/{EXP}").stdout.strip()
    assert exp_ref.endswith(f"/{EXP}"), exp_ref
    figures = sorted(p.name for p in (a.root / "reports/figures").glob("*.png"))
    assert len(figures) > 20
    for name in figures:
        for rev, ref in (("main", "main"), (EXP, exp_ref)):
            image = f"static/{rev}_reports_figures_{name}"
            assert f'<img src="{image}">' in page
            # that revision's figure, byte for byte
            assert (out / image).read_bytes() == blob(a, ref, f"reports/figures/{name}"), image
    assert (blob(a, "main", "reports/figures/mlp_samples_4x4.png")
            != blob(a, exp_ref, "reports/figures/mlp_samples_4x4.png"))
    # the per-epoch curves hold both revisions' rows
    for plot_id in ("reports_train_mlp_history_csv", "val_nelbo"):
        assert f"vegaEmbed('#{plot_id}', spec)" in page
    assert '"rev": "main"' in page and f'"rev": "{EXP}"' in page


def blob(project: DvcProject, ref: str, path: str) -> bytes:
    """A file's bytes at a git ref."""
    return subprocess.run(["git", "cat-file", "blob", f"{ref}:{path}"], cwd=project.root,
                          capture_output=True, check=True).stdout


def test_a_lost_cache_and_lost_outputs_come_back_from_the_remote(team):
    a = team.a
    # `dvc exp push` already uploaded what the experiment (now in A's workspace) produced
    assert "Everything is up to date." in a.dvc("push").stdout
    before = Snapshot.of(a.root)
    assert before == team.experiment
    # the outputs DVC keeps in its cache are the ones git ignores; the others are in git
    cached = a.git("check-ignore", *before.lock).stdout.split()
    assert {"data/raw/fashion-mnist", "models/mlp/best.pt", "reports/report.html"} <= set(cached)
    assert "reports/train/mlp.json" not in cached and "reports/figures" not in cached

    shutil.rmtree(a.root / ".dvc/cache")
    for rel in cached:
        path = a.root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert "not in cache" in a.dvc("status").stdout
    pulled = a.dvc("pull").stdout
    assert re.search(r"^\d+ files fetched and \d+ files added$", pulled, re.M), pulled
    assert UP_TO_DATE in a.dvc("status").stdout
    assert Snapshot.of(a.root) == before


# --------------------------------------------------------------------------------------------
# Determinism: a second fresh project reproduces A's baseline


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, team) -> DvcProject:
    """Another project built from scratch (its own mirror, cache and paths), run once."""
    c = build_project(tmp_path_factory.mktemp("fresh"), TINY)
    assert ran(c.dvc("repro").stdout) == ALL_STAGES
    return c


@pytest.mark.slow  # a second whole pipeline
def test_a_fresh_project_gives_the_same_metrics_timings_aside(team, fresh):
    ours, theirs = team.baseline_metrics, metrics_files(fresh)
    assert set(ours) == set(theirs)
    assert {"reports/evaluate.json", "reports/train/mlp.json", "reports/classifier.json",
            "reports/sweep.json"} <= set(ours)
    timed = {"reports/train/mlp.json", "reports/train/conv.json", "reports/classifier.json"}
    assert {path for path in ours if TIMING_KEYS & set(ours[path])} == timed
    for path in ours:
        if path in timed:
            assert TIMING_KEYS <= set(ours[path]) and ours[path]["train_seconds"] > 0, path
        assert untimed(theirs[path]) == untimed(ours[path]), path


def untimed(metrics: dict) -> dict:
    """A metrics file without its timing keys."""
    return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}


@pytest.mark.slow  # a second whole pipeline
def test_a_fresh_project_trains_bit_identical_weights(team, fresh):
    checkpoints = sorted(p for p in team.baseline.files if p.startswith("models/"))
    assert len(checkpoints) == 9             # mlp and conv x 3, classifier, 2 sweep betas
    assert checkpoints == sorted(p for p in Snapshot.of(fresh.root).files
                                 if p.startswith("models/"))
    for rel in checkpoints:
        ours = torch.load(team.baseline_copy / rel, weights_only=True)
        theirs = torch.load(fresh.root / rel, weights_only=True)
        assert ours["state_dict"].keys() == theirs["state_dict"].keys(), rel
        for key, tensor in ours["state_dict"].items():
            assert torch.equal(tensor, theirs["state_dict"][key]), f"{rel}: {key}"


@pytest.mark.slow  # a second whole pipeline
def test_a_fresh_project_writes_the_same_checkpoint_bytes_and_dvc_hashes(team, fresh):
    """Its own mirror directory too: a checkpoint records no timing and no data.mirror."""
    assert fresh.params()["data"]["mirror"] != team.a.params()["data"]["mirror"]
    theirs = Snapshot.of(fresh.root)
    for rel in sorted(p for p in team.baseline.files if p.startswith("models/")):
        assert theirs.files[rel] == team.baseline.files[rel], rel
    models = {p: md5 for p, md5 in team.baseline.lock.items() if p.startswith("models/")}
    assert models == {p: md5 for p, md5 in theirs.lock.items() if p.startswith("models/")}
