"""Regenerate docs/api.md from the docstrings: ``python docs/make_api.py``.

``tests/test_docs.py`` fails when a public name is missing from docs/api.md or
its summary no longer matches the first line of its docstring.
"""

from pathlib import Path

from capalloc.cli import _api_markdown

if __name__ == "__main__":
    target = Path(__file__).with_name("api.md")
    target.write_text(_api_markdown(), encoding="utf-8")
    print(f"wrote {target}")
