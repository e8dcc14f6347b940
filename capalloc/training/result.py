r"""The one result type of every trainer, and the labels of trained (noisy) embeddings.

:class:`TrainResult` is returned by ``train_quadratic`` (exact or sampled
training of the quadratic model) and by ``train_model`` (the torch toy models).
It stores what training produced (weights, losses, settings); everything that
follows from the weights (capacities, labels, polysemantic fractions, blocks)
is computed from ``W`` on first access, so it can never disagree with it.

A trained column is never exactly zero nor exactly orthogonal to the others,
so the labels use loose tolerances (:func:`trained_labels`), after dropping the
remnants of switched-off columns (:func:`effective_capacity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from capalloc._capacity import IGNORED, MONOSEMANTIC, POLYSEMANTIC
from capalloc._capacity import capacity as _capacity
from capalloc._lib.validation import check_positive, readonly
from capalloc.training.config import TrainConfig

__all__ = [
    "TrainResult",
    "effective_capacity",
    "trained_labels",
    "polysemantic_summary",
]


def effective_capacity(W: Any, norm_tol: float = 1e-2) -> np.ndarray:
    r"""Capacities after dropping the columns a trained model has (almost) switched off.

    Columns with :math:`\lVert W_i\rVert^2 \le \text{norm\_tol} \cdot \max_j \lVert W_j\rVert^2`
    are set to zero (capacity 0) before :func:`capalloc.capacity` is taken, so
    that the slowly decaying remnants of ignored features, which training never
    drives exactly to zero, do not count as interference with the others.

    Parameters
    ----------
    W : (..., d, n) array_like
        Embeddings.
    norm_tol : float, default 1e-2
        Relative squared-norm tolerance, >= 0 (0 keeps every non-zero column).

    Returns
    -------
    C : (..., n) ndarray

    Raises
    ------
    ValueError
        ``norm_tol`` negative or not a finite number.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.training import effective_capacity
    >>> W = np.array([[1.0, 0.0, 0.05], [0.0, 1.0, 0.05]])
    >>> effective_capacity(W).round(3).tolist()
    [1.0, 1.0, 0.0]
    """
    W = np.asarray(W, dtype=float)
    norm_tol = check_positive(norm_tol, "norm_tol", strict=False)
    N = np.einsum("...kn,...kn->...n", W, W)
    keep = N > norm_tol * N.max(axis=-1, keepdims=True, initial=0.0)
    return _capacity(W * keep[..., None, :])


def trained_labels(W: Any, *, cap_tol: float = 0.05, norm_tol: float = 1e-2) -> np.ndarray:
    r"""Monosemantic / polysemantic / ignored labels for trained (noisy) embeddings.

    With :math:`C` the :func:`effective_capacity`, feature ``i`` is *ignored*
    when its squared norm is at most ``norm_tol`` times the largest or
    :math:`C_i \le \text{cap\_tol}`, *monosemantic* when
    :math:`C_i \ge 1 - \text{cap\_tol}`, and *polysemantic* otherwise.

    Parameters
    ----------
    W : (..., d, n) array_like
        Embeddings.
    cap_tol : float, default 0.05
        Capacity tolerance, in [0, 0.5).
    norm_tol : float, default 1e-2
        Relative squared-norm tolerance, >= 0.

    Returns
    -------
    labels : (..., n) ndarray of str

    Raises
    ------
    ValueError
        ``cap_tol`` outside [0, 0.5) or a bad ``norm_tol``.

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.training import trained_labels
    >>> W = np.array([[1.0, 0.0, 0.6, 0.001], [0.0, 1.0, -0.6, 0.0]])
    >>> trained_labels(W).tolist()
    ['polysemantic', 'polysemantic', 'polysemantic', 'ignored']
    >>> trained_labels(np.eye(2, 3)).tolist()
    ['monosemantic', 'monosemantic', 'ignored']
    """
    cap_tol, norm_tol, _ = check_tolerances(cap_tol, norm_tol, 0.0)
    C = effective_capacity(W, norm_tol)
    labels = np.full(C.shape, POLYSEMANTIC, dtype="<U12")
    labels[C >= 1 - cap_tol] = MONOSEMANTIC
    labels[C <= cap_tol] = IGNORED
    return labels


def check_tolerances(cap_tol: Any, norm_tol: Any, block_tol: Any) -> tuple[float, float, float]:
    """The labelling tolerances of a :class:`TrainResult`, checked (``ValueError`` naming one)."""
    cap = check_positive(cap_tol, "cap_tol", strict=False)
    if not cap < 0.5:
        raise ValueError(f"cap_tol must lie in [0, 0.5), got {cap_tol!r}")
    return (
        cap,
        check_positive(norm_tol, "norm_tol", strict=False),
        check_positive(block_tol, "block_tol", strict=False),
    )


def polysemantic_summary(labels: Any, capacity: Any) -> dict[str, np.ndarray]:
    r"""How polysemantic an allocation is, per instance (last axis: the features).

    Parameters
    ----------
    labels : (..., n) array_like of str
        Feature labels (:data:`capalloc.LABELS`).
    capacity : (..., n) array_like of float
        Capacities of the same features.

    Returns
    -------
    summary : dict of str -> (...) ndarray
        ``polysemantic_fraction``: the share of the non-ignored features that are
        polysemantic (0 when all are ignored); ``polysemantic_fraction_all``: the
        share of all ``n`` features; ``capacity_held_by_poly``: the share of
        :math:`\sum_i C_i` held by polysemantic features (0 when it is 0).

    Examples
    --------
    >>> from capalloc.training import polysemantic_summary
    >>> s = polysemantic_summary(["monosemantic", "polysemantic", "polysemantic", "ignored"],
    ...                          [1.0, 0.5, 0.5, 0.0])
    >>> {k: round(float(v), 4) for k, v in s.items()}
    {'polysemantic_fraction': 0.6667, 'polysemantic_fraction_all': 0.5, 'capacity_held_by_poly': 0.5}
    """
    labels = np.asarray(labels)
    C = np.asarray(capacity, dtype=float)
    poly = labels == POLYSEMANTIC
    kept = np.sum(labels != IGNORED, axis=-1)
    total = C.sum(-1)
    return {
        "polysemantic_fraction": np.where(kept > 0, poly.sum(-1) / np.maximum(kept, 1), 0.0),
        "polysemantic_fraction_all": poly.mean(-1),
        "capacity_held_by_poly": np.where(
            total > 0, (C * poly).sum(-1) / np.where(total > 0, total, 1.0), 0.0
        ),
    }


def _scalar_or_array(x: Any) -> Any:
    return float(x) if np.ndim(x) == 0 else readonly(np.asarray(x))


def _find_blocks(W: np.ndarray, labels: np.ndarray, tol: float) -> list[Any] | None:
    """Blocks of one ``(d, n)`` embedding from :mod:`capalloc.geometry`, or ``None`` without it.

    Ignored columns are zeroed. :func:`~capalloc.geometry.find_blocks` drops
    columns whose squared norm is at most ``tol`` times the largest; represented
    columns below that are scaled up to just above it, which leaves every cosine
    (hence block membership) unchanged, so each represented feature lies in
    exactly one block.
    """
    try:
        from capalloc.geometry import find_blocks
    except ImportError:
        return None
    kept = labels != IGNORED
    Wk = W * kept[None, :]
    N = np.einsum("kn,kn->n", Wk, Wk)
    floor = 2 * tol * N.max(initial=0.0)
    lift = np.where(kept & (N > 0) & (N < floor), np.sqrt(floor / np.where(N > 0, N, 1.0)), 1.0)
    return list(find_blocks(Wk * lift[None, :], tol))


@dataclass(frozen=True, repr=False, eq=False)
class TrainResult:
    r"""Outcome of a training run: ``train_quadratic`` or ``train_model``.

    Arrays are read-only. A batch of ``m`` instances (a batched problem, or the
    instances of ``train_model``) puts the instance axis first; an unbatched
    ``train_quadratic`` run drops it.

    Attributes
    ----------
    W : (d, n) or (m, d, n) ndarray
        Trained embedding (the best restart of each instance).
    bias : float or ndarray
        Output bias: the optimal one (exact training) or the learned one, ``(m,)``
        (``(m, n)`` for the ReLU autoencoder).
    loss : float or (m,) ndarray
        Final loss: the exact expected loss for ``train_quadratic``, the loss on a
        fresh batch of ``config.eval_batch`` samples for ``train_model``.
    loss_history : (T,) or (m, T) ndarray
        Loss per iteration of the best restart: the exact loss after each L-BFGS
        iteration and Newton step (exact training; shorter runs of a batch are
        padded with their final value) or the minibatch loss of each Adam step.
    restart_losses : (R,) or (m, R) ndarray
        Final loss of every restart, to measure how often descent ends in a
        spurious local minimum (``R = 1`` for ``train_model``).
    importance : (n,) or (m, n) ndarray
        Importances the model was trained on.
    method : str
        ``"exact"`` (L-BFGS-B on the expected loss) or ``"sampled"`` (Adam on samples).
    model : str
        Model name (``"quadratic"`` for ``train_quadratic``).
    nit : int
        Iterations: L-BFGS iterations plus Newton steps of the best restart
        (largest over a batch), or Adam steps.
    device : str
        Where the training ran (``"cpu"`` for exact training).
    message : str
        Optimiser message of the best restart (the first instance of a batch).
    elapsed : float
        Training wall time in seconds.
    config : TrainConfig
        The settings of the run.
    sparsity : (m,) ndarray or None
        Per-instance input sparsity of ``train_model`` (``None`` for
        ``train_quadratic``, whose inputs follow the problem's kurtosis).
    density : (m, n) ndarray or None
        Per-feature activation probabilities, when ``train_model`` was given them.
    hidden_bias : (m, d) ndarray or None
        The trained hidden bias of the ``"neuron"`` model, when it has one.
    cap_tol, norm_tol : float
        Tolerances of :attr:`labels` (see :func:`trained_labels`).
    block_tol : float
        Tolerance of :attr:`blocks` (see :func:`capalloc.geometry.find_blocks`).

    Notes
    -----
    Derived on first access: :attr:`capacity`, :attr:`effective_capacity`,
    :attr:`labels`, :attr:`polysemantic_fraction`,
    :attr:`polysemantic_fraction_all`, :attr:`capacity_held_by_poly`,
    :attr:`blocks`. The names of 0.1.0 keep working: ``history``
    (= ``loss_history``), ``capacities``, ``effective_capacities``, ``steps``
    (= ``nit``) and ``seed`` (= ``config.seed``); ``ModelRun`` is this class.

    Examples
    --------
    >>> import capalloc
    >>> from capalloc.training import train_quadratic
    >>> res = train_quadratic(capalloc.QuadraticProblem([1.0, 0.5, 0.1], d=1, kurtosis=9.0),
    ...                       restarts=1)
    >>> res.labels.tolist(), res.capacity.round(3).tolist()
    (['polysemantic', 'polysemantic', 'ignored'], [0.778, 0.222, 0.0])
    >>> float(res.polysemantic_fraction), res.loss_history.ndim, res.config.restarts
    (1.0, 1, 1)
    """

    W: np.ndarray
    bias: Any
    loss: Any
    loss_history: np.ndarray
    restart_losses: np.ndarray
    importance: np.ndarray
    method: str
    model: str
    nit: int
    device: str
    message: str
    elapsed: float
    config: TrainConfig
    sparsity: np.ndarray | None = None
    density: np.ndarray | None = None
    hidden_bias: np.ndarray | None = None
    cap_tol: float = 0.05
    norm_tol: float = 1e-2
    block_tol: float = 0.05

    def __post_init__(self) -> None:
        tolerances = check_tolerances(self.cap_tol, self.norm_tol, self.block_tol)
        for name, value in zip(("cap_tol", "norm_tol", "block_tol"), tolerances, strict=True):
            object.__setattr__(self, name, value)
        for name in ("W", "loss_history", "restart_losses", "importance"):
            object.__setattr__(self, name, readonly(np.asarray(getattr(self, name), dtype=float)))
        for name in ("bias", "loss"):
            object.__setattr__(self, name, _scalar_or_array(getattr(self, name)))
        for name in ("sparsity", "density", "hidden_bias"):
            if getattr(self, name) is not None:
                object.__setattr__(
                    self, name, readonly(np.asarray(getattr(self, name), dtype=float))
                )

    # ------------------------------------------------------------------ derived from W

    @cached_property
    def capacity(self) -> np.ndarray:
        """Capacities of the trained columns, :func:`capalloc.capacity` of ``W``."""
        return readonly(_capacity(self.W), copy=False)

    @cached_property
    def effective_capacity(self) -> np.ndarray:
        """:func:`effective_capacity` of ``W`` (remnants of switched-off columns dropped)."""
        return readonly(effective_capacity(self.W, self.norm_tol), copy=False)

    @cached_property
    def labels(self) -> np.ndarray:
        """:func:`trained_labels` of ``W`` (tolerances ``cap_tol``, ``norm_tol``)."""
        labels = trained_labels(self.W, cap_tol=self.cap_tol, norm_tol=self.norm_tol)
        return readonly(labels, copy=False)

    @cached_property
    def _summary(self) -> dict[str, Any]:
        summary = polysemantic_summary(self.labels, self.effective_capacity)
        return {name: _scalar_or_array(value) for name, value in summary.items()}

    @property
    def polysemantic_fraction(self) -> Any:
        """Share of the non-ignored features that are polysemantic (0 when all are ignored)."""
        return self._summary["polysemantic_fraction"]

    @property
    def polysemantic_fraction_all(self) -> Any:
        """Share of all ``n`` features that are polysemantic."""
        return self._summary["polysemantic_fraction_all"]

    @property
    def capacity_held_by_poly(self) -> Any:
        r"""Share of :math:`\sum_i C_i` (effective capacities) held by polysemantic features."""
        return self._summary["capacity_held_by_poly"]

    @cached_property
    def blocks(self) -> Any:
        """Blocks of :func:`capalloc.geometry.find_blocks` among the non-ignored features.

        A list of blocks, or for a batch a tuple with one list per instance; each
        non-ignored feature lies in exactly one block. ``None`` when
        :mod:`capalloc.geometry` is unavailable.
        """
        if self.W.ndim == 2:
            return _find_blocks(self.W, self.labels, self.block_tol)
        per = [
            _find_blocks(W, lab, self.block_tol) for W, lab in zip(self.W, self.labels, strict=True)
        ]
        return None if any(b is None for b in per) else tuple(per)

    def block_shapes(self) -> Any:
        """``(dim, number of features)`` of each block, per instance for a batch (``None``
        without :attr:`blocks`)."""
        blocks = self.blocks
        if blocks is None:
            return None

        def shapes(inst: list[Any]) -> list[tuple[int, int]]:
            return [(int(b.dim), len(b.features)) for b in inst]

        return shapes(blocks) if self.W.ndim == 2 else [shapes(inst) for inst in blocks]

    @property
    def instances(self) -> int:
        """Number of instances ``m`` (1 for an unbatched run)."""
        return int(self.W.shape[0]) if self.W.ndim == 3 else 1

    # ------------------------------------------------------------------ names of 0.1.0

    @property
    def history(self) -> np.ndarray:
        """Alias of :attr:`loss_history` (the name of 0.1.0's ``TrainResult``)."""
        return self.loss_history

    @property
    def capacities(self) -> np.ndarray:
        """Alias of :attr:`capacity` (the name of 0.1.0's ``ModelRun``)."""
        return self.capacity

    @property
    def effective_capacities(self) -> np.ndarray:
        """Alias of :attr:`effective_capacity` (the name of 0.1.0's ``ModelRun``)."""
        return self.effective_capacity

    @property
    def steps(self) -> int:
        """Alias of :attr:`nit` (the name of 0.1.0's ``ModelRun``)."""
        return self.nit

    @property
    def seed(self) -> int:
        """The seed of the run, ``config.seed``."""
        return self.config.seed

    def __repr__(self) -> str:
        loss = np.asarray(self.loss)
        loss_txt = f"{float(loss):.6g}" if loss.ndim == 0 else np.array2string(loss, precision=4)
        return (
            f"TrainResult(method={self.method!r}, W.shape={self.W.shape}, model={self.model!r}, "
            f"loss={loss_txt}, restarts={self.restart_losses.shape[-1]}, nit={self.nit}, "
            f"device={self.device!r})"
        )
