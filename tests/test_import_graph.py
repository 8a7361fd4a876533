"""The house rules that the import graph shows: no cycles anywhere, the
emulator stands apart from the product, and the pure modules stay pure.

Every import is counted, including the ones inside functions: a lazy import
that closes a cycle is still a cycle a reader has to untangle."""
from __future__ import annotations

import ast
import os
from typing import Dict, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipeline", "transforms", "emulator")


def _modules() -> Dict[str, str]:
    """Dotted module name -> file path, for every module of our packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                    found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, name)
    return found


def _imports(path: str, module: str, known: Set[str]) -> Set[str]:
    """Our modules that `module` imports (a `from X import Y` naming a
    submodule Y counts as importing X.Y, not X's __init__)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != module}


def graph() -> Dict[str, Set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def cycles(g: Dict[str, Set[str]]):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_a_cycle():
    """The checker itself can fail: a planted two-module cycle is reported."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_emulator_imports_nothing_of_the_product():
    g = graph()
    leaks = {m: sorted(d for d in deps if not d.startswith("emulator"))
             for m, deps in g.items() if m.startswith("emulator")}
    assert {m: d for m, d in leaks.items() if d} == {}


@pytest.mark.parametrize("module", ["transforms.prompts.requests", "transforms.prompts.packing", "transforms.prompts.answers",
                                    "transforms.prompts.validation",
                                    "transforms.modes", "transforms.api.tokens"])
def test_pure_modules_import_no_api_or_beam(module):
    """Decisions (requests, packing, matching, pricing) know nothing of Beam or HTTP."""
    mods = _modules()
    if module not in mods:
        pytest.fail(f"{module} moved: update this list")
    tree = ast.parse(open(mods[module], encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    assert not names & {"apache_beam", "anthropic", "httpx", "google"}, names
