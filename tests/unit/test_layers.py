"""The import layers, checked on the code as it is.

- ``benchop.core`` imports nothing of kopf, zmq, aiohttp or ``benchop.operator``;
- ``benchop.local`` never imports ``benchop.operator``;
- ``benchagent`` never imports ``benchop``;
- the modules of both packages import each other without a cycle.

The graph is read from every module's AST: every ``import`` and ``from ... import`` statement
in the module, in functions and under ``if TYPE_CHECKING:`` too (a function's import is a
dependency all the same, and a cycle kept for the type checker only is still a cycle).
``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.
The rules that forbid third-party packages are also checked by importing the modules in a
fresh interpreter and reading ``sys.modules``, which sees what those packages import in turn.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"benchop": ROOT / "operator", "benchagent": ROOT / "agent"}
NOT_IN_CORE = ("kopf", "zmq", "aiohttp", "benchop.operator")


@cache
def modules() -> dict[str, Path]:
    """Every module of both packages: dotted name -> file."""
    out = {}
    for package, root in SOURCES.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


@cache
def imports(module: str) -> frozenset[str]:
    """What ``module`` imports: our modules by name, other packages by their top level."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}".rstrip(".")
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            out.add(candidate if candidate in modules() else base)
    return frozenset(name if name in modules() else name.split(".")[0] for name in out)


def reached(start: Iterable[str]) -> set[str]:
    """Every module (ours) and top-level package (others) reachable from ``start``."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in modules():
            todo.extend(imports(name))
    return seen


def package(prefix: str) -> list[str]:
    return [m for m in modules() if m == prefix or m.startswith(prefix + ".")]


def forbidden(names: Iterable[str], prefixes: Iterable[str]) -> list[str]:
    return sorted(n for n in names for p in prefixes if n == p or n.startswith(p + "."))


def loaded_after_importing(names: Iterable[str]) -> list[str]:
    """``sys.modules`` of a fresh interpreter after importing ``names``."""
    code = "import importlib, json, sys\n"
    code += "".join(f"importlib.import_module({n!r})\n" for n in names)
    code += "print(json.dumps(sorted(sys.modules)))"
    path = os.pathsep.join([str(SOURCES["benchop"]), str(SOURCES["benchagent"])])
    env = {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_the_graph_sees_the_packages() -> None:
    """The reader finds what the rules are about (a broken reader would pass them all)."""
    assert {"benchop.core.results", "benchop.local.session", "benchagent.wire"} <= modules().keys()
    assert "benchop.core.names" in imports("benchop.api.models")
    assert {"kopf", "benchop.operator.handlers.runs"} <= imports("benchop.operator.main")
    assert {"kopf", "aiohttp", "zmq", "benchop.operator.k8s"} <= reached(["benchop.operator.main"])


def test_core_imports_no_kopf_zmq_aiohttp_or_operator() -> None:
    core = package("benchop.core")
    assert len(core) > 5
    assert forbidden(reached(core), NOT_IN_CORE) == []
    assert forbidden(loaded_after_importing(core), NOT_IN_CORE) == []


def test_local_mode_never_imports_the_operator() -> None:
    local = package("benchop.local")
    assert forbidden(reached(local), ["benchop.operator"]) == []
    assert forbidden(loaded_after_importing(local), ["benchop.operator"]) == []


def test_benchagent_never_imports_benchop() -> None:
    assert forbidden(reached(package("benchagent")), ["benchop"]) == []


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or with a self-import
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = {m: frozenset(i for i in imports(m) if i in modules()) for m in modules()}
    assert cycles({"a": frozenset("b"), "b": frozenset("a"), "c": frozenset()}) == [["a", "b"]]
    assert cycles(graph) == []
