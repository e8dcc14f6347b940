r"""Train the quadratic model directly, to compare trained embeddings with the solver.

Two methods minimise the quadratic model's loss over the embedding ``W``:

``"exact"``
    L-BFGS-B on the exact expected loss at the optimal bias,

    .. math::

        L(W) = \sum_i (K_i - 1)(v_i - N_i)^2 + 2 \sum_{i \ne j} (W_i \cdot W_j)^2,

    with its analytic gradient (:func:`capalloc.quadratic_loss_grad`), each
    evaluation costing :math:`O(n d^2)`, finished by a few Newton steps on
    Hessian-vector products derived from that gradient; several random
    restarts, the best kept.
``"sampled"``
    Minibatch Adam on samples of the input law, the way a network is trained:
    the quadratic toy model of :mod:`capalloc.training.torch_models` trained by
    its one loop, :func:`~capalloc.training.torch_models.fit` (needs torch).
    All instances of a batched problem and all restarts train together as one
    tensor program, on CPU or GPU.

Both report the exact expected loss of what they found, so training can be
scored against :func:`capalloc.solve`. Internally each instance is rescaled to
:math:`\max_i v_i = 1` (the loss is homogeneous: :math:`v \to s v` maps
:math:`W \to \sqrt s W`, :math:`L \to s^2 L`), which makes the tolerances and
the learning rate scale free. The settings of a run are one
:class:`~capalloc.training.TrainConfig`; :func:`default_config` gives each
method's defaults.

References
----------
.. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892, section on the quadratic model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capalloc._lib.registry import Registry
from capalloc._lib.validation import check_budget, check_positive, short
from capalloc.allocation.problems import QuadraticProblem
from capalloc.distributions import InputLaw, PerFeature, from_kurtosis
from capalloc.quadratic.model import quadratic_loss, quadratic_loss_grad
from capalloc.training.config import TrainConfig
from capalloc.training.result import TrainResult

__all__ = ["TrainResult", "default_config", "train_quadratic", "train_methods"]


# ---------------------------------------------------------------------------
# Method registry: each method with its default settings
# ---------------------------------------------------------------------------


#: What a method returns: the fields of its :class:`TrainResult` that depend on the method.
_Fields = dict[str, Any]


@dataclass(frozen=True)
class _Method:
    run: Callable[..., _Fields]
    defaults: TrainConfig


_METHODS: Registry[_Method] = Registry("method")


def _register(name: str, defaults: TrainConfig) -> Callable[[Callable[..., _Fields]], Any]:
    def add(run: Callable[..., _Fields]) -> Callable[..., _Fields]:
        _METHODS.add(name, _Method(run, defaults))
        return run

    return add


def train_methods() -> list[str]:
    """Names of the training methods accepted by :func:`train_quadratic`.

    Examples
    --------
    >>> from capalloc.training.train import train_methods
    >>> train_methods()
    ['exact', 'sampled']
    """
    return _METHODS.names()


def default_config(method: str) -> TrainConfig:
    """The settings :func:`train_quadratic` uses for ``method`` unless told otherwise.

    ``"exact"``: at most 100000 L-BFGS-B iterations, 4 restarts, ``tol = 1e-12``,
    Newton polish. ``"sampled"``: 4000 Adam steps of 2048 samples, learning
    rate 0.01 with a 2 % warm-up and cosine decay to zero, one restart, torch's
    own thread setting.

    Raises
    ------
    ValueError
        An unknown ``method`` (the message lists the valid ones).

    Examples
    --------
    >>> from capalloc.training import default_config
    >>> default_config("sampled").replace(lr=0.03).steps
    4000
    >>> default_config("exact").restarts
    4
    """
    return _METHODS[method].defaults


def train_quadratic(
    problem: QuadraticProblem,
    method: str = "exact",
    *,
    config: TrainConfig | None = None,
    d: int | None = None,
    law: Any = None,
    init_scale: float = 0.5,
    restarts: int | None = None,
    seed: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    device: Any = None,
    progress: bool | None = None,
    tol: float | None = None,
    polish: bool | None = None,
) -> TrainResult:
    r"""Train the quadratic model's embedding by gradient descent.

    .. math::

        \min_{W \in \mathbb R^{d \times n},\, b}\;
        \mathbb E\Big[\big(\lVert W x\rVert^2 + b - \textstyle\sum_i v_i x_i^2\big)^2\Big]

    Parameters
    ----------
    problem : QuadraticProblem
        Importances ``(n,)`` or a batch ``(m, n)``, budget ``d`` and kurtosis.
    method : {"exact", "sampled"}, default "exact"
        ``"exact"``: L-BFGS-B on the exact expected loss (numpy, float64).
        ``"sampled"``: minibatch Adam on samples of the input law (torch).
    config : TrainConfig, optional
        All settings of the run; default :func:`default_config` of ``method``.
        ``"exact"`` reads ``steps`` (the cap on L-BFGS-B iterations), ``restarts``,
        ``seed``, ``tol``, ``polish`` and ``progress``; ``"sampled"`` reads
        ``steps``, ``batch_size``, ``lr``, ``lr_final``, ``warmup``, ``restarts``,
        ``seed``, ``device``, ``dtype``, ``num_threads`` and ``progress``.
    d : int, optional
        Width of ``W``; default ``problem.d``. Must be ``>= 1``.
    law : InputLaw or sequence of InputLaw, optional
        Input law of ``"sampled"`` training: one law for all instances (a
        :class:`~capalloc.distributions.PerFeature` law gives one per feature)
        or one per instance of a batch. Its kurtosis must equal
        ``problem.kurtosis``. Default: :func:`~capalloc.distributions.from_kurtosis`
        of each :math:`K_i` (Gaussian at 3, otherwise the three-point law).
    init_scale : float, default 0.5
        Initial entries are :math:`\mathcal N(0, \sigma^2)` with
        :math:`d\sigma^2 = \text{init\_scale}^2 \cdot \overline{v}/\max v`, so
        initial squared column norms are about ``init_scale**2`` times the mean
        rescaled importance.
    restarts, seed, steps, lr, batch_size, device, progress, tol, polish : optional
        The keywords of 0.1.0: each replaces that field of ``config`` (see
        :class:`~capalloc.training.TrainConfig`). ``restarts``: random
        initialisations per instance, the one of lowest exact loss kept.
        ``polish``: after L-BFGS-B take up to 4 Newton steps (MINRES on
        Hessian-vector products), each accepted only if it shrinks the gradient.
        L-BFGS-B stops when the loss no longer decreases in floating point,
        which leaves weakly curved directions (the angle between a monosemantic
        feature and a polysemantic one of small norm) accurate to only about
        ``1e-6``; the Newton steps take capacities to about ``1e-12``.

    Returns
    -------
    TrainResult
        With ``model="quadratic"``, ``method`` as given and the exact expected
        ``loss`` of the best restart.

    Raises
    ------
    TypeError
        ``problem`` is not a :class:`~capalloc.QuadraticProblem`, or ``config``
        not a :class:`~capalloc.training.TrainConfig`.
    ValueError
        Bad ``method``, ``lr``, ``steps``, ``batch_size``, ``restarts``, ``tol``,
        ``seed``, ``d``, ``device`` or ``law``, or a problem without features.
    ImportError
        ``method="sampled"`` without torch.

    Notes
    -----
    For :math:`K > 3` descent from random starts reaches the solver's optimum:
    the trained capacities agree with :func:`capalloc.solve` and ``W`` is
    block-semi-orthogonal (see :mod:`capalloc.geometry`). For :math:`K < 3`
    some restarts end in spurious minima (a wrong subset of monosemantic
    features); ``restart_losses`` records every restart.

    ``"exact"`` costs :math:`O(n d^2)` per iteration and needs a few hundred
    iterations: ``n = 1000, d = 100`` converges (capacities to ~1e-12) in a few
    seconds on one CPU core. ``"sampled"`` needs many more samples as ``n``
    grows (the target's variance grows with ``n``); it is the way a network
    would be trained, not a way to find the optimum.

    References
    ----------
    .. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
       arXiv:2210.01892.

    Examples
    --------
    >>> import numpy as np
    >>> import capalloc
    >>> from capalloc.training import default_config, train_quadratic
    >>> problem = capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    >>> res = train_quadratic(problem, config=default_config("exact").replace(restarts=2))
    >>> res.capacity.round(4).tolist()
    [1.0, 0.7619, 0.2381, 0.0]
    >>> bool(abs(res.loss - capalloc.solve(problem).loss) < 1e-9)
    True
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"problem must be a QuadraticProblem, got {short(problem)}")
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method must be one of {train_methods()}, got {method!r}")
    entry = _METHODS[method]
    cfg = TrainConfig.resolve(
        config,
        entry.defaults,
        restarts=restarts,
        seed=seed,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        device=device,
        progress=progress,
        tol=tol,
        polish=polish,
    )
    if problem.n == 0:
        raise ValueError(f"problem must have at least one feature, got {problem!r}")
    width = problem.d if d is None else check_budget(d, "d")
    if width < 1:
        raise ValueError(f"d must be >= 1 to train an embedding, got {width!r}")
    init_scale = check_positive(init_scale, "init_scale")
    if law is not None and method != "sampled":
        raise ValueError(
            f"law is used by method='sampled' only, got law={short(law)} with method={method!r}"
        )
    start = time.perf_counter()
    fields: _Fields = entry.run(problem, d=width, config=cfg, law=law, init_scale=init_scale)
    if not problem.batched:
        fields = {k: (x[0] if isinstance(x, np.ndarray) else x) for k, x in fields.items()}
    return TrainResult(
        importance=problem.importance,
        method=method,
        model="quadratic",
        elapsed=time.perf_counter() - start,
        config=cfg,
        **fields,
    )


