"""``capalloc experiment toy-phase`` (and the other issue-15 experiments) on the command line."""

from __future__ import annotations

import json

from capalloc.cli.main import main
from capalloc.experiments.toy_phase import antipodal_boundary


def test_toy_phase_json_rows(capsys):
    assert (
        main(
            [
                "experiment",
                "toy-phase",
                "--densities",
                "0.05",
                "0.9",
                "--ratios",
                "0.5",
                "--no-train",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [(r["density"], r["relative_importance"]) for r in rows] == [(0.05, 0.5), (0.9, 0.5)]
    # far on either side of p* = 4r/(2 + 5r) = 4/9 the exact optimum is the candidate there
    assert [r["exact"] for r in rows] == ["superposition", "one"]
    assert all(r["trained"] is None for r in rows)
    assert rows[0]["boundary"] == float(antipodal_boundary(0.5))


def test_toy_phase_bad_density(capsys):
    assert main(["experiment", "toy-phase", "--densities", "1.5", "--no-train"]) == 2
    err = capsys.readouterr().err
    assert "error: argument --densities: density must lie in (0, 1], got '1.5'" in err
