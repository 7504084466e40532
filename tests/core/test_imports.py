"""`core`'s modules import cleanly on their own, and their import graph has no cycle, counting
the imports inside functions (a cycle hidden in a function is still a cycle; only the lazy imports
listed below exist, each for start-up cost, and even they close no cycle)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = ROOT / "core"

# Imports of our own modules inside functions, each for start-up cost only: `import core` must
# not load the engine, the store or Ray before the program asks for a session.
LAZY = {
    ("core._private.api", "core._private.local.engine"): "the local engine loads on first init",
    ("core._private.api", "core._private.local.zygote"): "the local engine's modules load on first use",
    ("core._private.api", "core._private.ray.backend"): "imports ray, only with init(address=...)",
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in CORE.rglob("*.py"))


def _imports(module: str, path: pathlib.Path) -> list[tuple[str, bool, int]]:
    """(imported module of ours, inside a function?, line) for each import that runs."""
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != module:
                found.append((target, id(node) in in_function, node.lineno))
    return found


def _graph() -> dict[str, list[tuple[str, bool, int]]]:
    return {_module_name(p): _imports(_module_name(p), p) for p in CORE.rglob("*.py")}


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = _graph()
    edges = {m: sorted({t for t, _, _ in imports}) for m, imports in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in edges[module]:
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_only_the_listed_lazy_ones():
    lazy = {(m, t): line for m, imports in _graph().items() for t, inside, line in imports if inside}
    unexpected = {f"{m} -> {t} (line {line})" for (m, t), line in lazy.items() if (m, t) not in LAZY}
    assert not unexpected, ("imports of core modules inside functions (import at the top, or add the "
                            f"edge to LAZY with its reason if it is for start-up cost): {sorted(unexpected)}")


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_all_modules_import_in_reverse_order_in_one_interpreter():
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % (MODULES[::-1],)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_importing_core_loads_neither_the_engine_nor_ray():
    code = ("import sys, core\n"
            "loaded = [m for m in ('ray', 'core._private.local.engine', 'core._private.objects.store') "
            "if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
