"""Each function in sfm/ reads in one screen (STYLE.md: nanoGPT-style, top to bottom)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sfm"
MAX_LINES = 60  # lines of a function without its docstring


def _code_lines(node) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_LINES:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    assert not long, "split these into named steps: " + "; ".join(long)
