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
