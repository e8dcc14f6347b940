"""The monosemanticity-interventions experiment: settings reach the trainer, counts add up."""

from __future__ import annotations

import pytest

from capalloc.cli.main import main
from capalloc.experiments.monosemanticity import monosemanticity_interventions


def test_bad_input():
    with pytest.raises(ValueError, match="density"):
        monosemanticity_interventions(4, 8, 0.0)
    with pytest.raises(ValueError, match="interventions"):
        monosemanticity_interventions(4, 8, interventions=["dropout"])


def test_cli_bad_density(capsys):
    assert main(["experiment", "monosemanticity", "--density", "2"]) == 2
    assert "density must lie in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_interventions_change_the_model_and_counts_add_up():
    pytest.importorskip("torch")
    names = ["baseline", "negative bias", "more neurons"]
    rows = monosemanticity_interventions(4, 8, interventions=names, steps=300, seeds=2)
    assert [r["intervention"] for r in rows] == names
    assert [r["neurons"] for r in rows] == [8, 8, 16]
    for r in rows:
        for k in range(2):
            assert r["monosemantic"][k] + r["polysemantic"][k] + r["dead"][k] == r["neurons"]
        assert 0 <= r["monosemantic_fraction"] <= 1
        assert 1 / 4 <= r["mean_monosemanticity"] <= 1


def test_incidental_bad_input(capsys):
    from capalloc.experiments.incidental import incidental_polysemanticity

    with pytest.raises(ValueError, match="ds must be"):
        incidental_polysemanticity(8, [4])
    with pytest.raises(ValueError, match="density"):
        incidental_polysemanticity(4, [4], density=1.5)
    assert main(["experiment", "incidental", "--n", "8", "--ds", "4"]) == 2
    assert "capalloc: error: --ds must be >= --n 8, got 4" in capsys.readouterr().err


@pytest.mark.slow
def test_incidental_counts_add_up():
    pytest.importorskip("torch")
    from capalloc.experiments.incidental import incidental_polysemanticity

    rows = incidental_polysemanticity(4, [4, 8], steps=300, seeds=2)
    assert [(r["d"], r["expected"]) for r in rows] == [(4, 1.0), (8, 0.5)]
    for r in rows:
        for k in range(2):
            assert r["monosemantic"][k] + r["polysemantic"][k] + r["dead"][k] == r["d"]
