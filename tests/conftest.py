"""Shared fixtures: generated mirrors, a local HTTP server, and a throw-away DVC project.

``dvc_project`` is a factory building a real DVC project in ``tmp_path`` from this checkout's
dvc.yaml, params.yaml, stages/ and vaepipe/, fed by a tiny generated mirror, so stage tests
can run ``dvc repro`` offline in seconds::

    def test_something(dvc_project):
        project = dvc_project({"mlp": {"epochs": 1}})
        project.dvc("repro", "split")
        manifest = project.read_json("data/processed/fashion-mnist/manifest.json")
"""
from __future__ import annotations

import copy
import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest
import yaml

import fakedata
from vaepipe.data.sources import EXPECTED_MD5_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
# reports/noise.json: the seeds' spread the report states, an input of visualize kept in git
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", "reports/noise.json",
                 "data/images/README.md")
PROJECT_DIRS = ("stages", "vaepipe")


def load_stage(script: str):
    """Import a stage script as a module (its ``main`` is not run on import)."""
    spec = importlib.util.spec_from_file_location(f"stage_{script[:-3]}",
                                                  REPO_ROOT / "stages" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_md5_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a VAEPIPE_EXPECTED_MD5 from the caller's shell out of in-process tests."""
    monkeypatch.delenv(EXPECTED_MD5_ENV, raising=False)


@pytest.fixture
def idx_mirror(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory of tiny gzipped IDX files (200 train, 50 test) and their md5 table."""
    mirror = tmp_path / "mirror"
    return mirror, fakedata.write_idx_mirror(mirror, n_train=200, n_test=50)


# --------------------------------------------------------------------------------------------
# Local HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, records each requested path, logs nothing."""

    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.requests.append(self.path)
        super().do_GET()


@dataclass
class LocalServer:
    """A threaded HTTP server on 127.0.0.1 serving ``root``; ``requests`` lists GET paths."""

    root: Path
    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    """Serve ``tmp_path / "www"`` over HTTP on a free local port (never the internet)."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LocalServer(root, f"http://127.0.0.1:{server.server_address[1]}/", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------------------------
# Temporary DVC project


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class DvcProject:
    """A temporary git + DVC project; commands run in ``root`` with ``env``."""

    root: Path
    env: dict[str, str]
    mirror: Path
    md5_json: Path

    def run(self, *cmd: str, check: bool = True, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        """Run a command in the project; with ``check`` a failure shows its output."""
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n"
                        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``dvc <args>`` (the venv's dvc) and return the CompletedProcess."""
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``git <args>`` in the project."""
        return self.run("git", *args, check=check)

    def params(self) -> dict[str, Any]:
        """The project's current params.yaml."""
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def read_json(self, relpath: str) -> Any:
        """Load a JSON file of the project."""
        return json.loads((self.root / relpath).read_text())


def build_project(base: Path, overrides: Mapping[str, Any] | None = None, n_train: int = 200,
                  n_test: int = 50, n_per_batch: int = 20,
                  images: Callable[[Path], Any] | None = None) -> DvcProject:
    """A git + DVC project in ``base/project`` fed by a tiny mirror in ``base/mirror``; with
    ``images``, a function that writes an image folder into the directory it is given, that
    folder is written at ``data.path`` and tracked with ``dvc add`` before the first commit."""
    root = base / "project"
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        if (REPO_ROOT / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO_ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params = _merge(params, overrides or {})
    mirror = base / "mirror"
    if params["data"]["dataset"] == "cifar10":
        md5s = fakedata.write_cifar_tarball(mirror, n_per_batch=n_per_batch)
    else:
        md5s = fakedata.write_idx_mirror(mirror, n_train=n_train, n_test=n_test)
    params["data"]["mirror"] = str(mirror)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    md5_json = fakedata.write_md5_json(base / "expected_md5.json", md5s)

    project = DvcProject(root, _project_env(base, root, md5_json), mirror, md5_json)
    project.git("init", "-q", "-b", "main")
    project.git("config", "user.name", "vaepipe tests")
    project.git("config", "user.email", "tests@vaepipe.invalid")
    project.git("config", "commit.gpgsign", "false")
    project.dvc("init", "-q")
    project.dvc("config", "core.analytics", "false")
    project.dvc("config", "core.check_update", "false")
    if images is not None:
        images(root / params["data"]["path"])
        project.dvc("add", "-q", params["data"]["path"])
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "test project")
    return project


def _project_env(base: Path, root: Path, md5_json: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env[EXPECTED_MD5_ENV] = str(md5_json)
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(base / "dvc-site-cache")
    # each project's own resume states: a killed run in one test is never resumed by another
    env["VAEPIPE_RESUME_DIR"] = str(base / "resume")
    env.pop("VIRTUAL_ENV", None)
    # the project's own copy of vaepipe, not the editable install of this checkout
    env["PYTHONPATH"] = str(root)
    return env


def copy_project(project: DvcProject, base: Path) -> DvcProject:
    """A full copy of ``project`` (work tree, git history, DVC cache) in ``base/project``; it
    shares the original's mirror, which is only read."""
    root = base / "project"
    shutil.copytree(project.root, root, symlinks=True)
    return DvcProject(root, _project_env(base, root, project.md5_json), project.mirror,
                      project.md5_json)


@pytest.fixture
def dvc_project(tmp_path: Path) -> Callable[..., DvcProject]:
    """Factory: ``dvc_project(overrides=None, n_train=200, n_test=50, n_per_batch=20,
    images=None)`` (``images``: see :func:`build_project`).

    Builds ``tmp_path/dvc/project`` (a further call in the same test: ``tmp_path/dvc-<k>/``)
    from this checkout's dvc.yaml, stages/, vaepipe/ and params.yaml, with ``overrides``
    merged over params.yaml and ``data.mirror`` pointing at a generated tiny mirror of the
    configured dataset (IDX files, or a CIFAR-10 tarball for cifar10); then git init, dvc init
    (analytics and update checks off) and a first commit. Subprocesses get the venv's bin
    directory first on PATH (so ``python`` in dvc.yaml commands is the venv's) and
    VAEPIPE_EXPECTED_MD5 naming the mirror's md5 table.
    """

    built: list[DvcProject] = []

    def build(overrides: Mapping[str, Any] | None = None, n_train: int = 200, n_test: int = 50,
              n_per_batch: int = 20, images: Callable[[Path], Any] | None = None) -> DvcProject:
        base = tmp_path / ("dvc" if not built else f"dvc-{len(built)}")
        project = build_project(base, overrides, n_train, n_test, n_per_batch, images)
        built.append(project)
        return project

    return build


@pytest.fixture(scope="session")
def _tiny_baseline(tmp_path_factory: pytest.TempPathFactory) -> DvcProject:
    """The whole pipeline reproduced once per test session on tiny data (``tiny.TINY_PIPELINE``)
    and committed; tests get copies (``tiny_repro``), never this one."""
    from tiny import ALL_STAGES, TINY_PIPELINE

    project = build_project(tmp_path_factory.mktemp("tiny-baseline"), TINY_PIPELINE)
    first = project.dvc("repro")
    ran = set(re.findall(r"Running stage '([^']+)'", first.stdout))
    assert ran == ALL_STAGES, first.stdout
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "tiny pipeline reproduced")
    return project


@pytest.fixture
def tiny_repro(_tiny_baseline: DvcProject, tmp_path: Path) -> DvcProject:
    """A private copy of a project whose whole tiny pipeline is reproduced and committed:
    `dvc status` is clean, every output is in the work tree and in the DVC cache."""
    return copy_project(_tiny_baseline, tmp_path / "tiny")


def saved_epochs(folder: Path) -> int:
    """The epochs a training's resume state in ``folder`` holds (0 while there is none)."""
    return next((n for n in map(state_epochs, Path(folder).glob("*.pt")) if n), 0)


def state_epochs(state: Path) -> int:
    """The epochs the resume state file ``state`` holds (0 while it is absent or partial)."""
    import torch

    try:
        return torch.load(state, weights_only=True)["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return 0