def _rows(problem: QuadraticProblem) -> tuple[np.ndarray, np.ndarray]:
    """Importance and kurtosis as ``(m, n)`` arrays."""
    v = np.atleast_2d(problem.importance)
    K = np.broadcast_to(problem.kurtosis, problem.importance.shape)
    return v, np.atleast_2d(K)


def _scales(v: np.ndarray) -> np.ndarray:
    """Per-row rescaling ``max_i v_i`` (1 for a row of zeros)."""
    s = v.max(axis=-1)
    return np.where(s > 0, s, 1.0)


def _initial(
    rng: np.random.Generator, vn: np.ndarray, d: int, init_scale: float, shape: tuple[int, ...] = ()
) -> np.ndarray:
    """Random ``shape + (d, n)`` start for rescaled importances ``vn`` (``(n,)`` or ``(m, n)``)."""
    n = vn.shape[-1]
    mean = np.mean(vn, axis=-1) if n else np.zeros(vn.shape[:-1])
    sigma = init_scale * np.sqrt(np.maximum(mean, 1e-3) / d)
    W = rng.standard_normal(shape + vn.shape[:-1] + (d, n))
    return W * np.asarray(sigma)[..., None, None]


def _progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ---------------------------------------------------------------------------
# "exact": L-BFGS-B on the exact expected loss
# ---------------------------------------------------------------------------


