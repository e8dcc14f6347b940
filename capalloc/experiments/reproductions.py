r"""Reproduction experiments: polysemanticity versus sparsity, the phase diagram, block sizes.

Three experiments from Scherlis et al. (arXiv:2210.01892):

* :func:`sparsity_sweep` trains the four toy models of
  :mod:`capalloc.training.torch_models` (quadratic, ReLU and GeLU variants, ReLU
  autoencoder) over a range of input sparsities and reports how many of the
  represented features are polysemantic; for the quadratic model the exact curve
  from :func:`capalloc.solve` is added (sparse Gaussian inputs have kurtosis
  :math:`K = 3/(1 - S)`). Points run through the resumable
  :func:`capalloc.experiments.sweep.run_sweep`.
* :func:`phase_diagram` maps the regime (monosemantic, polysemantic, ignored) of
  one feature of the quadratic model over kurtosis and relative importance,
  exactly, with a single batched :class:`~capalloc.QuadraticProblem`.
* :func:`block_size_table` and :func:`plot_block_sizes` summarise the block
  structure (see :func:`capalloc.geometry.find_blocks`) of the trained models.

torch is imported only when models are trained, matplotlib only when plotting.

References
----------
.. [1] A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892.
.. [2] N. Elhage et al., "Toy Models of Superposition" (2022).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from capalloc._capacity import IGNORED, LABELS, MONOSEMANTIC, POLYSEMANTIC
from capalloc._lib.validation import check_importance, check_kurtosis, readonly, short
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.solve import solve
from capalloc.distributions import sparse_kurtosis
from capalloc.training.config import TrainConfig
from capalloc.training.result import polysemantic_summary

if TYPE_CHECKING:
    from concurrent.futures import Executor

__all__ = [
    "MODELS",
    "DEFAULT_SPARSITIES",
    "EXACT_MODEL",
    "PhaseDiagram",
    "block_size_table",
    "exact_sparsity_curve",
    "phase_diagram",
    "plot_block_sizes",
    "plot_phase_diagram",
    "plot_sparsity_sweep",
    "sparsity_point",
    "sparsity_sweep",
    "train_phase_points",
]

#: The trained models, in plotting order.
MODELS = ("quadratic", "relu", "gelu", "relu-ae")
#: Default sparsities of :func:`sparsity_sweep`.
DEFAULT_SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
#: Model name of the rows holding the solver's exact quadratic-model values.
EXACT_MODEL = "quadratic-exact"

_REGIME_CODES = {MONOSEMANTIC: 0, POLYSEMANTIC: 1, IGNORED: 2}
_FALLBACK_COLORS = {MONOSEMANTIC: "#1f6fb2", POLYSEMANTIC: "#e6550d", IGNORED: "#9e9e9e"}
_MODEL_STYLE = {
    "quadratic": ("C0", "o"),
    "relu": ("C2", "s"),
    "gelu": ("C4", "^"),
    "relu-ae": ("C3", "D"),
}


def _label_colors() -> dict[str, str]:
    try:
        from capalloc.plots import LABEL_COLORS
    except ImportError:  # plots is optional
        return dict(_FALLBACK_COLORS)
    return dict(LABEL_COLORS)


def _new_axes(ax: Any, **fig_kw: Any) -> Any:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(**fig_kw).add_subplot()


def _check_sparsities(sparsities: Any) -> np.ndarray:
    s = np.atleast_1d(np.asarray(sparsities, dtype=float))
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or s.min() < 0 or s.max() >= 1:
        raise ValueError(
            f"sparsities must be a non-empty list of values in [0, 1), got {short(sparsities)}"
        )
    return s


# ----------------------------------------------------------------------------- sparsity sweep


def exact_sparsity_curve(
    sparsities: Any, importance: Any, d: int, *, base_kurtosis: float = 3.0
) -> dict[str, np.ndarray]:
    r"""Exact quadratic-model polysemanticity at each sparsity, in one batched solve.

    A feature active with probability :math:`p = 1 - S` has kurtosis
    :math:`K = K_0 / p` (:math:`K_0 = 3` for a Gaussian base), and every sparsity
    becomes one row of a batched :class:`~capalloc.QuadraticProblem`.

    Parameters
    ----------
    sparsities : (m,) array_like of float
        Sparsities :math:`S \in [0, 1)`.
    importance : (n,) array_like of float
        Importances :math:`v_i`.
    d : int
        Embedding dimension.
    base_kurtosis : float, default 3.0
        :math:`K_0`, the kurtosis of the active value.

    Returns
    -------
    curve : dict of str -> (m,) ndarray
        ``sparsity``, ``kurtosis``, ``polysemantic_fraction`` (of the non-ignored
        features), ``polysemantic_fraction_all``, ``capacity_held_by_poly`` (share
        of :math:`\sum_i C_i`), ``n_mono``, ``n_poly``, ``n_ignored`` and ``loss``.

    Examples
    --------
    >>> from capalloc.experiments.reproductions import exact_sparsity_curve
    >>> curve = exact_sparsity_curve([0.0, 0.9], 0.9 ** np.arange(20), d=10)
    >>> curve["polysemantic_fraction"].round(3).tolist()
    [0.0, 0.85]
    """
    S = _check_sparsities(sparsities)
    v = check_importance(importance)
    K = sparse_kurtosis(S, float(check_kurtosis(base_kurtosis, "base_kurtosis")))
    result = solve(QuadraticProblem(np.tile(v, (S.size, 1)), d, K[:, None]))
    labels = np.asarray(result.labels)
    out = {"sparsity": S, "kurtosis": K}
    out.update(polysemantic_summary(labels, np.asarray(result.capacity)))
    for lab, name in ((MONOSEMANTIC, "n_mono"), (POLYSEMANTIC, "n_poly"), (IGNORED, "n_ignored")):
        out[name] = np.sum(labels == lab, axis=-1)
    out["loss"] = np.asarray(result.loss, dtype=float)
    return out


def _block_counts(shapes: list[list[tuple[int, int]]] | None) -> dict[str, int] | None:
    if shapes is None:
        return None
    counts = Counter(f"{dim}x{k}" for inst in shapes for dim, k in inst)
    return dict(sorted(counts.items(), key=lambda kv: tuple(map(int, kv[0].split("x")))))


#: The per-point summaries of a sparsity sweep (see :func:`polysemantic_summary`).
_FRACTIONS = ("polysemantic_fraction", "polysemantic_fraction_all", "capacity_held_by_poly")


def _sweep_row(
    model: str,
    sparsity: float,
    kurtosis: float | None,
    seeds: int,
    n: int,
    d: int,
    steps: int,
    fractions: Mapping[str, Any],
) -> dict[str, Any]:
    """One row of :func:`sparsity_sweep`: the point, then mean, std (and per-seed values)
    of each of :data:`_FRACTIONS` (``fractions`` maps each to its values over the seeds,
    a scalar for the exact rows, whose std is 0)."""
    row: dict[str, Any] = {
        "model": model,
        "sparsity": float(sparsity),
        "kurtosis": None if kurtosis is None else float(kurtosis),
        "seeds": int(seeds),
        "n": int(n),
        "d": int(d),
        "steps": int(steps),
    }
    for name in _FRACTIONS:
        values = np.asarray(fractions[name], dtype=float)
        row[name], row[f"{name}_std"] = _stats(values)
        if values.ndim:
            row[f"{name}_seeds"] = values.tolist()
    return row


def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if values.size > 1 else 0.0


def sparsity_point(
    model: str,
    sparsity: float,
    seeds: int = 3,
    n: int = 20,
    d: int = 10,
    importance_decay: float = 0.9,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    r"""Train ``seeds`` instances of one model at one sparsity; a JSON-ready summary.

    This is the point function of :func:`sparsity_sweep` (picklable, so it runs
    in worker processes). Importances are :math:`v_i = \text{decay}^i`.

    Returns
    -------
    row : dict
        ``model``, ``sparsity``, ``kurtosis`` (sparse-Gaussian models only),
        ``seeds``, mean and standard deviation over seeds (``*_std``) of
        ``polysemantic_fraction``, ``polysemantic_fraction_all`` and
        ``capacity_held_by_poly``, the per-seed values (``*_seeds``),
        ``total_capacity``, ``loss``, ``block_shapes`` (``"dim x features"`` ->
        count over seeds; ``None`` without :mod:`capalloc.geometry`) and
        ``elapsed`` seconds.
    """
    from capalloc.training.torch_models import default_importance, train_model

    start = time.perf_counter()
    run = train_model(
        model,
        default_importance(n, importance_decay),
        d,
        float(sparsity),
        instances=seeds,
        config=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed),
    )
    kurtosis = None if model == "relu-ae" else sparse_kurtosis(float(sparsity))
    row = _sweep_row(
        model,
        sparsity,
        kurtosis,
        seeds,
        n,
        d,
        steps,
        {name: getattr(run, name) for name in _FRACTIONS},
    )
    row["total_capacity"] = float(np.mean(run.effective_capacity.sum(-1)))
    row["loss"] = float(np.mean(run.loss))
    row["block_shapes"] = _block_counts(run.block_shapes())
    row["elapsed"] = time.perf_counter() - start
    return row


def _init_worker() -> None:
    """Worker initialiser: one torch thread per process (the processes share the cores)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is needed by the point function anyway
        return
    torch.set_num_threads(1)


