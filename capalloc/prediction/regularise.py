r"""A differentiable capacity penalty and the loss-versus-monosemanticity frontier.

The penalty of an embedding ``W`` (``(..., d, n)``, a torch tensor) is

.. math::

    P(W) = \sum_i C_i (1 - C_i), \qquad C_i = \frac{\lVert W_i\rVert^4}{\sum_j (W_i\cdot W_j)^2},

built on :func:`capalloc.capacity` (which accepts torch tensors and is differentiable);
it vanishes exactly when every feature is monosemantic (:math:`C = 1`) or ignored
(:math:`C = 0`). :func:`frontier` trains the model on :math:`L + \lambda P` for several
strengths :math:`\lambda` and reports the unpenalised loss and the polysemantic fraction;
:func:`interventions` sets it against Jermyn et al.'s cheaper interventions, a negative
initial bias and a wider hidden layer, measured the same way.

Examples
--------
>>> import torch
>>> from capalloc.prediction.regularise import capacity_penalty
>>> W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])  # a pair and a column
>>> float(capacity_penalty(W))
0.5
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from capalloc._capacity import IGNORED, capacity
from capalloc._lib.validation import check_positive, short

__all__ = [
    "capacity_penalty",
    "frontier",
    "interventions",
    "default_widths",
    "DEFAULT_STRENGTHS",
    "DEFAULT_BIASES",
]

#: Penalty strengths of :func:`frontier` (0: unconstrained training).
DEFAULT_STRENGTHS = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3)
#: Initial biases of :func:`interventions` (0: the unconstrained baseline).
DEFAULT_BIASES = (0.0, -0.1, -0.2, -0.3, -0.5, -1.0)


def capacity_penalty(W: Any) -> Any:
    r""":math:`\sum_i C_i (1 - C_i)` over the last axis (features), per instance.

    Parameters
    ----------
    W : (..., d, n) torch.Tensor or array_like

    Returns
    -------
    (...) tensor or ndarray
    """
    C = capacity(W)
    return (C * (1 - C)).sum(-1)


def _finite(values: Sequence[float], name: str, *, non_negative: bool = False) -> list[float]:
    """``values`` as floats, each finite (and ``>= 0`` when ``non_negative``)."""
    try:
        items = list(values)
        out = [float(x) for x in items]
    except (TypeError, ValueError):
        items, out = [True], []
    if any(isinstance(x, bool) for x in items) or any(
        not np.isfinite(x) or (non_negative and x < 0) for x in out
    ):
        kind = "non-negative numbers" if non_negative else "finite numbers"
        raise ValueError(f"{name} must be {kind}, got {short(values)}")
    return out


def _train(
    model: str,
    *,
    n: int,
    d: int,
    sparsity: float,
    seeds: int,
    steps: int,
    seed: int,
    strengths: Sequence[float] | None = None,
    biases: Sequence[float] | None = None,
    fixed_bias: bool = False,
) -> list[dict[str, float]]:
    r"""Train ``seeds`` instances per setting in one batched model; the means per setting.

    The settings are the penalty ``strengths`` (the loss is :math:`L + \lambda P`), or the
    initial ``biases`` (the neuron model's hidden bias :math:`c`, every other model's
    output bias :math:`b`, set to the value at initialisation; kept there when
    ``fixed_bias``), or one plain setting when both are ``None``. Each mean is over the
    seeds: the unpenalised loss on a fresh batch of ``eval_batch`` samples, the
    polysemantic fraction (:func:`capalloc.training.trained_labels`), the penalty
    :math:`P`, the total capacity :math:`\sum_i C_i` (effective capacities), the number of
    represented (non-ignored) features and, for the autoencoders, of *dead* outputs
    (:math:`\hat x_i = 0` on the whole batch).
    """
    import torch

    from capalloc.training import TrainConfig, polysemantic_summary, trained_labels
    from capalloc.training.result import effective_capacity
    from capalloc.training.torch_models import Penalised, build_model, default_importance, fit

    seeds = check_positive(seeds, "seeds", integer=True)
    n = check_positive(n, "n", integer=True)
    values = strengths if strengths is not None else biases
    settings = 1 if values is None else len(values)
    cfg = TrainConfig(steps=steps, seed=seed)
    m = settings * seeds

    gen = torch.Generator().manual_seed(seed)
    options = {"hidden_bias": 0.0} if biases is not None and model == "neuron" else {}
    inner = build_model(
        model, default_importance(n), d, sparsity, instances=m, generator=gen, **options
    )
    trained: Any = inner
    if biases is not None:
        bias: Any = inner.c if model == "neuron" else inner.b
        start = torch.tensor(np.repeat(biases, seeds), dtype=bias.dtype)
        with torch.no_grad():
            bias.copy_(start.reshape(-1, *[1] * (bias.ndim - 1)).expand_as(bias))
        bias.requires_grad_(not fixed_bias)
    if strengths is not None:
        weights = torch.tensor(np.repeat(strengths, seeds), dtype=torch.float32)
        trained = Penalised(inner, lambda model, _: weights * capacity_penalty(model.W))

    fit(trained, cfg, generator=gen, desc="frontier")
    with torch.no_grad():
        x = inner.sample(cfg.eval_batch, gen)
        loss = inner.loss(x).numpy().astype(float)
        pen = capacity_penalty(inner.W).numpy().astype(float)
        out = inner(x)
        dead = (out <= 0).all(1).sum(-1).numpy().astype(float) if out.shape == x.shape else None
    W = inner.W.detach().numpy().astype(float)
    labels = trained_labels(W)
    C = effective_capacity(W)
    poly = np.asarray(polysemantic_summary(labels, C)["polysemantic_fraction"], dtype=float)
    total = C.sum(-1)
    represented = (labels != IGNORED).sum(-1).astype(float)
    means = []
    for k in range(settings):
        sl = slice(k * seeds, (k + 1) * seeds)
        row = {
            "loss": round(float(loss[sl].mean()), 6),
            "polysemantic_fraction": round(float(poly[sl].mean()), 4),
            "penalty": round(float(pen[sl].mean()), 4),
            "total_capacity": round(float(total[sl].mean()), 4),
            "represented": round(float(represented[sl].mean()), 2),
        }
        if dead is not None:
            row["dead_outputs"] = round(float(dead[sl].mean()), 2)
        means.append(row)
    return means


def frontier(
    model: str = "relu-ae",
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    n: int = 20,
    d: int = 10,
    sparsity: float = 0.8,
    seeds: int = 2,
    steps: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Train ``model`` with the penalty at each strength; one row per strength.

    All strengths and seeds train side by side as the instances of one batched model.

    Parameters
    ----------
    model : str, default "relu-ae"
        A registered model (:func:`capalloc.training.torch_models.available_models`).
    strengths : sequence of float >= 0, default :data:`DEFAULT_STRENGTHS`
        Penalty strengths :math:`\\lambda`.
    n, d : int, default 20, 10
        Features (importances :math:`0.9^i`) and embedding dimension.
    sparsity : float in [0, 1), default 0.8
    seeds : int, default 2
        Instances per strength.
    steps : int, default 2000
        Adam steps (the schedule of :class:`~capalloc.training.TrainConfig`).
    seed : int, default 0
        Seeds the initial weights and every batch.

    Returns
    -------
    rows : list of dict
        ``model``, ``sparsity``, ``strength``; ``loss`` (unpenalised, mean over seeds on a
        fresh batch), ``polysemantic_fraction`` (mean over seeds,
        :func:`capalloc.training.trained_labels`), ``penalty`` (mean :math:`P` at the
        end), ``total_capacity`` (mean :math:`\\sum_i C_i`), ``represented`` (mean number
        of non-ignored features) and, for the autoencoders, ``dead_outputs`` (mean number
        of outputs that are zero on the whole evaluation batch).

    Raises
    ------
    ValueError
        A strength that is negative or not finite, or another bad setting (the message
        names it). Needs torch.

    Examples
    --------
    >>> from capalloc.prediction.regularise import frontier
    >>> free, forced = frontier(strengths=(0.0, 0.3), n=6, d=3, seeds=1, steps=300)
    >>> forced["polysemantic_fraction"] < free["polysemantic_fraction"]
    True
    >>> forced["loss"] > free["loss"]
    True
    """
    lam = _finite(strengths, "strengths", non_negative=True)
    if not lam:
        raise ValueError(f"strengths must be non-negative numbers, got {short(strengths)}")
    means = _train(
        model, n=n, d=d, sparsity=sparsity, seeds=seeds, steps=steps, seed=seed, strengths=lam
    )
    return [
        {"model": model, "sparsity": float(sparsity), "strength": x, **row}
        for x, row in zip(lam, means, strict=True)
    ]


