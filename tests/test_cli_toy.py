"""``capalloc experiment toy-phase`` (and the other issue-15 experiments) on the command line."""

from __future__ import annotations

import json

import pytest

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


def test_tms_geometry_bad_density(capsys):
    assert main(["experiment", "tms-geometry", "--densities", "0"]) == 2
    assert "density must lie in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_tms_geometry_json(capsys):
    pytest.importorskip("torch")
    args = ["experiment", "tms-geometry", "--n", "6", "--d", "2", "--densities", "1", "0.1"]
    assert main([*args, "--steps", "1000", "--seeds", "2", "--json"]) == 0
    dense, sparse = json.loads(capsys.readouterr().out)
    # dense: d features kept, D* = 1; sparse: pentagon-like, D* well below 1/2
    assert abs(dense["dimensions_per_feature"] - 1.0) < 0.1
    assert sparse["dimensions_per_feature"] < 0.45
    assert sparse["fractions"]["2/5"] + sparse["fractions"]["3/8"] >= 4
    assert len(sparse["capacity"]) == 6
