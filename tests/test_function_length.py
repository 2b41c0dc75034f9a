"""Each function in sfm/ reads in one screen (STYLE.md: nanoGPT-style, top to bottom).

Counted in statements (the lines on which one starts), not physical lines: the formatter
decides how a long call wraps, the author decides how many steps a function takes."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sfm"
MAX_LINES = 60  # statements of a function, its docstring apart


def _code_lines(node) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:]
    return len({s.lineno for stmt in body for s in ast.walk(stmt) if isinstance(s, ast.stmt)})


def test_no_function_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_LINES:
                long.append(
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_code_lines(node)} statements)"
                )
    assert not long, "split these into named steps: " + "; ".join(long)