def default_widths(n: int, d: int) -> tuple[int, ...]:
    """The widths :math:`d'` of :func:`interventions`: ``d``, two between and ``n``.

    Examples
    --------
    >>> from capalloc.prediction.regularise import default_widths
    >>> default_widths(20, 10)
    (10, 12, 15, 20)
    >>> default_widths(4, 4)
    (4,)
    """
    n = check_positive(n, "n", integer=True)
    d = check_positive(d, "d", integer=True)
    top = max(n, d)
    return tuple(sorted({d, d + (top - d) // 5, d + (top - d) // 2, top}))


def interventions(
    model: str = "relu-ae",
    *,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    biases: Sequence[float] = DEFAULT_BIASES,
    widths: Sequence[int] | None = None,
    fixed_bias: bool = False,
    n: int = 20,
    d: int = 10,
    sparsity: float = 0.8,
    seeds: int = 2,
    steps: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    r"""The capacity penalty against Jermyn et al.'s interventions for monosemanticity.

    Three groups of runs of the same model family, each measured as in :func:`frontier`
    (the same training and evaluation code):

    ``"penalty"``
        The loss :math:`L + \lambda P` at each strength (the rows of :func:`frontier`).
    ``"bias"``
        Plain training from a bias initialised at each value (the neuron model's hidden
        bias :math:`c`; the output bias :math:`b` of every other model, e.g. the
        autoencoder's :math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`); trained from there,
        or held there with ``fixed_bias``.
    ``"width"``
        Plain training with a wider embedding, :math:`d' \ge d`. More dimensions are more
        capacity: the loss falls for that reason alone (``total_capacity`` shows it), so
        this group buys monosemanticity with parameters, not with loss.

    Parameters
    ----------
    model : str, default "relu-ae"
        A registered model.
    strengths : sequence of float >= 0, default :data:`DEFAULT_STRENGTHS`
        Penalty strengths; empty skips the group.
    biases : sequence of float, default :data:`DEFAULT_BIASES`
        Initial biases (0 is the baseline); empty skips the group.
    widths : sequence of int >= 1, optional
        Widths :math:`d'`; default :func:`default_widths` (``d``, 12, 15, 20 for
        ``n = 20``, ``d = 10``); empty skips the group.
    fixed_bias : bool, default False
        Hold the bias at its initial value instead of training it.
    n, d, sparsity, seeds, steps, seed
        As in :func:`frontier` (importances :math:`0.9^i`).

    Returns
    -------
    rows : list of dict
        ``model``, ``sparsity``, ``intervention`` (``"penalty"``, ``"bias"`` or
        ``"width"``), ``value`` (strength, initial bias or width), ``width`` (the
        embedding dimension of the run) and the measures of :func:`frontier`: ``loss``
        (unpenalised, mean over seeds on a fresh batch), ``polysemantic_fraction``,
        ``penalty``, ``total_capacity``, ``represented`` and, for the autoencoders,
        ``dead_outputs``.

    Raises
    ------
    ValueError
        A bad ``strengths``, ``biases``, ``widths``, ``fixed_bias`` or other setting (the
        message names it), or all three groups empty. Needs torch.

    References
    ----------
    .. [1] A. Jermyn, N. Schiefer and E. Hubinger, "Engineering Monosemanticity in Toy
       Models", arXiv:2211.09169 (2022).

    Examples
    --------
    >>> from capalloc.prediction.regularise import interventions
    >>> rows = interventions(strengths=(0.0,), biases=(-5.0,), widths=(3, 6),
    ...                      n=6, d=3, seeds=1, steps=300)
    >>> [(r["intervention"], r["value"]) for r in rows]
    [('penalty', 0.0), ('bias', -5.0), ('width', 3), ('width', 6)]
    >>> rows[1]["dead_outputs"]  # a bias of -5 switches every output off for good
    6.0
    >>> rows[3]["polysemantic_fraction"], rows[3]["loss"] < rows[2]["loss"]
    (0.0, True)
    """
    lam = _finite(strengths, "strengths", non_negative=True)
    b = _finite(biases, "biases")
    if not isinstance(fixed_bias, bool):
        raise ValueError(f"fixed_bias must be True or False, got {short(fixed_bias)}")
    if widths is None:
        wid = list(default_widths(n, d))
    else:
        try:
            wid = list(widths)
        except TypeError:
            wid = [0]
        if any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in wid):
            raise ValueError(f"widths must be positive integers, got {short(widths)}")
        wid = [int(w) for w in wid]
    if not (lam or b or wid):
        raise ValueError("strengths, biases and widths are all empty: nothing to compare")
    common: dict[str, Any] = {
        "n": n,
        "sparsity": sparsity,
        "seeds": seeds,
        "steps": steps,
        "seed": seed,
    }
    rows: list[dict[str, Any]] = []

    def add(kind: str, values: Sequence[Any], width: int, means: list[dict[str, float]]) -> None:
        for value, row in zip(values, means, strict=True):
            rows.append(
                {
                    "model": model,
                    "sparsity": float(sparsity),
                    "intervention": kind,
                    "value": value,
                    "width": width,
                    **row,
                }
            )

    if lam:
        add("penalty", lam, d, _train(model, d=d, strengths=lam, **common))
    if b:
        add("bias", b, d, _train(model, d=d, biases=b, fixed_bias=fixed_bias, **common))
    for w in wid:
        add("width", [w], w, _train(model, d=w, **common))
    return rows
