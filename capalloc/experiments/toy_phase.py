r"""The exact "toy model of the toy model": Elhage et al.'s ReLU autoencoder with n = 2, d = 1.

Model :math:`\hat x = \mathrm{ReLU}(w w^\top x + b)` with :math:`w, b \in \mathbb R^2`
(the embedding ``W`` is the row :math:`w^\top`); input
:math:`x_i = u_i B_i`, :math:`u_i \sim U[0, 1]`, :math:`B_i \sim \mathrm{Bernoulli}(p)`
(density ``p``), all independent; loss
:math:`L = \mathbb E[(x_1 - \hat x_1)^2 + r (x_2 - \hat x_2)^2]` with relative
importance :math:`r \in (0, 1]` of the weaker feature.

:func:`exact_loss` is :math:`L(w, b)` in closed form: the four on/off cases of
the two features, the one-feature cases as integrals of piecewise quadratics on
``[0, 1]`` and the two-feature case as a quadratic integrated over the unit
square clipped by the half-plane where the ReLU is active (a polygon, split
into triangles and integrated exactly by the edge-midpoint rule). Candidate
configurations, in closed form (:func:`candidate_losses`):

``none``
    :math:`w = 0`, :math:`b_i = p/2`: :math:`L = (1 + r)(p/3 - p^2/4)`.
``one`` (ignore the weaker feature)
    :math:`w = (1, 0)`, :math:`b = (0, p/2)`: :math:`L = r (p/3 - p^2/4)`.
``antipodal`` (superposition)
    :math:`w = (1, -1)`, :math:`b = 0`: interference only when both are on,
    :math:`\mathbb E[\min(u, v)^2] = 1/6`, so :math:`L = (1 + r) p^2 / 6`.

``antipodal`` beats ``one`` exactly when :math:`p < p^*(r) = 4r / (2 + 5r)`
(:func:`antipodal_boundary`); ``none`` never wins. :func:`exact_optimum`
minimises :math:`L` directly over :math:`(w, b)` with scipy from these and other
starts, which finds where the candidates are not the optimum: near equal
importance and high density, a biased superposition (both features kept in
an antipodal pair, with positive biases of order 0.1 to 0.6) beats both candidates. :func:`toy_phase` lays the exact
optimum next to trained models on a (density, relative importance) grid.

References
----------
.. [1] N. Elhage et al., "Toy Models of Superposition" (2022), section
   "Superposition as a phase change".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._lib.validation import as_float_array, check_positive, short

__all__ = [
    "CONFIGURATIONS",
    "antipodal_boundary",
    "candidate_losses",
    "configuration_label",
    "exact_loss",
    "exact_optimum",
    "plot_toy_phase",
    "toy_phase",
]

#: Labels of a configuration, coarse (``trained`` column) and exact.
CONFIGURATIONS = ("none", "one", "superposition")

_KEPT = 0.1  # a feature with w_i^2 above this is represented


def _check_density(p: Any, name: str = "density") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must lie in (0, 1], got {short(p)}")
    if not 0 < float(p) <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {p!r}")
    return float(p)


def _check_ratio(r: Any, name: str = "relative_importance") -> float:
    x = check_positive(r, name)
    if x > 1:
        raise ValueError(f"{name} must lie in (0, 1] (the weaker feature), got {r!r}")
    return x


# ----------------------------------------------------------------------------- exact integrals


def _interval(slope: float, b: float) -> tuple[float, float] | None:
    """The part of ``[0, 1]`` where ``slope * t + b > 0`` (``None`` when empty)."""
    if slope == 0:
        return (0.0, 1.0) if b > 0 else None
    root = -b / slope
    lo, hi = (max(0.0, root), 1.0) if slope > 0 else (0.0, min(1.0, root))
    return (lo, hi) if hi > lo else None


def _simpson(f: Any, lo: float, hi: float) -> float:
    """Exact for polynomials of degree at most 3."""
    return (hi - lo) / 6.0 * (f(lo) + 4.0 * f(0.5 * (lo + hi)) + f(hi))


def _own(a: float, b: float) -> float:
    r""":math:`\int_0^1 (t - \mathrm{ReLU}(a t + b))^2 dt`."""
    out = 1.0 / 3.0
    span = _interval(a, b)
    if span:
        out += _simpson(lambda t: (a * t + b) ** 2 - 2.0 * t * (a * t + b), *span)
    return out


def _cross(c: float, b: float) -> float:
    r""":math:`\int_0^1 \mathrm{ReLU}(c t + b)^2 dt`."""
    span = _interval(c, b)
    return _simpson(lambda t: (c * t + b) ** 2, *span) if span else 0.0


def _both(a: float, c: float, b: float) -> float:
    r""":math:`\iint_{[0,1]^2} (u - \mathrm{ReLU}(a u + c v + b))^2 du\,dv`, exactly.

    :math:`= 1/3 + \int_R (g^2 - 2 u g)` with :math:`g = a u + c v + b` and
    :math:`R = \{g > 0\}` (the square clipped by a half-plane).
    """
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]

    def g(pt: tuple[float, float]) -> float:
        return a * pt[0] + c * pt[1] + b

    poly: list[tuple[float, float]] = []
    for k, cur in enumerate(square):  # Sutherland-Hodgman against g >= 0
        nxt = square[(k + 1) % 4]
        gc, gn = g(cur), g(nxt)
        if gc >= 0:
            poly.append(cur)
        if (gc >= 0) != (gn >= 0):
            t = gc / (gc - gn)
            poly.append((cur[0] + t * (nxt[0] - cur[0]), cur[1] + t * (nxt[1] - cur[1])))
    out = 1.0 / 3.0
    if len(poly) < 3:
        return out

    def f(pt: tuple[float, float]) -> float:
        gv = g(pt)
        return gv * gv - 2.0 * pt[0] * gv

    p0 = poly[0]
    for p1, p2 in zip(poly[1:-1], poly[2:], strict=True):
        area = 0.5 * abs((p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (p1[1] - p0[1]))
        mids = [((p[0] + q[0]) / 2, (p[1] + q[1]) / 2) for p, q in ((p0, p1), (p1, p2), (p2, p0))]
        out += area * sum(f(m) for m in mids) / 3.0  # exact for quadratics
    return out


def exact_loss(w: Any, b: Any, density: float, relative_importance: float) -> float:
    r"""Expected loss :math:`L(w, b)` of the n = 2, d = 1 ReLU autoencoder, in closed form.

    .. math::

        L = \sum_i I_i \big[(1 - p)^2 \mathrm{ReLU}(b_i)^2
            + p (1 - p) (E^{\mathrm{own}}_i + E^{\mathrm{cross}}_i) + p^2 E^{\mathrm{both}}_i\big]

    with :math:`I = (1, r)`, :math:`E^{\mathrm{own}}_i = \mathbb E(u - \mathrm{ReLU}(w_i^2 u + b_i))^2`,
    :math:`E^{\mathrm{cross}}_i = \mathbb E\,\mathrm{ReLU}(w_1 w_2 v + b_i)^2` and
    :math:`E^{\mathrm{both}}_i = \mathbb E(u - \mathrm{ReLU}(w_i^2 u + w_1 w_2 v + b_i))^2`,
    :math:`u, v \sim U[0, 1]` independent (each integral exact, see the module notes).

    Parameters
    ----------
    w, b : (2,) array_like of float
        Embedding row and output bias.
    density : float in (0, 1]
        Probability :math:`p` that a feature is active.
    relative_importance : float > 0
        :math:`r = I_2 / I_1`.

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import exact_loss
    >>> round(exact_loss([1.0, -1.0], [0.0, 0.0], 0.3, 0.5), 12)  # (1 + r) p^2 / 6
    0.0225
    >>> round(exact_loss([1.0, 0.0], [0.0, 0.15], 0.3, 0.5), 12)  # r (p/3 - p^2/4)
    0.03875
    """
    w = as_float_array(w, "w", ndim=1)
    b = as_float_array(b, "b", ndim=1)
    if w.shape != (2,) or b.shape != (2,):
        raise ValueError(f"w and b must have shape (2,), got {w.shape} and {b.shape}")
    p = _check_density(density)
    r = check_positive(relative_importance, "relative_importance")
    return _loss(float(w[0]), float(w[1]), float(b[0]), float(b[1]), p, r)


def _loss(w0: float, w1: float, b0: float, b1: float, p: float, r: float) -> float:
    """:func:`exact_loss` on plain floats (no checks)."""
    c = w0 * w1
    total = 0.0
    for a, bi, weight in ((w0 * w0, b0, 1.0), (w1 * w1, b1, r)):
        term = (1 - p) ** 2 * max(bi, 0.0) ** 2
        term += p * (1 - p) * (_own(a, bi) + _cross(c, bi))
        term += p * p * _both(a, c, bi)
        total += weight * term
    return total


def candidate_losses(density: Any, relative_importance: Any) -> dict[str, np.ndarray]:
    r"""Closed-form losses of the candidate configurations (see the module notes).

    ``none``: :math:`(1 + r)(p/3 - p^2/4)`; ``one``: :math:`r(p/3 - p^2/4)`;
    ``antipodal``: :math:`(1 + r)p^2/6`. Broadcasts over ``density`` and
    ``relative_importance``.

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import candidate_losses
    >>> {k: round(float(v), 5) for k, v in candidate_losses(0.3, 0.5).items()}
    {'none': 0.11625, 'one': 0.03875, 'antipodal': 0.0225}
    """
    p = as_float_array(density, "density")
    r = as_float_array(relative_importance, "relative_importance")
    if p.size and (p.min() <= 0 or p.max() > 1):
        raise ValueError(f"density must lie in (0, 1], got {short(density)}")
    if r.size and r.min() <= 0:
        raise ValueError(f"relative_importance must be > 0, got {short(relative_importance)}")
    var = p / 3 - p * p / 4  # variance of one feature
    return {"none": (1 + r) * var, "one": r * var, "antipodal": (1 + r) * p * p / 6}


def antipodal_boundary(relative_importance: Any) -> np.ndarray:
    r"""Density below which the antipodal pair beats ignoring the weaker feature.

    Solving :math:`(1 + r) p^2/6 = r (p/3 - p^2/4)` gives :math:`p^*(r) = 4r/(2 + 5r)`
    (4/7 at equal importance).

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import antipodal_boundary
    >>> antipodal_boundary([1.0, 0.5]).round(6).tolist()
    [0.571429, 0.444444]
    """
    r = as_float_array(relative_importance, "relative_importance")
    return 4 * r / (2 + 5 * r)


def configuration_label(w: Any, b: Any = None) -> str:
    r"""``"none"``, ``"one"`` or ``"superposition"``: how many features have :math:`w_i^2 > 0.1`.

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import configuration_label
    >>> configuration_label([1.0, 0.01]), configuration_label([0.9, -0.9])
    ('one', 'superposition')
    """
    kept = int(np.sum(np.asarray(w, dtype=float).ravel() ** 2 > _KEPT))
    return CONFIGURATIONS[kept]


def exact_optimum(
    density: float, relative_importance: float, *, seed: int = 0, restarts: int = 2
) -> dict[str, Any]:
    """Minimise :func:`exact_loss` over :math:`(w, b)` with scipy (L-BFGS-B, several starts).

    Starts: the three candidates, a same-sign pair with negative biases, an
    antipodal pair with negative biases and ``restarts`` random points. Returns the best.

    Returns
    -------
    dict
        ``loss``, ``w``, ``b`` (lists), ``label`` (:func:`configuration_label`),
        ``kind`` (the label refined: ``"antipodal"`` when :math:`w_1 w_2 < 0`
        and both biases are within 0.02 of 0, ``"biased superposition"`` for any
        other superposition) and ``candidate``, the best closed-form candidate.

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import exact_optimum
    >>> opt = exact_optimum(0.1, 0.5)
    >>> opt["kind"], opt["candidate"], round(opt["loss"], 4)
    ('antipodal', 'antipodal', 0.0025)
    """
    from scipy.optimize import minimize

    p = _check_density(density)
    r = _check_ratio(relative_importance)
    rng = np.random.default_rng(seed)
    starts = [
        [0.0, 0.0, p / 2, p / 2],
        [1.0, 0.0, 0.0, p / 2],
        [1.0, -1.0, 0.0, 0.0],
        [0.8, 0.8, -0.3, -0.3],
        [1.0, -1.0, -0.1, -0.1],
        *rng.normal(scale=0.7, size=(restarts, 4)).tolist(),
    ]

    def fun(z: np.ndarray) -> float:
        return _loss(float(z[0]), float(z[1]), float(z[2]), float(z[3]), p, r)

    best = None
    for z0 in starts:
        res = minimize(fun, np.asarray(z0, float), method="L-BFGS-B", options={"gtol": 1e-10})
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    w, b = best.x[:2], best.x[2:]
    label = configuration_label(w)
    kind = label
    if label == "superposition":
        kind = (
            "antipodal" if w[0] * w[1] < 0 and np.all(np.abs(b) < 0.02) else "biased superposition"
        )
    cands = candidate_losses(p, r)
    return {
        "loss": float(best.fun),
        "w": w.tolist(),
        "b": b.tolist(),
        "label": label,
        "kind": kind,
        "candidate": min(cands, key=lambda k: float(cands[k])),
    }


def toy_phase(
    densities: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0),
    ratios: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0),
    *,
    train: bool = True,
    seeds: int = 3,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 0.01,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""The n = 2, d = 1 ReLU-autoencoder diagram: exact optimum and trained models per cell.

    Every (density, relative importance) cell gets the exact optimum
    (:func:`exact_optimum`) and, with ``train``, ``seeds`` trained
    ``"relu-ae"`` instances (all cells and seeds in one batched run); the
    trained configuration is that of the seed with the lowest exact loss.

    Returns
    -------
    list of dict
        One row per cell: ``density``, ``relative_importance``, ``trained``
        (``"none"``, ``"one"`` or ``"superposition"``, ``None`` without
        training), ``exact`` (the same labels, of the exact optimum),
        ``exact_kind``, ``candidate`` (best closed-form candidate),
        ``exact_loss``, ``trained_loss`` (exact loss of the trained weights),
        ``candidate_loss``, ``w``, ``b`` (the trained ones) and ``boundary``
        (:func:`antipodal_boundary` of the cell's ``r``).

    Examples
    --------
    >>> from capalloc.experiments.toy_phase import toy_phase
    >>> [(row["exact"], row["candidate"]) for row in toy_phase([0.1, 0.9], [0.5], train=False)]
    [('superposition', 'antipodal'), ('one', 'one')]
    """
    ps = [_check_density(p) for p in densities]
    rs = [_check_ratio(r) for r in ratios]
    seeds = check_positive(seeds, "seeds", integer=True)
    cells = [(p, r) for r in rs for p in ps]
    start = time.perf_counter()
    rows = []
    for p, r in cells:
        opt = exact_optimum(p, r, seed=seed)
        cands = candidate_losses(p, r)
        rows.append(
            {
                "density": p,
                "relative_importance": r,
                "trained": None,
                "exact": opt["label"],
                "exact_kind": opt["kind"],
                "candidate": opt["candidate"],
                "exact_loss": opt["loss"],
                "candidate_loss": float(cands[opt["candidate"]]),
                "boundary": float(antipodal_boundary(r)),
                "exact_w": opt["w"],
                "exact_b": opt["b"],
            }
        )
    exact_time = time.perf_counter() - start
    if train:
        from capalloc.training import TrainConfig
        from capalloc.training.torch_models import train_model

        importance = np.array([[1.0, r] for p, r in cells for _ in range(seeds)])
        sparsity = np.array([1.0 - p for p, r in cells for _ in range(seeds)])
        run = train_model(
            "relu-ae",
            importance,
            d=1,
            sparsity=sparsity,
            config=TrainConfig(steps=steps, batch_size=batch_size, lr=lr, device=device, seed=seed),
        )
        for k, row in enumerate(rows):
            p, r = cells[k]
            best = None
            for j in range(k * seeds, (k + 1) * seeds):
                w, b = run.W[j, 0], run.bias[j]
                loss = exact_loss(w, b, p, r)
                if best is None or loss < best[0]:
                    best = (loss, w, b)
            assert best is not None
            row.update(
                trained=configuration_label(best[1]),
                trained_loss=float(best[0]),
                w=[float(x) for x in best[1]],
                b=[float(x) for x in best[2]],
            )
        for row in rows:
            row["train_seconds"] = run.elapsed
    for row in rows:
        row["exact_seconds"] = exact_time
    return rows


