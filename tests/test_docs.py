"""The documentation runs and stays in step with the code.

* Every ```python block of README.md and docs/tutorial.md is executed, in file order, in one
  namespace per file (one test per block, so run the whole file rather than a ``-k`` subset).
  Blocks written as ``>>>`` sessions are checked as doctests; plain blocks are executed (and
  may ``assert``). A block whose first line is ``# requires: MOD[, MOD...]`` is skipped when a
  module is missing; such blocks must not define names that later unmarked blocks use.
* docs/api.md lists every public name with the first line of its docstring
  (regenerate with ``python docs/make_api.py``).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import os
import re
from pathlib import Path

import pytest

import capalloc

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_api", ROOT / "docs/make_api.py")
make_api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_api)
DOC_FILES = ("README.md", "docs/tutorial.md")
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
REQUIRES = re.compile(r"^#\s*requires:\s*(.+)$")
REGENERATE = "docs/api.md is stale: run `python docs/make_api.py`"


def _blocks(name: str) -> list[tuple[int, str]]:
    text = (ROOT / name).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = [(name, lineno, code) for name in DOC_FILES for lineno, code in _blocks(name)]


def _missing(code: str) -> list[str]:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    match = REQUIRES.match(first.strip())
    if not match:
        return []
    needed = [m.strip() for m in match.group(1).split(",") if m.strip()]
    missing = []
    for module in needed:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    return missing


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    """One namespace per documentation file, shared by its blocks in order."""
    workdir = tmp_path_factory.mktemp("docs")
    old = os.getcwd()
    os.chdir(workdir)  # blocks that write files write them here
    yield {name: {"__name__": f"docs:{name}"} for name in DOC_FILES}
    os.chdir(old)


def test_docs_have_python_blocks():
    for name in DOC_FILES:
        assert _blocks(name), f"{name} has no ```python block"


@pytest.mark.parametrize("name, lineno, code", BLOCKS, ids=[f"{n}:{line}" for n, line, _ in BLOCKS])
def test_doc_block_runs(namespaces, name, lineno, code):
    missing = _missing(code)
    if missing:
        pytest.skip(f"{name}:{lineno} needs {', '.join(missing)}")
    globs = namespaces[name]
    if code.lstrip().startswith(">>>"):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(code, globs, f"{name}:{lineno}", name, lineno - 1)
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        runner = doctest.DocTestRunner(optionflags=flags)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        globs.update(test.globs)  # DocTest works on a copy of the namespace
        assert runner.failures == 0, "".join(report)
    else:
        exec(compile(code, f"{name}:{lineno}", "exec"), globs)  # noqa: S102


def test_readme_keeps_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_fence = re.search(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert first_fence and first_fence.start() < 1500, "set-up commands must be near the top"
    block = first_fence.group(1)
    assert 'pip install -e ".[dev]" && capalloc demo' in block
    assert "python -m pytest -q" in block


def test_doc_figures_are_small():
    text = (ROOT / "README.md").read_text(encoding="utf-8") + (ROOT / "docs/tutorial.md").read_text(
        encoding="utf-8"
    )
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        path = ROOT / target if (ROOT / target).exists() else ROOT / "docs" / target
        assert path.exists(), target
        assert path.stat().st_size < 200_000, target


def test_local_doc_links_we_own_exist():
    for target in ("docs/tutorial.md", "docs/api.md", "docs/figures/demo.png"):
        assert (ROOT / target).exists(), target


# ----------------------------------------------------------------------------- docs/api.md

ENTRY = re.compile(r"^- \*\*`(?P<name>[^`]+)`\*\*(?P<rest>.*)$", re.M)


def _api_entries() -> dict[str, str]:
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    return {m.group("name"): m.group("rest") for m in ENTRY.finditer(text)}


def _first_line(obj) -> str | None:
    """First docstring line of modules, classes and functions (reST roles shown as Markdown
    code); None for plain data."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
        return None
    doc = inspect.getdoc(obj) or ""
    return make_api._markdown_inline(doc.strip().splitlines()[0].strip()) if doc.strip() else ""


def test_api_lists_every_public_name_with_its_summary():
    entries = _api_entries()
    for name in capalloc.__all__:
        key = f"capalloc.{name}"
        assert key in entries, f"{key} missing; {REGENERATE}"
        try:
            obj = getattr(capalloc, name)
        except ImportError:  # a lazy module not written yet
            continue
        summary = _first_line(obj)
        if summary is not None:
            assert entries[key] == f" — {summary}", f"{key}: {REGENERATE}"


def test_api_lists_every_method_with_its_summary():
    entries = _api_entries()
    for name in capalloc.methods():
        key = f'"{name}"'
        assert key in entries, f"method {name} missing; {REGENERATE}"
        summary = _first_line(capalloc.get_method(name).function)
        assert entries[key].startswith(f" — {summary} *("), f"method {name}: {REGENERATE}"


def test_api_submodule_entries_match_docstrings():
    entries = _api_entries()
    for qualname, rest in entries.items():
        parts = qualname.split(".")
        if len(parts) != 3 or parts[0] != "capalloc":
            continue
        module = importlib.import_module(f"capalloc.{parts[1]}")
        obj = getattr(module, parts[2])
        summary = _first_line(obj)
        if summary is not None:
            assert rest == f" — {summary}", f"{qualname}: {REGENERATE}"
    for mod_name in make_api._API_SUBMODULES:
        try:
            module = importlib.import_module(f"capalloc.{mod_name}")
        except ImportError:
            continue
        for name in getattr(module, "__all__", []):
            assert f"capalloc.{mod_name}.{name}" in entries, f"{mod_name}.{name}: {REGENERATE}"


def test_committed_api_page_is_what_the_generator_writes():
    text = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    assert text == make_api.api_markdown(), REGENERATE
