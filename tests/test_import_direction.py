"""Rooms import one way: data <- models <- pipeline / relax <- eval <- tasks (README, Architecture).

pipeline and relax sit side by side; a pipeline may drive relaxations (the adsorption search),
relax never imports pipeline.

Read from the source with ``ast`` (every ``import`` / ``from ... import``, lazy ones inside
functions included), so a late import cannot hide a backward edge.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sfm"
LEVEL = {"data": 0, "models": 1, "pipeline": 2, "relax": 2, "eval": 3, "tasks": 4}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sfm" and parts[1] in LEVEL else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _edges():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        room = _room(module)
        if room is None:
            continue
        for target in _imports(path):
            yield module, room, target, _room(target)


def test_rooms_import_only_downward():
    backward = [(m, t) for m, room, t, to in _edges() if to is not None and LEVEL[to] > LEVEL[room]]
    assert not backward, f"imports against the room order: {sorted(set(backward))}"


def test_relax_does_not_import_pipeline():
    side = [(m, t) for m, room, t, to in _edges() if (room, to) == ("relax", "pipeline")]
    assert not side, f"relax imports pipeline: {sorted(set(side))}"


def test_eval_does_not_import_the_demo_world_builder():
    demo = [(m, t) for m, room, t, _ in _edges() if room == "eval" and t.startswith("sfm.data.demo")]
    assert not demo, f"sfm/eval imports the demo world builder: {demo}"


def test_no_eval_module_loads_the_demo_world_builder_even_indirectly():
    """What the ast test cannot see: an eval module importing one that imports the builder. The
    modules are imported one after another in a fresh interpreter; sfm.data.demo must not appear
    (the first module that brings it in is named)."""
    modules = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in sorted((PACKAGE / "eval").glob("*.py"))
    ]
    run = subprocess.run(
        [sys.executable, "-c", LOADS_DEMO, *modules], capture_output=True, text=True, cwd=PACKAGE.parent
    )
    assert run.returncode == 0, run.stderr[-800:]


LOADS_DEMO = """import importlib, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
    assert "sfm.data.demo" not in sys.modules, f"{module} loads sfm.data.demo"
"""


def test_the_indirect_check_sees_an_indirect_import():
    run = subprocess.run(
        [sys.executable, "-c", LOADS_DEMO, "sfm.data.lattice", "sfm.data.dense"],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
    )
    assert run.returncode == 1 and "sfm.data.dense loads sfm.data.demo" in run.stderr
