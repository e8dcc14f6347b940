"""The one text-table formatter (capalloc._lib.tables) and capalloc.label_counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import capalloc
from capalloc._lib.tables import format_table, shown_rows


class _CountingRows(Sequence):
    """Rows built on demand, remembering which were asked for."""

    def __init__(self, n: int):
        self.n = n
        self.asked: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        self.asked.append(i)
        return [str(i), f"{i * i}"]


def test_right_aligned_table_with_truncation():
    text = format_table(["i", "square"], _CountingRows(10), max_rows=5, omitted="... {} hidden")
    assert text.splitlines() == [
        "i  square",
        "0       0",
        "1       1",
        "2       4",
        "3       9",
        "... 5 hidden",
        "9      81",
    ]


def test_only_the_shown_rows_are_built():
    rows = _CountingRows(10**12)
    text = format_table(["i", "square"], rows, max_rows=8)
    assert sorted(rows.asked) == [0, 1, 2, 3, 4, 5, 999999999998, 999999999999]
    assert f"... {10**12 - 8} rows omitted" in text
    assert text.splitlines()[-1] == "999999999999  999999999998000000000001"


def test_left_aligned_table_with_rule_has_no_trailing_blanks():
    text = format_table(
        ["name", "n", "note"], [["a", "100", ""], ["bbbb", "1", "x"]], align="left", rule=True
    )
    assert text.splitlines() == ["name  n    note", "----  ---  ----", "a     100", "bbbb  1    x"]


def test_all_rows_and_empty_tables():
    assert format_table(["a"], [["1"], ["2"], ["3"]], max_rows=0) == "a\n1\n2\n3"
    assert format_table(["a"], [["1"], ["2"], ["3"]], max_rows=3) == "a\n1\n2\n3"
    assert format_table(["col"], [], rule=True) == "col\n---"


def test_shown_rows_and_errors():
    assert shown_rows(100, 1) == (range(0), range(99, 100))
    assert shown_rows(100, 40) == (range(30), range(90, 100))
    with pytest.raises(ValueError, match="max_rows must be >= 0"):
        shown_rows(3, -1)
    with pytest.raises(ValueError, match="align must be 'right' or 'left', got 'center'"):
        format_table(["a"], [["1"]], align="center")
    with pytest.raises(ValueError, match="every row must have 2 cells"):
        format_table(["a", "b"], [["1"]])


# ----------------------------------------------------------------------------- label_counts


def test_label_counts_from_capacities_agree_with_classify_by_hand():
    C = np.array([1.0, 1 - 1e-7, 0.999, 0.5, 1e-3, 1e-7, 0.0])
    assert capalloc.label_counts(C) == {"monosemantic": 2, "polysemantic": 3, "ignored": 2}
    assert capalloc.label_counts(C, atol=1e-2) == {
        "monosemantic": 3,
        "polysemantic": 1,
        "ignored": 3,
    }
    assert list(capalloc.label_counts(C)) == list(capalloc.LABELS)


def test_label_counts_from_labels_and_batches():
    labels = ["ignored", "monosemantic", "ignored", "polysemantic"]
    assert capalloc.label_counts(labels) == {"monosemantic": 1, "polysemantic": 1, "ignored": 2}
    assert capalloc.label_counts(np.array(labels, dtype=object)) == capalloc.label_counts(labels)
    batch = np.array([[1.0, 0.3], [0.0, 0.0]])
    assert capalloc.label_counts(batch) == {"monosemantic": 1, "polysemantic": 1, "ignored": 2}
    assert capalloc.label_counts([]) == {"monosemantic": 0, "polysemantic": 0, "ignored": 0}


def test_label_counts_errors():
    with pytest.raises(ValueError, match="atol must lie in"):
        capalloc.label_counts([0.5], atol=0.5)
    with pytest.raises(ValueError, match="C must be finite"):
        capalloc.label_counts([0.5, float("nan")])
