"""Generate docs/api.md from the docstrings: ``python docs/make_api.py``.

``tests/test_docs.py`` checks the committed page against :func:`api_markdown` and every
summary against its docstring.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

# the working tree's capalloc, not whichever copy happens to be installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import capalloc  # noqa: E402
from capalloc.cli.main import build_parser  # noqa: E402

# ----------------------------------------------------------------------------- API reference

_API_GROUPS = (
    (
        "Problems and results",
        (
            "QuadraticProblem",
            "SeparableProblem",
            "AllocationResult",
            "AllocationWarning",
            "kkt_residual",
        ),
    ),
    ("Solving", ("solve", "methods", "get_method", "register_method", "waterfill")),
    ("Capacity", ("capacity", "leverage", "classify")),
    (
        "Quadratic model",
        ("quadratic_loss", "quadratic_loss_grad", "optimal_bias", "capacity_form_loss"),
    ),
    (
        "Modules",
        ("distributions", "theory", "testing", "plots", "experiments", "geometry", "train"),
    ),
)
_API_CONSTANTS = {
    "MONOSEMANTIC": "label of a feature with capacity 1 (orthogonal to all others)",
    "POLYSEMANTIC": "label of a feature with capacity strictly between 0 and 1",
    "IGNORED": "label of a feature with capacity 0 (zero column)",
    "LABELS": "the three labels in order of decreasing capacity",
    "__version__": "the package version",
}
_API_SUBMODULES = (
    "distributions",
    "plots",
    "theory",
    "geometry",
    "training",
    "testing",
    "experiments",
)


def _summary(obj: Any) -> str:
    """First line of the docstring of ``obj`` ('' without one)."""
    doc = inspect.getdoc(obj) or ""
    lines = doc.strip().splitlines()
    return lines[0].strip() if lines else ""


def _markdown_inline(text: str) -> str:
    """reST inline markup as Markdown: ``:func:`~a.b``` and ````x```` become ```b``` and ```x```."""

    def role(match: re.Match[str]) -> str:
        short, target = match.groups()
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    text = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def api_markdown() -> str:
    """Markdown text of ``docs/api.md``, generated from the docstrings (``docs/make_api.py``)."""
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `python docs/make_api.py`; do not edit by hand "
        "(`tests/test_docs.py` checks that every summary matches its docstring). "
        "Full documentation: `help(capalloc.NAME)`.",
        "",
    ]

    def entry(qualname: str, obj: Any) -> str:
        return f"- **`{qualname}`** — {_markdown_inline(_summary(obj))}"

    names = list(capalloc.__all__)
    placed = {n for _, group in _API_GROUPS for n in group} | set(_API_CONSTANTS)
    groups = [*_API_GROUPS, ("Other", tuple(n for n in names if n not in placed))]
    out += ["## `import capalloc`", ""]
    for title, group in groups:
        present = [n for n in group if n in names]
        if not present:
            continue
        out += [f"### {title}", ""]
        for name in present:
            try:
                obj = getattr(capalloc, name)
            except (ImportError, AttributeError):
                out.append(f"- **`capalloc.{name}`** — *(not available in this installation)*")
                continue
            out.append(entry(f"capalloc.{name}", obj))
        out.append("")
    out += ["### Constants", ""]
    for name, text in _API_CONSTANTS.items():
        if name in names:
            out.append(f"- **`capalloc.{name}`** = `{getattr(capalloc, name)!r}` — {text}")
    out.append("")

    out += [
        "## Solver methods",
        "",
        "Names accepted by `capalloc.solve(problem, method=...)` (`capalloc.methods()`); "
        '`"auto"` picks `waterfill` for quadratic problems and `scipy` for separable ones.',
        "",
    ]
    for name in capalloc.methods():
        info = capalloc.get_method(name)
        traits = ", ".join(t for t, on in (("exact", info.exact), ("batched", info.batched)) if on)
        kinds = "/".join(p.__name__ for p in info.problems)
        out.append(
            f'- **`"{name}"`** — {_markdown_inline(info.summary)} '
            f"*({kinds}; {traits or 'approximate'})*"
        )
    out.append("")

    for mod_name in _API_SUBMODULES:
        try:
            module = importlib.import_module(f"capalloc.{mod_name}")
        except ImportError:
            continue
        public = list(getattr(module, "__all__", []))
        if not public:
            continue
        out += [f"## `capalloc.{mod_name}`", "", _markdown_inline(_summary(module)), ""]
        for name in public:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or callable(obj):
                out.append(entry(f"capalloc.{mod_name}.{name}", obj))
            else:
                out.append(f"- **`capalloc.{mod_name}.{name}`** — data ({type(obj).__name__})")
        out.append("")

    parser = build_parser()  # the command line, as argparse prints it
    out += ["## Command line", "", "```text", parser.format_usage().strip()]
    # argparse internals: build_parser always adds sub-commands, whose choices are a dict
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]  # noqa: SLF001
        for sub in action.choices.values():  # type: ignore[union-attr]
            out += ["", " ".join(sub.format_usage().split())]
    out += ["```", "", "See `capalloc COMMAND --help` for details.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    target = Path(__file__).with_name("api.md")
    target.write_text(api_markdown(), encoding="utf-8")
    print(f"wrote {target}")
