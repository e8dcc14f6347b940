r"""Elhage et al.'s geometry of superposition: dimensions per feature against density.

The uniform-importance sweep of "Toy Models of Superposition": ReLU
autoencoders :math:`\hat x = \mathrm{ReLU}(W^\top W x + b)` with ``n`` features of
equal importance in ``d`` dimensions, trained at several densities
:math:`p = 1 - S`. Elhage et al. (n = 400, d = 30) find the dimensions per
feature :math:`D^* = d / \|W\|_F^2` sticky at 1 (dense: ``d`` features kept
orthogonally) and 1/2 (antipodal pairs) as the density falls, and the
per-feature dimensionalities :math:`D_i` clustered at the fractions of
uniform polytopes: 1, 3/4 (tetrahedron), 2/3 (triangle), 1/2 (digon),
2/5 (pentagon), 3/8 (square antiprism). :func:`tms_geometry` runs the sweep at
a CPU size (all densities and seeds in one batched run) and
:func:`fraction_counts` bins the :math:`D_i` at those fractions.

References
----------
.. [1] N. Elhage et al., "Toy Models of Superposition" (2022), section
   "The geometry of superposition".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short
from capalloc.neurons import dimensions_per_feature, feature_dimensionality

__all__ = ["FRACTIONS", "fraction_counts", "plot_tms_geometry", "tms_geometry"]

#: The fractions D_i of uniform polytopes (name: value).
FRACTIONS = {
    "1": 1.0,
    "3/4": 0.75,
    "2/3": 2 / 3,
    "1/2": 0.5,
    "2/5": 0.4,
    "3/8": 0.375,
}


def fraction_counts(D: Any, tol: float = 0.02, ignored: float = 0.05) -> dict[str, int]:
    """Count per-feature dimensionalities within ``tol`` of each of :data:`FRACTIONS`.

    Features with :math:`D_i <` ``ignored`` are counted as ``"ignored"``, the rest
    that match no fraction as ``"other"``.

    Examples
    --------
    >>> from capalloc.experiments.tms_geometry import fraction_counts
    >>> fraction_counts([1.0, 0.5, 0.5, 0.41, 0.0, 0.9])
    {'1': 1, '3/4': 0, '2/3': 0, '1/2': 2, '2/5': 1, '3/8': 0, 'other': 1, 'ignored': 1}
    """
    d = np.asarray(D, dtype=float).ravel()
    out: dict[str, int] = {}
    matched = np.zeros(d.shape, bool) | (d < ignored)
    for name, value in FRACTIONS.items():
        hit = ~matched & (np.abs(d - value) <= tol)
        out[name] = int(hit.sum())
        matched |= hit
    out["other"] = int((~matched).sum())
    out["ignored"] = int((d < ignored).sum())
    return out


def tms_geometry(
    n: int = 100,
    d: int = 10,
    densities: Sequence[float] = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01),
    *,
    seeds: int = 1,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""Train the uniform-importance ReLU autoencoder at each density and measure its geometry.

    Returns
    -------
    list of dict
        One row per density (the seed of lowest final loss): ``density``,
        ``dimensions_per_feature`` (:math:`D^*`), ``capacity`` (the per-feature
        :math:`D_i`, a list of ``n``), ``fractions`` (:func:`fraction_counts`),
        ``loss`` and ``train_seconds``.

    Examples
    --------
    >>> from capalloc.experiments.tms_geometry import tms_geometry
    >>> rows = tms_geometry(n=6, d=2, densities=[1.0], steps=300)  # doctest: +SKIP
    >>> round(rows[0]["dimensions_per_feature"], 1)  # doctest: +SKIP
    1.0
    """
    n = check_positive(n, "n", integer=True)
    d = check_positive(d, "d", integer=True)
    seeds = check_positive(seeds, "seeds", integer=True)
    ps = [float(p) for p in densities]
    if not ps or any(not 0 < p <= 1 for p in ps):
        raise ValueError(f"densities must lie in (0, 1], got {short(list(densities))}")
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    sparsity = np.repeat(1.0 - np.array(ps), seeds)
    run = train_model(
        "relu-ae",
        np.ones((len(sparsity), n)),
        d=d,
        sparsity=sparsity,
        config=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed),
    )
    Dstar = dimensions_per_feature(run.W)
    Di = feature_dimensionality(run.W)
    rows = []
    for k, p in enumerate(ps):
        block = slice(k * seeds, (k + 1) * seeds)
        j = k * seeds + int(np.argmin(run.loss[block]))
        rows.append(
            {
                "density": p,
                "dimensions_per_feature": float(Dstar[j]),
                "capacity": Di[j].tolist(),
                "fractions": fraction_counts(Di[j]),
                "loss": float(run.loss[j]),
                "train_seconds": run.elapsed,
                "n": n,
                "d": d,
            }
        )
    return rows


def plot_tms_geometry(rows: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """:math:`D^*` against :math:`1/p` (line) over every feature's :math:`D_i` (dots), with the
    fraction lines of :data:`FRACTIONS`.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from capalloc.experiments.tms_geometry import plot_tms_geometry
    >>> rows = [{"density": 0.1, "dimensions_per_feature": 0.5, "capacity": [0.5, 0.5, 1.0]}]
    >>> plot_tms_geometry(rows).get_xscale()
    'log'
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6.5, 4))
    for name, value in FRACTIONS.items():
        ax.axhline(value, color="0.8", lw=0.8, zorder=0)
        ax.annotate(
            name,
            (1.0, value),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            xytext=(3, -2),
            textcoords="offset points",
        )
    x = np.array([1 / r["density"] for r in rows])
    for xi, r in zip(x, rows, strict=True):
        c = np.asarray(r["capacity"], dtype=float)
        jitter = xi * np.exp(np.random.default_rng(0).uniform(-0.06, 0.06, c.size))
        ax.scatter(jitter, c, s=6, color="#e6550d", alpha=0.4, lw=0)
    ax.plot(
        x, [r["dimensions_per_feature"] for r in rows], "k-o", ms=4, label=r"$D^* = d/\|W\|_F^2$"
    )
    ax.set_xscale("log")
    ax.set_xlabel("1 / density")
    ax.set_ylabel("dimensions per feature")
    ax.set_ylim(-0.02, 1.1)
    ax.legend(fontsize=8, loc="upper right")
    return ax
