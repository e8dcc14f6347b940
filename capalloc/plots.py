r"""Figures for capacities, allocations and embeddings.

matplotlib is imported inside each function, so ``import capalloc.plots`` is
cheap and matplotlib stays optional (``pip install capalloc[plot]``). Every
function draws into ``ax`` when given one and otherwise opens a new figure
through pyplot; it returns the Axes it drew on. When pyplot has not been
imported yet, no backend was chosen (no ``MPLBACKEND``, no ``matplotlib.use``)
and there is no display, the non-interactive ``Agg`` backend is selected;
an explicit choice is never overridden.

Colours: one per label, :data:`LABEL_COLORS`.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> import capalloc
>>> from capalloc.plots import plot_capacities
>>> res = capalloc.solve(capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0))
>>> ax = plot_capacities(res)
>>> [round(float(bar.get_height()), 4) for bar in ax.patches]
[1.0, 0.7619, 0.2381, 0.0]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._capacity import (
    IGNORED,
    MONOSEMANTIC,
    POLYSEMANTIC,
    classify,
    label_counts,
)

__all__ = [
    "LABEL_COLORS",
    "plot_capacities",
    "plot_marginal_benefit",
    "plot_loss_curves",
    "plot_embedding",
    "plot_capacity_histogram",
]

#: Colour of each feature label (monosemantic, polysemantic, ignored).
LABEL_COLORS = {
    MONOSEMANTIC: "#1f6fb2",
    POLYSEMANTIC: "#e6550d",
    IGNORED: "#9e9e9e",
}

_BLOCK_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _headless() -> bool:
    if sys.platform.startswith(("linux", "freebsd", "openbsd")):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


def _pyplot() -> Any:
    """pyplot, after selecting Agg when nothing chose a backend and there is no display."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("capalloc.plots needs matplotlib: pip install 'capalloc[plot]'") from None
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        chosen = getattr(matplotlib.rcParams, "_get_backend_or_none", lambda: "unknown")()
        if chosen is None and _headless():
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Any, projection: str | None = None) -> Any:
    if ax is not None:
        return ax
    plt = _pyplot()
    fig = plt.figure()
    return fig.add_subplot(projection=projection)


def _one_problem(values: np.ndarray, name: str) -> np.ndarray:
    if values.ndim != 1:
        raise ValueError(
            f"{name} must be one problem (1-D), got shape {values.shape}; "
            "plot one row of a batch at a time"
        )
    return values


def _capacity_and_labels(result: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(result, "capacity"):
        C = np.asarray(result.capacity, dtype=float)
        labels = np.asarray(result.labels) if hasattr(result, "labels") else classify(C)
    else:
        C = np.asarray(result, dtype=float)
        labels = classify(C)
    return _one_problem(C, "capacity"), labels


def _label_legend(ax: Any, labels: np.ndarray, **kwargs: Any) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=LABEL_COLORS[lab], label=f"{lab} ({count})")
        for lab, count in label_counts(labels).items()
        if count
    ]
    ax.legend(handles=handles, **kwargs)


def plot_capacities(result: Any, ax: Any = None) -> Any:
    """Bar chart of the capacity of every feature, coloured by label.

    Parameters
    ----------
    result : AllocationResult or (n,) array_like of float
        A solved (unbatched) allocation, or plain capacities (labelled with
        :func:`capalloc.classify`).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.

    Returns
    -------
    ax : matplotlib.axes.Axes
        One bar per feature (``ax.patches``), heights equal to the capacities.
    """
    C, labels = _capacity_and_labels(result)
    ax = _axes(ax)
    colors = [LABEL_COLORS.get(str(lab), "k") for lab in labels]
    ax.bar(np.arange(C.size), C, color=colors, width=0.8)
    ax.axhline(1.0, color="0.6", lw=0.8, ls=":", zorder=0)
    ax.set_xlim(-0.7, max(C.size, 1) - 0.3)
    ax.set_ylim(0.0, 1.08)
    ax.set_xlabel("feature $i$")
    ax.set_ylabel("capacity $C_i$")
    ax.set_title(rf"capacities ($\Sigma_i\, C_i = {C.sum():.4g}$)")
    _label_legend(ax, labels, loc="upper right", fontsize="small")
    return ax