_NEWTON_STEPS = 4  # at most this many polishing steps after L-BFGS-B
_NEWTON_KRYLOV = 100  # MINRES iterations per polishing step


def _hessp(W: np.ndarray, v: np.ndarray, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    r"""Hessian of the exact loss (optimal bias) at ``W`` applied to ``V``, from gradients only.

    The loss is a quartic polynomial in ``W``, so along the line :math:`W + tV`
    its gradient :func:`~capalloc.quadratic_loss_grad` is a cubic polynomial
    :math:`g(t) = g_0 + t\,HV + t^2 c_2 + t^3 c_3`, and the central difference
    :math:`(g(h) - g(-h)) / 2h = HV + h^2 c_3` is exact once :math:`c_3` is
    removed. The importances enter the gradient only through its linear term
    :math:`-4 (K_i - 1) v_i W_i`, so :math:`c_3` is the gradient at ``V`` with
    importances 0. One batched gradient call at the three points;
    :math:`h = \lVert W\rVert / (2 \lVert V\rVert)` keeps the rounding error to a
    few ulps of :math:`\lVert HV\rVert`. Cost :math:`O(n d^2)`.
    """
    size = float(np.linalg.norm(V))
    if size == 0.0:
        return np.zeros_like(W)
    h = 0.5 * max(float(np.linalg.norm(W)), 1.0) / size
    points = np.stack([W + h * V, W - h * V, V])
    importance = np.stack([v, v, np.zeros_like(v)])
    _, (plus, minus, cubic) = quadratic_loss_grad(points, importance, K)
    return (plus - minus) / (2 * h) - (h * h) * cubic


def _polish(
    W: np.ndarray, v: np.ndarray, K: np.ndarray, gtol: float
) -> tuple[np.ndarray, list[float]]:
    """Newton steps (MINRES on Hessian-vector products) accepted while the gradient shrinks.

    L-BFGS-B stops once the loss stops decreasing in floating point, which
    leaves directions of small curvature (e.g. the angle between a
    monosemantic feature and a polysemantic feature of small norm) resolved
    only to about ``sqrt(eps)``. Newton steps judged by the gradient, which
    keeps its accuracy there, take capacities and angles to ~1e-12.
    """
    from scipy.sparse.linalg import LinearOperator, minres

    d, n = W.shape
    loss, grad = quadratic_loss_grad(W, v, K)
    size = float(np.abs(grad).max(initial=0.0))
    losses: list[float] = []
    for _ in range(_NEWTON_STEPS):
        if size <= gtol:
            break
        op = LinearOperator(
            (d * n, d * n),
            dtype=float,
            matvec=lambda x, W=W: _hessp(W, v, K, x.reshape(d, n)).ravel(),
        )
        step, _info = minres(op, -grad.ravel(), maxiter=_NEWTON_KRYLOV, rtol=1e-12)
        W_new = W + step.reshape(d, n)
        loss_new, grad_new = quadratic_loss_grad(W_new, v, K)
        size_new = float(np.abs(grad_new).max(initial=0.0))
        if not (np.isfinite(loss_new) and size_new < size and loss_new <= loss + 1e-12 * abs(loss)):
            break
        W, loss, grad, size = W_new, loss_new, grad_new, size_new
        losses.append(loss)
    return W, losses


def _lbfgs(
    vn: np.ndarray, K: np.ndarray, W0: np.ndarray, maxiter: int, gtol: float, polish: bool = True
) -> tuple[np.ndarray, list[float], int, str]:
    from scipy.optimize import minimize

    d, n = W0.shape
    history: list[float] = []

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = quadratic_loss_grad(w.reshape(d, n), vn, K)
        return loss, grad.ravel()

    def callback(intermediate_result: Any) -> None:
        history.append(float(intermediate_result.fun))

    res = minimize(
        fun,
        W0.ravel(),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={
            "maxiter": maxiter,
            "maxfun": 2 * maxiter + 100,
            "ftol": 1e-15,
            "gtol": gtol,
            "maxcor": 10,
        },
    )
    W = res.x.reshape(d, n)
    polished: list[float] = []
    if polish:
        W, polished = _polish(W, vn, K, gtol)
    message = str(res.message)
    if polished:
        message += f"; then {len(polished)} Newton step(s)"
    return W, history + polished, int(res.nit) + len(polished), message


@_register("exact", TrainConfig(steps=100_000, restarts=4))
def _train_exact(
    problem: QuadraticProblem, *, d: int, config: TrainConfig, init_scale: float, **_: Any
) -> _Fields:
    v, K = _rows(problem)
    m, n = v.shape
    scale = _scales(v)
    rng = np.random.default_rng(config.seed)
    losses = np.zeros((m, config.restarts))
    best: dict[int, tuple[float, np.ndarray, list[float], int, str]] = {}
    jobs = [(row, r) for row in range(m) for r in range(config.restarts)]
    for row, r in _progress(jobs, config.progress, desc="exact training", unit="restart"):
        s = float(scale[row])
        vn = v[row] / s
        W0 = _initial(rng, vn, d, init_scale)
        Wn, hist, nit, message = _lbfgs(vn, K[row], W0, config.steps, config.tol, config.polish)
        W = Wn * math.sqrt(s)
        loss = quadratic_loss(W, v[row], K[row])
        losses[row, r] = loss
        if row not in best or loss < best[row][0]:
            best[row] = (loss, W, [h * s * s for h in hist], nit, message)
    Ws = np.stack([best[row][1] for row in range(m)])
    histories = [np.asarray(best[row][2] or [losses[row].min()], dtype=float) for row in range(m)]
    length = max(h.size for h in histories)
    return {
        "W": Ws,
        "bias": np.sum(v - np.einsum("mkn,mkn->mn", Ws, Ws), axis=-1),
        "loss": quadratic_loss(Ws, v, K),
        "loss_history": np.stack([np.pad(h, (0, length - h.size), mode="edge") for h in histories]),
        "restart_losses": losses,
        "nit": max(best[row][3] for row in range(m)),
        "device": "cpu",
        "message": best[0][4],
    }


# ---------------------------------------------------------------------------
# "sampled": minibatch Adam in torch, through the one trainer
# ---------------------------------------------------------------------------


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # torch missing, or blocked with sys.modules["torch"] = None
        raise ImportError(
            "method='sampled' needs torch, which is not installed: pip install capalloc[torch]"
        ) from exc
    return torch


def _feature_laws(problem: QuadraticProblem, law: Any) -> list[InputLaw]:
    """One law per (instance, feature), flattened row-major, checked against the kurtosis."""
    v, K = _rows(problem)
    m, n = v.shape
    if law is None:
        cache: dict[float, InputLaw] = {}
        return [cache.setdefault(k, from_kurtosis(k)) for k in K.ravel().tolist()]
    if isinstance(law, InputLaw):
        per_instance: Sequence[Any] = [law] * m
    elif isinstance(law, Sequence) and len(law) == m and all(isinstance(x, InputLaw) for x in law):
        per_instance = list(law)
    else:
        raise ValueError(
            f"law must be an InputLaw or a sequence of {m} InputLaw (one per "
            f"instance), got {short(law)}"
        )
    laws: list[InputLaw] = []
    for one in per_instance:
        if isinstance(one, PerFeature):
            if len(one.laws) != n:
                raise ValueError(
                    f"law has {len(one.laws)} per-feature laws, the problem has n={n} features"
                )
            laws.extend(one.laws)
        else:
            laws.extend([one] * n)
    Klaw = np.array([x.kurtosis for x in laws], dtype=float).reshape(m, n)
    if not np.allclose(Klaw, K, rtol=1e-9, atol=0.0):
        raise ValueError(
            f"law kurtosis {short(Klaw if m > 1 else Klaw[0])} does not match "
            f"problem.kurtosis {short(K if m > 1 else K[0])}"
        )
    return laws


@_register(
    "sampled",
    TrainConfig(steps=4000, batch_size=2048, lr_final=0.0, warmup=0.02, num_threads=None),
)
def _train_sampled(
    problem: QuadraticProblem, *, d: int, config: TrainConfig, law: Any, init_scale: float
) -> _Fields:
    laws = _feature_laws(problem, law)  # checked before torch is needed
    torch = _import_torch()
    from capalloc.training import torch_models as tm

    dev = tm.resolve_device(config.device)
    dtype = getattr(torch, config.dtype)
    v, K = _rows(problem)
    m, n = v.shape
    R = config.restarts
    scale = _scales(v)
    vn = v / scale[:, None]

    # R restarts of m instances: R * m instances of the quadratic toy model
    W0 = _initial(np.random.default_rng(config.seed), vn, d, init_scale, shape=(R,))  # (R, m, d, n)
    b0 = np.sum(vn - np.einsum("rmkn,rmkn->rmn", W0, W0), axis=-1)  # the optimal bias at W0
    model = tm.QuadraticModel(
        torch.tensor(np.broadcast_to(vn, (R, m, n)).reshape(R * m, n), dtype=dtype, device=dev),
        torch.zeros(R * m, dtype=dtype, device=dev),
        d,
        generator=torch.Generator(device=dev),  # its random start is replaced below
    )
    with torch.no_grad():
        model.W.copy_(torch.as_tensor(W0.reshape(R * m, d, n)))
        model.b.copy_(torch.as_tensor(b0.reshape(R * m)))
    sampler = tm.LawSampler([laws[i * n : (i + 1) * n] for i in range(m)])

    def sample(batch: int, gen: Any) -> Any:
        """``(R m, B, n)``: one draw per instance, shared by its restarts."""
        x = sampler(batch, gen, dev, dtype)  # (m, B, n)
        return x.unsqueeze(0).expand(R, m, batch, n).reshape(R * m, batch, n)

    gen = torch.Generator(device=dev)
    gen.manual_seed(config.seed)
    history = tm.fit(model, config, generator=gen, sample=sample, desc="sampled training")

    W_all = model.W.detach().to("cpu", torch.float64).numpy().reshape(R, m, d, n)
    W_all = W_all * np.sqrt(scale)[None, :, None, None]
    b_all = model.b.detach().to("cpu", torch.float64).numpy().reshape(R, m) * scale[None, :]
    hist = history.reshape(R, m, -1) * (scale**2)[None, :, None]
    losses = np.stack(
        [quadratic_loss(W_all[r], v, K, bias=b_all[r]) for r in range(R)], axis=-1
    )  # (m, R)
    pick = np.argmin(losses, axis=-1)
    rows = np.arange(m)
    return {
        "W": W_all[pick, rows],
        "bias": b_all[pick, rows],
        "loss": losses[rows, pick],
        "loss_history": hist[pick, rows],
        "restart_losses": losses,
        "nit": config.steps,
        "device": str(dev),
        "message": f"{config.steps} Adam steps",
    }
