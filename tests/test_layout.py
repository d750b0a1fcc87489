"""The shape of the code base: no import circle among the repository's modules (util/errors.py imports none of them),
and no function outside the tests longer than 60 lines or taking more than 8 parameters."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

MAX_LINES, MAX_PARAMETERS = 60, 8


def python_files() -> list[Path]:
    skipped = {".venv", "tests", ".git", "wandb", "runs"}
    return sorted(p for p in REPO.rglob("*.py") if not skipped & set(p.relative_to(REPO).parts))


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the repository's modules it imports (anywhere in it, function-level imports included)."""
    paths = {module_name(p): p for p in python_files() if not p.relative_to(REPO).parts[0] == "benchmarks"}
    graph = {name: set() for name in paths}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name] |= {target for target in targets if target in paths and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_and_errors_is_a_leaf():
    graph = import_graph()
    assert cycles(graph) == []
    assert graph["util.errors"] == set()
    # the check itself: a circle made on purpose is found
    assert cycles({**graph, "util.errors": {"util.config"}})


def test_no_function_over_60_lines_or_8_parameters():
    too_big = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            parameters = len([n for n in names if n not in ("self", "cls")])
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES or parameters > MAX_PARAMETERS:
                too_big.append(
                    f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines, {parameters} parameters"
                )
    assert too_big == []