_COLORS = {"none": "#9e9e9e", "one": "#1f6fb2", "superposition": "#e6550d"}


def plot_toy_phase(rows: Sequence[dict[str, Any]], ax: Any = None) -> Any:
    """Draw the toy-phase rows: exact optimum as squares, trained label as dots, and the
    closed-form boundary :math:`p^* = 4r/(2 + 5r)`.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from capalloc.experiments.toy_phase import plot_toy_phase, toy_phase
    >>> ax = plot_toy_phase(toy_phase([0.1, 0.9], [0.5, 1.0], train=False))
    >>> ax.get_xlabel()
    'density p'
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 4.5))
    for label, color in _COLORS.items():
        pts = [(r["density"], r["relative_importance"]) for r in rows if r["exact"] == label]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=260, marker="s", color=color, alpha=0.35, label=f"exact: {label}")
        biased = [
            (r["density"], r["relative_importance"])
            for r in rows
            if r["exact"] == label and r.get("exact_kind") == "biased superposition"
        ]
        if biased:
            x, y = zip(*biased, strict=True)
            ax.scatter(x, y, s=260, marker="s", facecolor="none", edgecolor="k", lw=1.2)
        trained = [(r["density"], r["relative_importance"]) for r in rows if r["trained"] == label]
        if trained:
            x, y = zip(*trained, strict=True)
            ax.scatter(x, y, s=40, color=color, edgecolor="k", label=f"trained: {label}")
    r = np.linspace(0.02, 1.0, 200)
    ax.plot(antipodal_boundary(r), r, "k--", lw=1, label=r"$p^* = 4r/(2+5r)$")
    ax.set_xlabel("density p")
    ax.set_ylabel("relative importance r")
    ax.set_xlim(0, 1.05)
    ax.set_title("ReLU autoencoder, n = 2, d = 1 (outlined: biased superposition)")
    ax.legend(fontsize=7, loc="lower right")
    return ax
