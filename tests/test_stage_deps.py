"""Every library module a stage imports for its numbers is a DVC dep of that stage, and no more.

The imports are read statically (ast) from the stage script, following vaepipe's own imports
transitively, so a new import without a new dep (or a stale dep) fails here.
"""
import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Not deps on purpose: params are declared per key (config.py only parses them), and io.py only
# writes files atomically; neither changes a number, and as deps an edit to a message or to
# the write helper would rerun every stage. runtime.py sets up the process (signals, the
# kernels' environment, the thread count): the thread count does change the conv models' last
# bits, but what decides it is the machine and the moment (cores, the stages running then,
# VAEPIPE_THREADS), which DVC cannot track any more than the CPU kind; each stage records its
# count in its metrics, and the README says what differs. Strict kernels are an environment
# switch that the README says to pair with `dvc repro -f`. Package __init__ files hold only
# docstrings.
NOT_DEPS = {"vaepipe/config.py", "vaepipe/io.py", "vaepipe/runtime.py", "vaepipe/__init__.py",
            "vaepipe/data/__init__.py"}


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for candidate in (ROOT / rel.with_suffix(".py"), ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # `from vaepipe.data import split` imports the module vaepipe.data.split
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] == "vaepipe" and _module_file(n)}


def library_files(script: Path) -> set[str]:
    """Repo-relative paths of every vaepipe module ``script`` imports, transitively."""
    seen: set[str] = set()
    todo = [script]
    while todo:
        for name in _imported_modules(todo.pop()):
            rel = _module_file(name).relative_to(ROOT).as_posix()
            if rel not in seen:
                seen.add(rel)
                todo.append(ROOT / rel)
    return seen


def stages():
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        deps = {d for d in stage.get("deps", []) if isinstance(d, str)}
        yield name, script, deps


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    problems = []
    for name, script, deps in stages():
        if script not in deps:
            problems.append(f"{name}: its script {script} is not a dep")
        needed = library_files(ROOT / script) - NOT_DEPS
        listed = {d for d in deps if d.startswith("vaepipe/")}
        if needed - listed:
            problems.append(f"{name}: imports but does not depend on {sorted(needed - listed)}")
        if listed - needed:
            problems.append(f"{name}: depends on modules it does not import {sorted(listed - needed)}")
    assert problems == []


def test_the_import_reader_follows_vaepipe_imports():
    # the checker itself: train.py reaches the objective through training.py
    found = library_files(ROOT / "stages/train.py")
    assert {"vaepipe/training.py", "vaepipe/objective.py", "vaepipe/models.py",
            "vaepipe/data/arrays.py", "vaepipe/data/catalog.py"} <= found
