"""Printing for the command line: tables, JSON (streamed for long arrays), figures, errors.

Shared by :mod:`capalloc.cli.main` and :mod:`capalloc.cli.experiment`; no library
logic lives here, only the turning of results into text, JSON and image files.

JSON output
-----------
:func:`write_json` writes one JSON object whose long per-feature arrays are
streamed in chunks of :data:`JSON_CHUNK` entries: the output is the same text
``json.dumps`` would give (separators ``", "`` and ``": "``, non-finite
floats as ``null``), but no Python list of all the entries is ever built, so
memory stays bounded by a chunk whatever the number of features.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from capalloc._lib.tables import format_table

__all__ = [
    "CliError",
    "Chunked",
    "JSON_CHUNK",
    "counts_text",
    "figure_path",
    "jsonable",
    "print_json",
    "save_figure",
    "table",
    "write_json",
]

#: Entries of an array formatted at a time by :func:`write_json`.
JSON_CHUNK = 1 << 16


class CliError(ValueError):
    """A user-facing error: printed as one line, exit status 2."""


# ----------------------------------------------------------------------------- tables


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], max_rows: int) -> str:
    """Right-aligned table; a long one keeps its head and tail with a note between.

    ``rows`` may build each row on demand: only the rows shown are read.

    Examples
    --------
    >>> from capalloc.cli._output import table
    >>> print(table(["i"], [[str(i)] for i in range(5)], max_rows=2))
    i
    0
    ... 3 rows omitted (--max-rows 0 shows all)
    4
    """
    return format_table(
        headers, rows, max_rows=max_rows, omitted="... {} rows omitted (--max-rows 0 shows all)"
    )


def counts_text(counts: Mapping[str, int]) -> str:
    """``"2 monosemantic, 9 polysemantic, 1 ignored"`` from :func:`capalloc.label_counts`."""
    return ", ".join(f"{k} {lab}" for lab, k in counts.items())


# ----------------------------------------------------------------------------- JSON


class Chunked:
    """An array given by its length and a function returning the slice ``[lo, hi)``.

    Lets :func:`write_json` stream values that are computed chunk by chunk
    (labels classified from capacities, say) without holding all of them.
    """

    def __init__(self, n: int, get: Callable[[int, int], np.ndarray]):
        self.n = int(n)
        self.get = get

    def __len__(self) -> int:
        return self.n


def jsonable(x: Any) -> Any:
    """Plain Python values for ``json.dumps`` (non-finite floats become ``None``)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _items(x)
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _items(a: np.ndarray) -> list[Any]:
    """``a.tolist()`` with non-finite floats as ``None`` (at any depth)."""
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        obj = a.astype(object)
        obj[~np.isfinite(a)] = None
        return obj.tolist()
    if a.dtype.kind == "O":
        return [jsonable(v) for v in a.tolist()]
    return a.tolist()


def print_json(obj: Any, indent: int | None = None) -> None:
    """Print ``obj`` as strict JSON (``NaN`` and infinities become ``null``)."""
    print(json.dumps(jsonable(obj), allow_nan=False, indent=indent))


def _write_array(out: TextIO, value: np.ndarray | Chunked, chunk: int) -> None:
    n = len(value)
    get = value.get if isinstance(value, Chunked) else (lambda lo, hi: value[lo:hi])
    out.write("[")
    for lo in range(0, n, chunk):
        part = json.dumps(_items(np.asarray(get(lo, min(n, lo + chunk)))), allow_nan=False)
        out.write(part[1:-1] if lo == 0 else ", " + part[1:-1])
    out.write("]")


def write_json(obj: Mapping[str, Any], out: TextIO | None = None, chunk: int | None = None) -> None:
    """Write the mapping ``obj`` as one line of strict JSON, streaming its long arrays.

    One-dimensional ``ndarray`` and :class:`Chunked` values are written
    ``chunk`` entries at a time (default :data:`JSON_CHUNK`); every other value
    goes through ``json.dumps``.
    The text equals ``json.dumps(jsonable(obj), allow_nan=False)`` plus a newline.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.cli._output import Chunked, write_json
    >>> labels = Chunked(3, lambda lo, hi: np.array(["a", "b", "c"])[lo:hi])
    >>> write_json({"n": 3, "x": np.array([0.5, np.inf, 2.0]), "labels": labels}, chunk=2)
    {"n": 3, "x": [0.5, null, 2.0], "labels": ["a", "b", "c"]}
    """
    out = sys.stdout if out is None else out
    chunk = JSON_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    out.write("{")
    for k, (key, value) in enumerate(obj.items()):
        out.write((", " if k else "") + json.dumps(str(key)) + ": ")
        if isinstance(value, Chunked) or (isinstance(value, np.ndarray) and value.ndim == 1):
            _write_array(out, value, chunk)
        else:
            out.write(json.dumps(jsonable(value), allow_nan=False))
    out.write("}\n")


# ----------------------------------------------------------------------------- figures


def figure_path(path: str, default: str, option: str) -> str:
    """The file a figure option names: ``path``, or ``path/default`` when ``path`` is a directory.

    Checked before any long computation: the directory must exist, an existing
    ``path`` must be a regular file, and the suffix a format matplotlib writes
    (``.png`` is added when there is none).
    """
    if not path:
        raise CliError(f"{option} needs a file or directory name")
    if os.path.isdir(path):
        path = os.path.join(path, default)
    elif path.endswith(("/", os.sep)):
        raise CliError(f"{option} {path}: no such directory")
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise CliError(f"{option} {path}: directory {parent} does not exist")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CliError(f"{option} {path}: is not a regular file")
    if not os.path.splitext(path)[1]:
        path += ".png"
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:  # save_figure says so
        return path
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = os.path.splitext(path)[1][1:].lower()
    if suffix not in formats:
        raise CliError(
            f"{option} {path}: unknown figure format .{suffix}; use one of "
            f"{', '.join(sorted(formats))}"
        )
    return path


def save_figure(
    path: str,
    draw: Callable[[Any], None],
    ncols: int,
    size: tuple[float, float],
    *,
    quiet: bool = False,
) -> bool:
    """Draw into a new figure with ``ncols`` panels and save it; False without matplotlib.

    The figure is built without pyplot, so no GUI backend is involved. Messages go
    to stdout, or to stderr when ``quiet`` (stdout then carries JSON only).
    """
    stream = sys.stderr if quiet else sys.stdout
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(
            "matplotlib is not installed: no figure written (pip install 'capalloc[plot]')",
            file=stream,
        )
        return False
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    draw(axes)
    fig.savefig(path, dpi=90)
    print(f"figure written to {path}", file=stream)
    return True
