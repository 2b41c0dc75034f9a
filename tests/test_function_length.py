"""Each function in sfm/ reads in one screen (STYLE.md: nanoGPT-style, top to bottom)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sfm"
MAX_LINES = 66  # about a screen: the ~60-line budget with a docstring's slack


def test_no_function_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
