"""Figures of :mod:`capalloc.prediction` (matplotlib is imported when one is drawn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["plot_prediction", "plot_frontier", "plot_loss_curves"]


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
    """Loss against polysemantic fraction. Returns the figure.

    ``rows`` are those of :func:`capalloc.prediction.regularise.frontier` (one point per
    penalty strength, joined by a line) or of
    :func:`~capalloc.prediction.regularise.interventions`, whose ``"bias"`` and
    ``"width"`` rows are added as points of their own, labelled by width :math:`d'` and
    (the first and the last) by initial bias.

    Examples
    --------
    >>> from capalloc.prediction.figures import plot_frontier
    >>> rows = [
    ...     {"intervention": "penalty", "value": 0.0, "loss": 0.06, "polysemantic_fraction": 0.9},
    ...     {"intervention": "penalty", "value": 0.1, "loss": 0.16, "polysemantic_fraction": 0.0},
    ...     {"intervention": "bias", "value": -0.2, "loss": 0.07, "polysemantic_fraction": 0.8},
    ...     {"intervention": "width", "value": 20, "loss": 0.0, "polysemantic_fraction": 0.0},
    ... ]
    >>> [len(line.get_xdata()) for line in plot_frontier(rows).axes[0].lines]
    [2, 1, 1]
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for r in rows:
        kind = r.get("intervention", "penalty")
        groups.setdefault(kind, []).append(
            (r["value"] if "intervention" in r else r["strength"], r)
        )
    styles = {
        "penalty": ("o-", "capacity penalty", "λ={:g}"),
        "bias": ("s", "initial bias", "b={:g}"),
        "width": ("^", "more neurons", "d'={:g}"),
    }
    fig, ax = plt.subplots(figsize=(5.6, 3.8) if len(groups) > 1 else (4, 3))
    for kind, points in groups.items():
        style, label, text = styles[kind]
        x = [r["polysemantic_fraction"] for _, r in points]
        y = [r["loss"] for _, r in points]
        ax.plot(x, y, style, label=label, ms=5)
        for k, (value, r) in enumerate(points):
            if kind == "bias" and 0 < k < len(points) - 1:
                continue  # the bias points crowd together: label the first and the last
            ax.annotate(
                text.format(value),
                (r["polysemantic_fraction"], r["loss"]),
                xytext=(-14, -10) if kind == "bias" and k == 0 else (3, 3),
                textcoords="offset points",
                fontsize=6,
            )
    ax.set_xlabel("polysemantic fraction")
    ax.set_ylabel("loss (unpenalised)")
    if len(groups) > 1:
        ax.legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_loss_curves(rows: Sequence[dict[str, Any]], path: str | None = None) -> Any:
    """Loss against the held capacity, one line per model, each divided by its smallest
    value (rows of :func:`capalloc.prediction.curves.constrained_loss_curve`; the
    quadratic model's exact curve dashed). Returns the figure.

    Examples
    --------
    >>> from capalloc.prediction.figures import plot_loss_curves
    >>> rows = [{"model": "quadratic", "capacity": c, "loss": 2.0 - c, "exact": 1.9 - c}
    ...         for c in (0.0, 0.5, 1.0)]
    >>> len(plot_loss_curves(rows).axes[0].lines)
    2
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["capacity"])
        c = [r["capacity"] for r in mine]
        loss = [r["loss"] for r in mine]
        (line,) = ax.plot(c, [x / min(loss) for x in loss], "o-", ms=3, label=f"{model}, trained")
        exact = [float(r["exact"]) for r in mine if r.get("exact") is not None]
        if len(exact) == len(mine):
            ax.plot(
                c,
                [e / min(exact) for e in exact],
                "--",
                color=line.get_color(),
                label=f"{model}, exact",
            )
    ax.set_xlabel("capacity held by the feature")
    ax.set_ylabel("loss / its minimum")
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