def _exact_rows(sparsities: np.ndarray, n: int, d: int, decay: float) -> list[dict[str, Any]]:
    curve = exact_sparsity_curve(sparsities, decay ** np.arange(n, dtype=float), d)
    rows = []
    for i, s in enumerate(sparsities):
        fractions = {name: curve[name][i] for name in _FRACTIONS}
        row = _sweep_row(EXACT_MODEL, s, curve["kurtosis"][i], 0, n, d, 0, fractions)
        row["loss"] = float(curve["loss"][i])
        row["total_capacity"] = float(min(d, n))
        rows.append(row)
    return rows


def sparsity_sweep(
    models: Sequence[str] = MODELS,
    sparsities: Any = DEFAULT_SPARSITIES,
    seeds: int = 3,
    *,
    n: int = 20,
    d: int = 10,
    importance_decay: float = 0.9,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
    exact: bool = True,
    out_dir: str | os.PathLike[str] | None = None,
    executor: Any = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    r"""Polysemantic fraction of trained toy models as a function of input sparsity.

    Every (model, sparsity) pair is one point of :func:`capalloc.experiments.sweep.run_sweep`
    (run by :func:`sparsity_point`), training ``seeds`` instances in one tensor
    program; with ``out_dir`` a rerun after an interruption computes only the
    missing points.

    Parameters
    ----------
    models : sequence of str, default all four
        Names from :func:`capalloc.training.torch_models.available_models`.
    sparsities : sequence of float, default :data:`DEFAULT_SPARSITIES`
        Sparsities :math:`S \in [0, 1)` (probability that a feature is zero).
    seeds : int, default 3
        Instances per point (mean and standard deviation are over these).
    n, d : int, default 20, 10
        Features and embedding dimension.
    importance_decay : float, default 0.9
        Importances :math:`v_i = \text{decay}^i` (also used by the exact curve).
    steps, batch_size, lr : training settings, see :class:`~capalloc.training.TrainConfig`
    device : str, default "cpu"
    seed : int, default 0
    exact : bool, default True
        Add rows ``model = "quadratic-exact"`` with the solver's values at the
        same sparsities (:func:`exact_sparsity_curve`, one batched solve).
    out_dir : path, optional
        Resume directory of the sweep (a temporary directory when omitted).
    executor : concurrent.futures.Executor, optional
        Where points run; default a process pool of ``workers`` processes with
        one torch thread each.
    workers : int, optional
        Size of the default pool (default ``os.cpu_count()``); 0 runs the points
        one after the other in this process.
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    rows : list of dict
        One per trained point (see :func:`sparsity_point`) in the order
        model-major, then the exact rows.

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892: polysemanticity rises with sparsity.
    """
    from capalloc.experiments.sweep import grid, run_sweep
    from capalloc.training.torch_models import available_models

    S = _check_sparsities(sparsities)
    models = [models] if isinstance(models, str) else list(models)
    valid = available_models()
    for model in models:
        if model not in valid:
            raise ValueError(f"models must be drawn from {valid}, got {model!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0
    ):
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    points = grid(model=models, sparsity=[float(s) for s in S])
    common = {
        "seeds": int(seeds),
        "n": int(n),
        "d": int(d),
        "importance_decay": float(importance_decay),
        "steps": int(steps),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "device": str(device),
        "seed": int(seed),
    }
    points = [{**p, **common} for p in points]
    rows: list[dict[str, Any]] = []
    if points:
        own: Executor | None = None
        if executor is None:
            import concurrent.futures as cf
            import multiprocessing

            if workers == 0:  # in this process, one point at a time
                own = cf.ThreadPoolExecutor(max_workers=1)
            else:
                own = cf.ProcessPoolExecutor(
                    max_workers=min(workers or os.cpu_count() or 1, len(points)),
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                )
            executor = own
        tmp = tempfile.TemporaryDirectory() if not out_dir else None
        try:
            root = tmp.name if tmp is not None else cast("str | os.PathLike[str]", out_dir)
            rows = run_sweep(sparsity_point, points, root, executor=executor, progress=progress)
        finally:
            if own is not None:
                own.shutdown(wait=True, cancel_futures=True)
            if tmp is not None:
                tmp.cleanup()
    if exact:
        rows += _exact_rows(S, n, d, importance_decay)
    return rows


def plot_sparsity_sweep(
    rows: Sequence[Mapping[str, Any]],
    ax: Any = None,
    *,
    exact_curve: bool = True,
    fraction: str = "polysemantic_fraction",
) -> Any:
    """All models' polysemantic fraction against sparsity, with the exact quadratic curve.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`sparsity_sweep` (or rows loaded from its JSON).
    ax : matplotlib.axes.Axes, optional
        Where to draw (a new figure by default).
    exact_curve : bool, default True
        Overlay the exact quadratic curve on a fine grid of sparsities (using the
        ``n``, ``d`` of the rows and importances ``0.9^i``, or those of a
        ``quadratic-exact`` row's settings), plus the exact rows as markers.
    fraction : str, default "polysemantic_fraction"
        Which quantity to plot (``"polysemantic_fraction_all"`` or
        ``"capacity_held_by_poly"`` also work).

    Returns
    -------
    ax : matplotlib.axes.Axes
        The x axis is the feature probability :math:`1 - S` on a reversed log
        scale, so sparsity grows to the right.
    """
    ax = _new_axes(ax, figsize=(6.4, 4.2))
    rows = list(rows)
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    models += sorted({r["model"] for r in rows} - set(models) - {EXACT_MODEL})
    all_s: list[float] = []
    for model in models:
        sel = sorted((r for r in rows if r["model"] == model), key=lambda r: r["sparsity"])
        s = np.array([r["sparsity"] for r in sel])
        all_s.extend(s)
        y = np.array([r[fraction] for r in sel])
        e = np.array([r.get(f"{fraction}_std", 0.0) or 0.0 for r in sel])
        color, marker = _MODEL_STYLE.get(model, (None, "o"))
        ax.errorbar(
            1 - s,
            y,
            yerr=e,
            label=f"{model} (trained)",
            color=color,
            marker=marker,
            ms=5,
            capsize=3,
            lw=1.2,
        )
    exact_rows = sorted((r for r in rows if r["model"] == EXACT_MODEL), key=lambda r: r["sparsity"])
    if exact_curve and (exact_rows or "quadratic" in models):
        ref = (exact_rows or [r for r in rows if r["model"] == "quadratic"])[0]
        s_all = np.array(all_s + [r["sparsity"] for r in exact_rows])
        lo = max(1 - s_all.max(), 1e-4)
        fine = 1 - np.geomspace(1.0, lo * 0.8, 200)
        fine = fine[fine < 1]
        curve = exact_sparsity_curve(fine, 0.9 ** np.arange(ref["n"], dtype=float), ref["d"])
        ax.plot(
            1 - fine, curve[fraction], color="k", lw=1.5, ls="--", label="quadratic (exact, solver)"
        )
        if exact_rows:
            ax.plot(
                [1 - r["sparsity"] for r in exact_rows],
                [r[fraction] for r in exact_rows],
                "k+",
                ms=8,
            )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("feature probability $1 - S$ (sparsity $S$ grows to the right)")
    ax.set_ylabel(fraction.replace("_", " "))
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("polysemanticity versus sparsity")
    ax.legend(fontsize="small", loc="best")
    ax.grid(alpha=0.3)
    return ax


# ----------------------------------------------------------------------------- block sizes


def block_size_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of block shapes ``"dim x features"`` per model, over all sparsities and seeds.

    Rows without block information (``block_shapes`` ``None``) are skipped.

    Examples
    --------
    >>> from capalloc.experiments.reproductions import block_size_table
    >>> rows = [{"model": "relu", "block_shapes": {"1x1": 3, "1x2": 1}},
    ...         {"model": "relu", "block_shapes": {"1x1": 2}}]
    >>> block_size_table(rows)
    {'relu': {'1x1': 5, '1x2': 1}}
    """
    table: dict[str, Counter[str]] = {}
    for row in rows:
        shapes = row.get("block_shapes")
        if shapes:
            table.setdefault(row["model"], Counter()).update(shapes)
    return {
        m: dict(sorted(c.items(), key=lambda kv: tuple(map(int, kv[0].split("x")))))
        for m, c in table.items()
    }


def plot_block_sizes(
    rows: Sequence[Mapping[str, Any]], ax: Any = None, *, min_sparsity: float = 0.0
) -> Any:
    """Distribution of block sizes (features per block), one bar group per model.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`sparsity_sweep`.
    ax : matplotlib.axes.Axes, optional
    min_sparsity : float, default 0
        Only rows with at least this sparsity count.

    Returns
    -------
    ax : matplotlib.axes.Axes
        Bars: the fraction of each model's represented features that sit in a
        block of ``k`` features (so one block of 20 weighs as much as 20
        monosemantic features).
    """
    ax = _new_axes(ax, figsize=(6.4, 3.8))
    table = block_size_table([r for r in rows if r["sparsity"] >= min_sparsity])
    if not table:
        ax.text(
            0.5,
            0.5,
            "no block data (capalloc.geometry unavailable)",
            ha="center",
            transform=ax.transAxes,
        )
        return ax
    by_k: dict[str, Counter[int]] = {}
    for model, counts in table.items():
        c: Counter[int] = Counter()
        for shape, count in counts.items():
            k = int(shape.split("x")[1])
            c[k] += count * k
        by_k[model] = c
    ks = sorted({k for c in by_k.values() for k in c})
    models = [m for m in MODELS if m in by_k] + sorted(set(by_k) - set(MODELS))
    width = 0.8 / len(models)
    x = np.arange(len(ks))
    for j, model in enumerate(models):
        total = sum(by_k[model].values())
        heights = [by_k[model][k] / total for k in ks]
        color = _MODEL_STYLE.get(model, (None,))[0]
        ax.bar(x + (j - (len(models) - 1) / 2) * width, heights, width, label=model, color=color)
    ax.set_xticks(x, [str(k) for k in ks])
    ax.set_xlabel("features per block")
    ax.set_ylabel("fraction of represented features")
    ax.set_title(f"block sizes (sparsity >= {min_sparsity:g})")
    ax.legend(fontsize="small")
    return ax


# ----------------------------------------------------------------------------- phase diagram


@dataclass(frozen=True, repr=False, eq=False)
class PhaseDiagram:
    r"""Regime of one feature of the quadratic model over (kurtosis, relative importance).

    Attributes
    ----------
    kurtosis : (nK,) ndarray
        Kurtosis grid (rows of the maps).
    ratio : (nr,) ndarray
        Relative-importance grid (columns): the chosen feature's importance is
        ``ratio * importance[feature]``.
    regime : (nK, nr) ndarray of int8
        0 monosemantic, 1 polysemantic, 2 ignored (see :attr:`labels`).
    capacity : (nK, nr) ndarray
        The chosen feature's optimal capacity.
    importance : (n,) ndarray
        Base importances.
    feature : int
        Index of the varied feature.
    d : int
    elapsed : float
        Seconds spent in the batched solve.
    """

    kurtosis: np.ndarray
    ratio: np.ndarray
    regime: np.ndarray
    capacity: np.ndarray
    importance: np.ndarray
    feature: int
    d: int
    elapsed: float

    @property
    def labels(self) -> np.ndarray:
        """The regime map as label strings, shape ``(nK, nr)``."""
        return np.asarray(LABELS)[self.regime]

    def analytic_boundary(self, ratio: Any = None) -> np.ndarray:
        r"""The two-feature, one-neuron boundary :math:`K = 1 + 2\max(r, 1/r)`.

        The optimum is polysemantic iff :math:`K > 1 + 2a/b` with :math:`a \ge b`
        the two importances; :math:`r` is their ratio. Only meaningful for
        ``n = 2``, ``d = 1`` with equal base importances.
        """
        r = np.asarray(self.ratio if ratio is None else ratio, dtype=float)
        base = self.importance
        other = base[1 - self.feature] if base.size == 2 else np.nan
        q = r * base[self.feature] / other
        return 1 + 2 * np.maximum(q, 1 / q)

    def __repr__(self) -> str:
        counts = {lab: int(np.sum(self.regime == code)) for lab, code in _REGIME_CODES.items()}
        return (
            f"PhaseDiagram(grid={self.regime.shape}, n={self.importance.size}, d={self.d}, "
            f"feature={self.feature}, mono={counts[MONOSEMANTIC]}, "
            f"poly={counts[POLYSEMANTIC]}, ignored={counts[IGNORED]}, "
            f"elapsed={self.elapsed:.3g}s)"
        )


def phase_diagram(
    kurtosis_grid: Any = None,
    ratio_grid: Any = None,
    *,
    importance: Any = (1.0, 1.0),
    d: int = 1,
    feature: int = 1,
    method: str = "auto",
) -> PhaseDiagram:
    r"""Exact regime map of one feature over kurtosis and relative importance.

    Every grid cell :math:`(K, r)` is one row of a single batched
    :class:`~capalloc.QuadraticProblem` (``nK * nr`` rows) with all kurtoses
    equal to :math:`K` and the chosen feature's importance multiplied by
    :math:`r`, solved exactly by :func:`capalloc.solve`. For two features and one
    neuron the polysemantic region is :math:`K > 1 + 2\max(r, 1/r)`.

    Parameters
    ----------
    kurtosis_grid : (nK,) array_like of float, optional
        Default 200 values from 1.2 to 25.
    ratio_grid : (nr,) array_like of float, optional
        Positive multipliers of the feature's importance; default 200 values
        log-spaced from 0.1 to 10.
    importance : (n,) array_like of float, default (1, 1)
        Base importances.
    d : int, default 1
        Embedding dimension.
    feature : int, default 1
        Index of the feature whose importance varies and whose regime is mapped.
    method : str, default "auto"
        Passed to :func:`capalloc.solve`.

    Returns
    -------
    PhaseDiagram

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892 (two features, one neuron).

    Examples
    --------
    >>> from capalloc.experiments.reproductions import phase_diagram
    >>> pd = phase_diagram([2.0, 4.0, 10.0], [0.5, 0.9, 2.0])
    >>> pd.labels.tolist()  # doctest: +NORMALIZE_WHITESPACE
    [['ignored', 'ignored', 'monosemantic'],
     ['ignored', 'polysemantic', 'monosemantic'],
     ['polysemantic', 'polysemantic', 'polysemantic']]
    """
    K = np.linspace(1.2, 25.0, 200) if kurtosis_grid is None else kurtosis_grid
    r = np.geomspace(0.1, 10.0, 200) if ratio_grid is None else ratio_grid
    K = check_kurtosis(np.atleast_1d(np.asarray(K, dtype=float)), "kurtosis_grid")
    r = np.atleast_1d(np.asarray(r, dtype=float))
    if K.ndim != 1 or K.size == 0:
        raise ValueError(f"kurtosis_grid must be a non-empty 1-D array, got {short(kurtosis_grid)}")
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or r.min() <= 0:
        raise ValueError(
            f"ratio_grid must be a non-empty 1-D array of positive values, got {short(ratio_grid)}"
        )
    v = check_importance(importance)
    if (
        isinstance(feature, bool)
        or not isinstance(feature, (int, np.integer))
        or not (-v.size <= feature < v.size)
    ):
        raise ValueError(f"feature must be an index into importance (n={v.size}), got {feature!r}")
    feature = int(feature) % v.size
    V = np.tile(v, (K.size * r.size, 1))
    V[:, feature] = np.tile(r, K.size) * v[feature]
    KK = np.repeat(K, r.size)[:, None]
    start = time.perf_counter()
    result = solve(QuadraticProblem(V, d, KK), method=method)
    elapsed = time.perf_counter() - start
    labels = np.asarray(result.labels)[:, feature].reshape(K.size, r.size)
    regime = np.select([labels == MONOSEMANTIC, labels == POLYSEMANTIC], [0, 1], 2).astype(np.int8)
    C = np.asarray(result.capacity)[:, feature].reshape(K.size, r.size)
    return PhaseDiagram(
        kurtosis=readonly(K),
        ratio=readonly(r),
        regime=readonly(regime),
        capacity=readonly(C),
        importance=readonly(v),
        feature=feature,
        d=int(d),
        elapsed=elapsed,
    )


def train_phase_points(
    points: Sequence[tuple[float, float]],
    *,
    importance: Any = (1.0, 1.0),
    d: int = 1,
    feature: int = 1,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
    cap_tol: float = 0.05,
) -> list[dict[str, Any]]:
    r"""Train the quadratic model at chosen (kurtosis, ratio) points, all in one batch.

    Each point is one instance of :class:`~capalloc.training.torch_models.QuadraticModel`
    with sparse Gaussian inputs of sparsity :math:`1 - 3/K` (so :math:`K \ge 3`)
    and the chosen feature's importance scaled by the ratio.

    Parameters
    ----------
    points : sequence of (kurtosis, ratio)
    importance, d, feature
        As in :func:`phase_diagram`.
    steps, batch_size, lr, device, seed
        Training settings (see :class:`~capalloc.training.TrainConfig`).
    cap_tol : float, default 0.05
        Labelling tolerance for the trained capacities.

    Returns
    -------
    list of dict
        ``kurtosis``, ``ratio``, ``label`` (trained), ``capacity`` (trained) and
        ``exact_label``, ``exact_capacity`` from the solver.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    K, r = pts[:, 0], pts[:, 1]
    if K.size == 0 or K.min() < 3:
        raise ValueError(
            f"points must have kurtosis >= 3 (sparse Gaussian inputs), got {short(points)}"
        )
    v = check_importance(importance)
    V = np.tile(v, (K.size, 1))
    V[:, feature] = r * v[feature]
    from capalloc.training.torch_models import train_model  # torch only once the input is valid

    run = train_model(
        "quadratic",
        V,
        d,
        1 - 3 / K,
        config=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed),
        cap_tol=cap_tol,
    )
    exact = solve(QuadraticProblem(V, d, K[:, None]))
    return [
        {
            "kurtosis": float(K[i]),
            "ratio": float(r[i]),
            "label": str(run.labels[i, feature]),
            "capacity": float(run.effective_capacity[i, feature]),
            "exact_label": str(exact.labels[i, feature]),
            "exact_capacity": float(exact.capacity[i, feature]),
        }
        for i in range(K.size)
    ]


