"""Every library module a stage imports for its numbers is a DVC dep of that stage, and no more;
the library's layout keeps that true (packages that import nothing, one import direction).

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
# a docstring (test_packages_import_nothing).
SHARED = ("vaepipe/config.py", "vaepipe/io.py", "vaepipe/runtime.py")
# `python -m vaepipe.<name>` commands: no stage imports them, they may import any package
COMMANDS = ("vaepipe/compare.py", "vaepipe/grid.py", "vaepipe/sample.py")
PACKAGE_INITS = {p.relative_to(ROOT).as_posix() for p in (ROOT / "vaepipe").rglob("__init__.py")}
NOT_DEPS = {*SHARED, *PACKAGE_INITS}
# The library's packages, in the one direction their imports may go: a module imports from its
# own package, from the shared modules above, and from packages earlier in this list.
ORDER = ("data", "models", "train", "evaluate", "sweep", "figures")
MAX_LINES = 400


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
    # the checker itself: train.py reaches the objective through the training loop
    found = library_files(ROOT / "stages/train.py")
    assert {"vaepipe/train/loop.py", "vaepipe/train/objective.py", "vaepipe/models/vae.py",
            "vaepipe/data/arrays.py", "vaepipe/data/catalog.py"} <= found


def library_modules():
    return sorted(p for p in (ROOT / "vaepipe").rglob("*.py"))


def test_packages_import_nothing():
    # a package's __init__ is one docstring, so importing one module of a package loads (and
    # makes a stage depend on) that module alone
    for init in sorted(PACKAGE_INITS):
        body = ast.parse((ROOT / init).read_text()).body
        assert len(body) == 1 and isinstance(body[0].value, ast.Constant), init


def test_imports_between_packages_go_one_way():
    wrong = []
    for path in library_modules():
        parts = path.relative_to(ROOT / "vaepipe").parts
        if path.relative_to(ROOT).as_posix() in COMMANDS:  # on top of everything, as a stage
            allowed = set(ORDER)
        elif len(parts) == 1:  # a shared module: imports no package
            allowed = set()
        else:
            allowed = set(ORDER[:ORDER.index(parts[0]) + 1])
        for name in _imported_modules(path):
            target = name.split(".")[1]
            if target in ORDER and target not in allowed:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []
    assert {p.name for p in (ROOT / "vaepipe").iterdir() if p.is_dir()} - {"plot_templates",
                                                                           "__pycache__"} \
        == set(ORDER)


def test_no_library_file_is_over_the_length_limit():
    long = {p.relative_to(ROOT).as_posix(): n for p in library_modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
