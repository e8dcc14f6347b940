"""Fixed-width text tables: the one formatter of the command line and the benchmark tables.

Only the rows that are shown are read: ``rows`` may be a lazy sequence whose
``__getitem__`` formats one row on demand, so a table of ten million features
truncated to its head and tail costs as much as the rows it prints.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "shown_rows"]


def shown_rows(n: int, max_rows: int) -> tuple[range, range]:
    """The head and tail row indices a table of ``n`` rows shows at most ``max_rows`` of.

    Parameters
    ----------
    n : int
        Number of rows.
    max_rows : int
        Most rows to show; 0 shows all. A truncated table keeps a quarter of
        ``max_rows`` (at least one row) for its tail.

    Returns
    -------
    head, tail : range
        Indices of the rows shown before and after the omission note; ``tail``
        is empty when nothing is omitted.

    Examples
    --------
    >>> from capalloc._lib.tables import shown_rows
    >>> shown_rows(100, 10)
    (range(0, 8), range(98, 100))
    >>> shown_rows(5, 10)
    (range(0, 5), range(5, 5))
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 (0: all rows), got {max_rows!r}")
    if not max_rows or n <= max_rows:
        return range(n), range(n, n)
    tail = max(max_rows // 4, 1)
    head = max_rows - tail
    return range(head), range(n - tail, n)


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    max_rows: int = 0,
    align: str = "right",
    rule: bool = False,
    omitted: str = "... {} rows omitted",
) -> str:
    """A fixed-width text table of string cells.

    Parameters
    ----------
    headers : sequence of str
        Column titles.
    rows : sequence of sequence of str
        Cells, one sequence per row. Only ``len(rows)`` and ``rows[i]`` for
        the rows shown are used, so ``rows`` may build each row on demand.
    max_rows : int, default 0
        Most rows shown; a longer table keeps its head and tail (see
        :func:`shown_rows`) with a note in between. 0 shows all rows.
    align : {"right", "left"}
        Justification of every column.
    rule : bool, default False
        Draw a line of dashes under the headers.
    omitted : str
        The note standing for the omitted rows; ``{}`` receives their number.

    Returns
    -------
    str
        The lines joined by newlines, without trailing blanks.

    Examples
    --------
    >>> from capalloc._lib.tables import format_table
    >>> rows = [[str(i), f"{0.5**i:.4f}"] for i in range(6)]
    >>> print(format_table(["i", "value"], rows, max_rows=4))
    i   value
    0  1.0000
    1  0.5000
    2  0.2500
    ... 2 rows omitted
    5  0.0312
    >>> print(format_table(["name", "n"], [["waterfill", "10"]], align="left", rule=True))
    name       n
    ---------  --
    waterfill  10
    """
    if align not in ("right", "left"):
        raise ValueError(f"align must be 'right' or 'left', got {align!r}")
    head, tail = shown_rows(len(rows), max_rows)
    top = [list(rows[i]) for i in head]
    bottom = [list(rows[i]) for i in tail]
    widths = [len(h) for h in headers]
    for row in (*top, *bottom):
        if len(row) != len(widths):
            raise ValueError(f"every row must have {len(widths)} cells, got {row!r}")
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        just = [
            c.rjust(w) if align == "right" else c.ljust(w)
            for c, w in zip(cells, widths, strict=True)
        ]
        return "  ".join(just).rstrip()

    lines = [line(headers)]
    if rule:
        lines.append("  ".join("-" * w for w in widths))
    lines += [line(row) for row in top]
    if tail:
        lines.append(omitted.format(len(rows) - len(head) - len(tail)))
        lines += [line(row) for row in bottom]
    return "\n".join(lines)
