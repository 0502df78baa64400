"""Readable at a glance: module, function and nesting limits, checked on every run.

The limits are the project's (DEVELOPERS.md): a module over ~400 lines usually holds two jobs,
a function over ~60 lines or nested deeper than 4 blocks hides its steps. Docstrings and
blank lines count: they are what a reader scrolls through.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlflow_triton", "lightning_callbacks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_NESTING = 4
_BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _nesting(node: ast.AST, depth: int = 0) -> int:
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue  # measured on its own
        inner = depth + 1 if isinstance(child, _BLOCKS) else depth
        if isinstance(child, ast.If) and isinstance(node, ast.If) and child in node.orelse:
            inner = depth  # elif: a sibling branch, not a deeper one
        deepest = max(deepest, _nesting(child, inner))
    return deepest


def shape_problems(path: Path) -> list[str]:
    text = path.read_text()
    name = path.relative_to(ROOT)
    problems = []
    if len(text.splitlines()) > MAX_MODULE_LINES:
        problems.append(f"{name}: {len(text.splitlines())} lines (> {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                problems.append(f"{name}:{node.lineno} {node.name}: {lines} lines (> {MAX_FUNCTION_LINES})")
            depth = _nesting(node)
            if depth > MAX_NESTING:
                problems.append(f"{name}:{node.lineno} {node.name}: nested {depth} deep (> {MAX_NESTING})")
    return problems


def test_the_checker_sees_deep_nesting_and_long_functions(tmp_path):
    body = "\n".join(["def f(x):"] + ["    if x:"] + ["        for y in x:"] + ["            with y:"]
                     + ["                while y:"] + ["                    try:"] + ["                        pass"]
                     + ["                    except E:"] + ["                        pass"] + ["    return 1"] * 60)
    path = ROOT / "mlflow_triton" / "_shape_probe.py"
    try:
        path.write_text(body)
        problems = shape_problems(path)
    finally:
        path.unlink()
    assert any("nested 5 deep" in p for p in problems) and any("lines (> 60)" in p for p in problems)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_readable_at_a_glance(path):
    assert shape_problems(path) == []