def plot_marginal_benefit(
    problem: Any, result: Any, ax: Any = None, *, log: bool | None = None
) -> Any:
    r"""Marginal benefit and capacity of every feature against its importance.

    For each feature a vertical bar spans the marginal benefits
    :math:`-\ell_i'(C)` reachable for :math:`C \in [0, 1]`, and a dot marks
    the value at the optimum. The threshold :math:`T` (Lagrange multiplier) is
    a dashed horizontal line: polysemantic dots sit on it, monosemantic
    features lie above it and ignored ones below (the KKT conditions). A
    second y-axis shows the capacities.

    Parameters
    ----------
    problem : QuadraticProblem or SeparableProblem
        Unbatched problem (a separable one is drawn against the feature index).
    result : AllocationResult
        Its solution.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    log : bool, optional
        Logarithmic marginal-benefit axis; by default when the values span more
        than a factor 20.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The marginal-benefit axes; the threshold line has ``gid="threshold"``
        and the capacity axes is ``ax.capacity_axes``.
    """
    C, labels = _capacity_and_labels(result)
    if getattr(problem, "batched", False):
        raise ValueError("plot_marginal_benefit draws one problem at a time, got a batch")
    if getattr(problem, "n", C.size) != C.size:
        raise ValueError(f"result has {C.size} features, problem has {problem.n}")
    importance = getattr(problem, "importance", None)
    x = np.arange(C.size, dtype=float) if importance is None else np.asarray(importance, float)
    g = np.asarray(problem.marginal_benefit(C), dtype=float)
    g0 = np.asarray(problem.marginal_benefit(np.zeros_like(C)), dtype=float)
    g1 = np.asarray(problem.marginal_benefit(np.ones_like(C)), dtype=float)
    T = float(np.asarray(result.threshold))
    colors = [LABEL_COLORS.get(str(lab), "k") for lab in labels]

    ax = _axes(ax)
    ax.vlines(
        x,
        np.minimum(g0, g1),
        np.maximum(g0, g1),
        colors=colors,
        alpha=0.35,
        lw=3,
        label=r"$-\ell_i'(C)$, $C\in[0,1]$",
    )
    ax.scatter(x, g, c=colors, s=22, zorder=3, label=r"$-\ell_i'(C_i)$ at optimum")
    ax.axhline(T, color="k", ls="--", lw=1.2, gid="threshold", label=f"threshold T = {T:.4g}")
    values = np.concatenate([g0, g1, g, [T]])
    positive = values[values > 0]
    if log is None:
        log = positive.size == values.size and positive.max() > 20 * positive.min()
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("importance $v_i$" if importance is not None else "feature $i$")
    ax.set_ylabel(r"marginal benefit $-\ell_i'(C)$")

    cap_ax = ax.twinx()
    order = np.argsort(x, kind="stable")
    cap_ax.plot(
        x[order], C[order], color="0.35", lw=1, marker="s", ms=3, alpha=0.8, label="capacity $C_i$"
    )
    cap_ax.set_ylim(0.0, 1.08)
    cap_ax.set_ylabel("capacity $C_i$")
    ax.capacity_axes = cap_ax
    handles, names = ax.get_legend_handles_labels()
    more, more_names = cap_ax.get_legend_handles_labels()
    ax.legend(handles + more, names + more_names, fontsize="small", loc="upper left")
    ax.set_title("marginal benefit: equal to T where 0 < C < 1")
    return ax