_BENEFIT_POINTS = ((2.0, 0.7), (3.0, 0.7), (12.0, 0.7))


def plot_phase_diagram(
    diagram: PhaseDiagram,
    trained: Sequence[Mapping[str, Any]] | None = None,
    *,
    benefit_points: Sequence[tuple[float, float]] = _BENEFIT_POINTS,
    fig: Any = None,
) -> Any:
    r"""Draw a :class:`PhaseDiagram` with marginal-benefit panels.

    Left: the regime of the chosen feature coloured by label, the analytic
    boundary :math:`K = 1 + 2\max(r, 1/r)` (two features, one neuron), optional
    trained points (filled with their trained label's colour; a cross where it
    differs from the exact label) and letters at ``benefit_points``. Right: for each of those
    points, the marginal benefit :math:`-\ell_i'(C)` of every feature against
    capacity with the optimal capacities and threshold marked: increasing returns
    for :math:`K < 3`, constant for :math:`K = 3`, diminishing for :math:`K > 3`.

    Parameters
    ----------
    diagram : PhaseDiagram
    trained : sequence of dict, optional
        Output of :func:`train_phase_points`.
    benefit_points : sequence of (kurtosis, ratio)
        Points of the marginal-benefit panels (default: K = 2, 3 and 12 at r = 0.7).
    fig : matplotlib.figure.Figure, optional
        Figure to draw on (a new one by default).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if fig is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 5.6), layout="constrained")
    nb = len(benefit_points)
    gs = fig.add_gridspec(max(nb, 1), 2, width_ratios=(1.6, 1))
    ax = fig.add_subplot(gs[:, 0])
    colors = _label_colors()
    cmap = ListedColormap([colors[lab] for lab in LABELS])
    ax.pcolormesh(
        diagram.ratio,
        diagram.kurtosis,
        diagram.regime,
        cmap=cmap,
        vmin=-0.5,
        vmax=2.5,
        shading="nearest",
        rasterized=True,
    )
    ax.set_xscale("log")
    handles: list[Any] = [Patch(color=colors[lab], label=lab) for lab in LABELS]
    if diagram.importance.size == 2 and diagram.d == 1:
        ax.plot(diagram.ratio, diagram.analytic_boundary(), "k--", lw=1.5)
        handles.append(Line2D([], [], color="k", ls="--", label=r"$K = 1 + 2\max(r, 1/r)$"))
    ax.axhline(3.0, color="w", lw=0.8, ls=":")
    if trained:
        for t in trained:
            agree = t["label"] == t.get("exact_label", t["label"])
            ax.plot(
                t["ratio"],
                t["kurtosis"],
                "o" if agree else "X",
                ms=9,
                mfc=colors[t["label"]],
                mec="w",
                mew=1.5,
            )
            ax.plot(t["ratio"], t["kurtosis"], "o", ms=12, mfc="none", mec="k", mew=0.8)
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                mfc="0.8",
                mec="k",
                label="trained model (fill: its regime; X: disagrees)",
            )
        )
    letters = "abcdefghij"
    for i, (K, r) in enumerate(benefit_points):
        ax.annotate(
            letters[i],
            (r, K),
            ha="center",
            va="center",
            fontsize=11,
            fontweight="bold",
            color="k",
            bbox={"boxstyle": "circle,pad=0.2", "fc": "w", "ec": "k", "lw": 0.8},
        )
    ax.set_xlim(diagram.ratio.min(), diagram.ratio.max())
    ax.set_ylim(diagram.kurtosis.min(), diagram.kurtosis.max())
    ax.set_xlabel(f"relative importance $r$ of feature {diagram.feature}")
    ax.set_ylabel("kurtosis $K$")
    ax.set_title(
        f"regime of feature {diagram.feature} (n={diagram.importance.size}, "
        f"d={diagram.d}; {diagram.regime.size} cells solved exactly)"
    )
    ax.legend(handles=handles, loc="upper left", fontsize="small", framealpha=0.9)

    C = np.linspace(0.0, 1.0, 201)[:, None]
    for i, (K, r) in enumerate(benefit_points):
        bx = fig.add_subplot(gs[i, 1])
        v = diagram.importance.copy()
        v[diagram.feature] *= r
        prob = QuadraticProblem(v, diagram.d, K)
        res = solve(prob)
        g = prob.marginal_benefit(C)
        for j in range(v.size):
            style = "-" if j == diagram.feature else "--"
            bx.plot(
                C[:, 0],
                g[:, j],
                style,
                color=colors[str(res.labels[j])],
                label=f"feature {j} (v={v[j]:.2g})",
            )
            bx.plot(
                res.capacity[j],
                prob.marginal_benefit(res.capacity)[j],
                "o",
                color=colors[str(res.labels[j])],
                mec="k",
            )
        bx.axhline(float(res.threshold), color="0.4", lw=0.8, ls=":", label="threshold $T$")
        trend = "increasing" if K < 3 else ("constant" if K == 3 else "diminishing")
        bx.set_title(f"({letters[i]}) K={K:g}, r={r:g}: {trend} returns", fontsize="small")
        bx.set_ylabel(r"$-\ell_i'(C)$", fontsize="small")
        bx.tick_params(labelsize="small")
        if i == nb - 1:
            bx.set_xlabel("capacity $C$")
        if i == 0:
            bx.legend(fontsize="x-small", loc="best")
    return fig
