"""Figures of :mod:`capalloc.prediction` (matplotlib is imported when one is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["plot_prediction", "plot_frontier"]


def plot_prediction(rows: Sequence[dict[str, Any]], path: str | None = None) -> Any:
    """Predicted (line) against trained (dots, one colour per seed) sorted capacities, one
    panel per row of :func:`capalloc.prediction.prediction_rows`. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 2.8), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        pred = row["predicted_capacity"]
        ax.plot(range(len(pred)), pred, "k-", lw=2, label="predicted")
        for k, c in enumerate(row.get("trained_capacity") or []):
            ax.plot(range(len(c)), c, "o", ms=3, alpha=0.7, label=f"trained, seed {k}")
        err = row.get("mean_error")
        title = f"{row['model']}, S = {row['sparsity']:g}"
        ax.set_title(title + ("" if err is None else f"\nmean |ΔC| = {err:.3f}"), fontsize=9)
        ax.set_xlabel("feature (sorted)")
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("capacity")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_frontier(rows: Sequence[dict[str, Any]], path: str | None = None) -> Any:
    """Loss against polysemantic fraction, one point per penalty strength. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    x = [r["polysemantic_fraction"] for r in rows]
    y = [r["loss"] for r in rows]
    ax.plot(x, y, "o-")
    for r in rows:
        ax.annotate(f"λ={r['strength']:g}", (r["polysemantic_fraction"], r["loss"]), fontsize=7)
    ax.set_xlabel("polysemantic fraction")
    ax.set_ylabel("loss (unpenalised)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