def plot_loss_curves(
    v: float = 1.0,
    K: float | Sequence[float] = (1.8, 3.0, 15.0),
    ax: Any = None,
    *,
    normalize: bool = True,
    num: int = 201,
) -> Any:
    r"""Optimal per-feature loss :math:`\ell(C)` of the quadratic model for a few kurtoses.

    .. math::

        \ell(C) = \frac{2 (K - 1) v^2 (1 - C)}{2 + (K - 3) C}

    is concave for ``K < 3`` (all-or-nothing allocations), linear for
    ``K = 3`` and convex for ``K > 3`` (diminishing returns, polysemanticity).

    Parameters
    ----------
    v : float, default 1
        Importance.
    K : float or sequence of float, default (1.8, 3, 15)
        Kurtoses, one curve each.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    normalize : bool, default True
        Divide by :math:`\ell(0) = (K - 1) v^2` so that curves share a scale.
    num : int, default 201
        Points per curve.

    Returns
    -------
    ax : matplotlib.axes.Axes
        One line per kurtosis, in the order given.

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892.
    """
    from capalloc.allocation.problems import QuadraticProblem

    kurtoses = np.atleast_1d(np.asarray(K, dtype=float))
    if kurtoses.ndim != 1 or kurtoses.size == 0:
        raise ValueError(f"K must be a number or a non-empty sequence, got {K!r}")
    C = np.linspace(0.0, 1.0, int(num))
    ax = _axes(ax)
    for k in kurtoses:
        problem = QuadraticProblem(np.asarray([float(v)]), d=1, kurtosis=float(k))
        loss = problem.loss(C)
        if normalize:
            loss0 = float(problem.loss(0.0)[0])
            loss = loss / loss0 if loss0 > 0 else loss
        kind = "convex" if k > 3 else "concave" if k < 3 else "linear"
        ax.plot(C, loss, label=f"K = {k:g} ({kind})")
    ax.set_xlabel("capacity $C$")
    ax.set_ylabel(r"$\ell(C)/\ell(0)$" if normalize else r"$\ell(C)$")
    ax.set_xlim(0.0, 1.0)
    ax.legend(fontsize="small")
    return ax


def _block_of_features(W: np.ndarray, tol: float | None) -> dict[int, int] | None:
    """Feature index -> block number from :func:`capalloc.geometry.find_blocks`, if available."""
    try:
        from capalloc.geometry import find_blocks
    except ImportError:
        return None
    blocks = find_blocks(W) if tol is None else find_blocks(W, tol)
    return {int(i): b for b, block in enumerate(blocks) for i in block.features}


