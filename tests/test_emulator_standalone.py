"""The emulator stands alone: it imports nothing from the product it emulates for.

The emulator is the stand-in for Anthropic's servers; if it borrowed the
product's token estimator or JSON helpers, a bug there would be billed the same
way here and no test could see it. Two checks: a fresh interpreter importing
every emulator module loads no `transforms` or `pipeline` module, and no
emulator source file names either package in an import statement (which also
catches imports inside functions, not run at import time).
"""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import emulator

EMULATOR_DIR = pathlib.Path(emulator.__file__).resolve().parent
REPO_ROOT = EMULATOR_DIR.parent
FORBIDDEN = ("transforms", "pipeline")


def _emulator_modules():
    return sorted("emulator" if p.stem == "__init__" else f"emulator.{p.stem}"
                  for p in EMULATOR_DIR.glob("*.py"))


def _forbidden(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in FORBIDDEN)


def test_every_emulator_module_is_found():
    modules = _emulator_modules()
    assert {"emulator", "emulator.server", "emulator.__main__", "emulator.tokenizer",
            "emulator.jsonutil", "emulator.answers"} <= set(modules)


def test_importing_the_emulator_loads_no_product_module():
    modules = ["emulator", "emulator.server", "emulator.__main__"] + _emulator_modules()
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    # -I: isolated (no user site, no PYTHON* variables); the repository on the path, as tests have it
    proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"
                           + script], capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(modules) <= set(loaded)
    assert [name for name in loaded if _forbidden(name)] == []


def _imported_names(tree: ast.AST):
    """(line, module) of every import in a parsed emulator file, anywhere in it:
    `import a.b`, `from a.b import c`, relative imports resolved (`emulator` is
    a top-level package, so `from .. import x` imports the top-level module x),
    and importlib.import_module / __import__ of a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, node.module
            elif node.level == 1:
                yield node.lineno, ".".join(filter(None, ["emulator", node.module]))
            elif node.module:
                yield node.lineno, node.module
            else:
                for alias in node.names:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            yield node.lineno, str(node.args[0].value)


def _offenders(path: pathlib.Path, source: str):
    tree = ast.parse(source, filename=str(path))
    return [f"{path.name}:{line}: {name}" for line, name in _imported_names(tree) if _forbidden(name)]


def test_no_emulator_source_imports_the_product():
    offenders = []
    for path in sorted(EMULATOR_DIR.glob("*.py")):
        offenders += _offenders(path, path.read_text(encoding="utf-8"))
    assert offenders == []


@pytest.mark.parametrize("source, bad", [
    ("import transforms.api.tokens", True),
    ("from transforms.api.tokens import estimate_tokens", True),
    ("from transforms import fastjson", True),
    ("def f():\n    import pipeline.run", True),
    ("import importlib\nimportlib.import_module('transforms.api.tokens')", True),
    ("from .. import transforms", True),
    ("from ..pipeline import run", True),
    ("from . import tokenizer", False),
    ("from emulator import jsonutil", False),
    ("import json, hashlib", False),
    ("from emulator.tokenizer import count_text  # not transforms.api.tokens", False),
])
def test_the_static_check_sees_an_import(source, bad):
    assert bool(_offenders(pathlib.Path("example.py"), source)) is bad


# ---- today the emulator's tokenizer bills what the product estimates ----------------
# (a test may import both; a later change makes emulator.tokenizer differ on purpose,
# and replaces this check with one of the intended difference)

from hypothesis import given, settings, strategies as st  # noqa: E402

from emulator import tokenizer  # noqa: E402

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)) | st.sampled_from("é€\U0001F600\ud800"),
                max_size=60)
_BLOCKS = st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, _TEXT),
                             st.just({"type": "image"}), st.just({"type": "text"})), max_size=4)
_CONTENT = st.one_of(_TEXT, _BLOCKS)
_SCHEMA = st.one_of(st.none(), st.just({}), st.dictionaries(_TEXT, st.one_of(_TEXT, st.integers()), max_size=3))
_PARAMS = st.builds(
    lambda system, messages, schema: {
        "model": "m", "max_tokens": 5,
        **({} if system is None else {"system": system}),
        "messages": [{"role": "user", "content": c} for c in messages],
        **({} if schema is None else {"output_config": {"format": {"type": "json_schema", "schema": schema}}})},
    st.one_of(st.none(), _CONTENT), st.lists(_CONTENT, min_size=1, max_size=3), _SCHEMA)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_text_counts_equal_the_product_estimate(text):
    from transforms.api import tokens
    assert tokenizer.count_text(text) == tokens.estimate_tokens(text)


@settings(max_examples=300, deadline=None)
@given(_PARAMS)
def test_request_counts_equal_the_product_estimate(params):
    from transforms.api import tokens
    assert tokenizer.estimate_request_tokens(params) == tokens.estimate_request_tokens(params)
    assert tokenizer.shared_request_tokens(params) == tokens.shared_request_tokens(params)
    assert tokenizer.messages_tokens(params) == tokens.messages_tokens(params)
    assert tokenizer.system_tokens(params.get("system")) == tokens.system_tokens(params.get("system"))
