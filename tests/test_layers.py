"""The package's layers: a pure core that never imports a leaf, and no import cycles.

The core is what a conversion, a reader of SFMP files and the kernels' tests need. The leaves build
llama.cpp (``llama``), make the demo assets (``assets``), run benchmarks (``bench``) and the command
lines (``cli`` and the modules in LEAF_MODULES); they may import the core and each other, never the
other way round. So importing the core never fetches or builds anything, and a leaf can change
without touching what the converter runs. Every module must be listed as one or the other.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sfmp_gguf"

CORE = {
    "sfmp_gguf", "sfmp_gguf.format", "sfmp_gguf.quant", "sfmp_gguf.quant.activations", "sfmp_gguf.quant.elastic",
    "sfmp_gguf.quant.reference", "sfmp_gguf.analysis", "sfmp_gguf.allocation", "sfmp_gguf.gguf_io",
    "sfmp_gguf.gguf_types", "sfmp_gguf.gguf_package", "sfmp_gguf.imatrix_io", "sfmp_gguf.kernels",
    "sfmp_gguf.native_analysis", "sfmp_gguf.quantize", "sfmp_gguf.permutation", "sfmp_gguf.units",
    "sfmp_gguf.importance", "sfmp_gguf.model_source", "sfmp_gguf.pipeline", "sfmp_gguf.errors", "sfmp_gguf.atomic",
    "sfmp_gguf.paths", "sfmp_gguf.report", "sfmp_gguf.fisher", "sfmp_gguf.derive", "sfmp_gguf.gguf_header",
}
LEAF_PACKAGES = ("sfmp_gguf.llama", "sfmp_gguf.assets", "sfmp_gguf.bench", "sfmp_gguf.cli")
LEAF_MODULES = {
    "sfmp_gguf.evaluate": "runs the built llama-perplexity (llama.build); its main scores the demo teacher",
    "sfmp_gguf.fuzz": "runs the sanitizer build's harness on the demo teacher",
    "sfmp_gguf.codegen": "a developer's tool: renders format.py into ggml_patch/",
    "sfmp_gguf.inspect": "a command line: python -m sfmp_gguf.inspect",
}


def module_files() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def is_leaf(name: str) -> bool:
    return name in LEAF_MODULES or any(name == p or name.startswith(p + ".") for p in LEAF_PACKAGES)


def _dynamic_target(node: ast.Call) -> str | None:
    """The module named by importlib.import_module("x") or __import__("x") with a constant name."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_in(source: str, importer: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, sfmp_gguf module) for every import in ``source``: at module level, inside functions and
    classes, and importlib.import_module / __import__ of a constant name. ``from P import m`` names
    both P and the module P.m where m is one."""
    found = []
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_target(node)):
            targets = [dynamic]
        found += [(node.lineno, t) for t in targets if t == "sfmp_gguf" or t.startswith("sfmp_gguf.")]
    return found


def module_imports(name: str) -> list[tuple[int, str]]:
    path = MODULES[name]
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def test_every_module_is_core_or_a_leaf():
    unlisted = [m for m in MODULES if m not in CORE and not is_leaf(m)]
    both = [m for m in MODULES if m in CORE and is_leaf(m)]
    assert not unlisted, f"list these in CORE or the leaves of {Path(__file__).name}: {unlisted}"
    assert not both, f"both core and leaf: {both}"
    assert not (CORE - set(MODULES)), f"CORE names modules that do not exist: {sorted(CORE - set(MODULES))}"


def test_the_checker_sees_function_local_relative_and_dynamic_imports():
    source = ("import os\n"
              "def f():\n    from sfmp_gguf.llama.build import current_build\n"
              "class C:\n    def g(self):\n        from .assets import cache\n"
              "def h():\n    importlib.import_module('sfmp_gguf.bench.speed')\n")
    wanted = {"sfmp_gguf.llama.build", "sfmp_gguf.assets.cache", "sfmp_gguf.bench.speed"}
    assert wanted <= {t for _, t in imports_in(source, "sfmp_gguf.kernels")}
    assert all(is_leaf(t) for t in wanted)


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_module_imports_no_leaf_even_inside_functions(name: str):
    bad = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
           for line, target in module_imports(name) if is_leaf(target)]
    assert not bad, "the core may not import a leaf:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", sorted(CORE))
def test_importing_a_core_module_loads_no_leaf(name: str):
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'sfmp_gguf')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    leaves = [m for m in loaded if is_leaf(m)]
    assert not leaves, f"import {name} loaded {leaves}"


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. An import of one's own enclosing package is left out:
    Python runs a package's __init__ before any module in it, so that is order, not a cycle."""
    graph = {}
    for name in MODULES:
        ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for _, t in module_imports(name) if t in MODULES and t != name and t not in ancestors}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_among_package_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (function-local imports count): " + " -> ".join(cycle)