def plot_embedding(
    W: Any, ax: Any = None, *, tol: float | None = None, annotate: bool | None = None
) -> Any:
    """Feature vectors (columns of ``W``) as arrows from the origin, for ``d <= 3``.

    Arrows are coloured by block (:func:`capalloc.geometry.find_blocks`) when
    that module is available, otherwise all alike. Zero columns (ignored
    features) are not drawn.

    Parameters
    ----------
    W : (d, n) array_like of float
        Embedding matrix with ``d`` in {1, 2, 3}; ``d = 3`` is drawn in a 3-D
        projection (pass an Axes created with ``projection="3d"`` or none).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    tol : float, optional
        Tolerance passed to ``find_blocks``.
    annotate : bool, optional
        Write the feature index at each tip; default when ``n <= 30``.

    Returns
    -------
    ax : matplotlib.axes.Axes
        Each arrow carries ``gid="feature-<i>"``.
    """
    W = np.asarray(W, dtype=float)
    if W.ndim != 2:
        raise ValueError(f"W must be 2-D (d, n), got shape {W.shape}")
    d, n = W.shape
    if not 1 <= d <= 3:
        raise ValueError(
            f"plot_embedding draws d <= 3 dimensions, got d = {d}; "
            "project W first (e.g. onto its top singular vectors)"
        )
    norms = np.sqrt(np.einsum("kn,kn->n", W, W))
    drawn = np.flatnonzero(norms > 0)
    block = _block_of_features(W, tol) or {}
    colors = {
        i: _BLOCK_COLORS[block[int(i)] % len(_BLOCK_COLORS)] if i in block else _BLOCK_COLORS[0]
        for i in drawn
    }
    annotate = n <= 30 if annotate is None else annotate
    reach = 1.15 * (norms.max() if drawn.size else 1.0)

    if d == 3:
        ax = _axes(ax, projection="3d")
        if getattr(ax, "name", "") != "3d":
            raise ValueError("d = 3 needs a 3-D Axes (projection='3d')")
        for i in drawn:
            x, y, z = W[:, i]
            ax.plot([0, x], [0, y], [0, z], color=colors[i], lw=1.8, gid=f"feature-{i}")
            ax.scatter([x], [y], [z], color=colors[i], s=14)
            if annotate:
                ax.text(1.08 * x, 1.08 * y, 1.08 * z, str(i), fontsize="small")
        ticks = np.round([-reach / 1.15, 0.0, reach / 1.15], 2)
        for setlim, setticks in (
            (ax.set_xlim, ax.set_xticks),
            (ax.set_ylim, ax.set_yticks),
            (ax.set_zlim, ax.set_zticks),
        ):
            setlim(-reach, reach)
            setticks(ticks)
        ax.set_xlabel("$h_1$")
        ax.set_ylabel("$h_2$")
        ax.set_zlabel("$h_3$")
    else:
        from matplotlib.patches import FancyArrowPatch

        ax = _axes(ax)
        P = W if d == 2 else np.vstack([W, np.zeros((1, n))])
        ax.axhline(0.0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0.0, color="0.85", lw=0.8, zorder=0)
        for i in drawn:
            x, y = P[:, i]
            ax.add_patch(
                FancyArrowPatch(
                    (0.0, 0.0),
                    (x, y),
                    arrowstyle="-|>",
                    mutation_scale=14,
                    color=colors[i],
                    lw=1.6,
                    shrinkA=0,
                    shrinkB=0,
                    gid=f"feature-{i}",
                )
            )
            if annotate:
                ax.annotate(
                    str(i),
                    (x, y),
                    xytext=(1.1 * x, 1.1 * y),
                    fontsize="small",
                    ha="center",
                    va="center",
                )
        ax.set_xlim(-reach, reach)
        ax.set_ylim(-reach, reach)
        ax.set_aspect("equal")
        ax.set_xlabel("$h_1$")
        ax.set_ylabel("$h_2$" if d == 2 else "")
    if block:
        from matplotlib.lines import Line2D

        sizes: dict[int, int] = {}
        for i in drawn:
            if i in block:
                sizes[block[int(i)]] = sizes.get(block[int(i)], 0) + 1
        if 1 < len(sizes) <= 10:
            handles = [
                Line2D(
                    [],
                    [],
                    color=_BLOCK_COLORS[b % len(_BLOCK_COLORS)],
                    label=f"block {b} ({k} features)",
                )
                for b, k in sorted(sizes.items())
            ]
            ax.legend(handles=handles, fontsize="small")
    return ax


def plot_capacity_histogram(C: Any, ax: Any = None, *, bins: int = 20, log: bool = False) -> Any:
    """Histogram of capacities on [0, 1].

    Parameters
    ----------
    C : (n,) array_like of float or AllocationResult
        Capacities, e.g. ``capalloc.capacity(W)``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    bins : int, default 20
        Equal-width bins over [0, 1] (the last one closed).
    log : bool, default False
        Logarithmic count axis.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The bars (``ax.patches``) count every feature once.
    """
    C, _ = _capacity_and_labels(C)
    if isinstance(bins, bool) or int(bins) < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    ax = _axes(ax)
    ax.hist(
        np.clip(C, 0.0, 1.0),
        bins=np.linspace(0.0, 1.0, int(bins) + 1),
        color=LABEL_COLORS[POLYSEMANTIC],
        edgecolor="white",
        log=log,
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("capacity $C_i$")
    ax.set_ylabel("features")
    mean = C.mean() if C.size else float("nan")
    ax.set_title(rf"$n = {C.size}$, $\Sigma_i\, C_i = {C.sum():.4g}$, mean {mean:.3g}")
    return ax
