r"""Train the quadratic model directly, to compare trained embeddings with the solver.

Two methods minimise the quadratic model's loss over the embedding ``W``:

``"exact"``
    L-BFGS-B on the exact expected loss at the optimal bias,

    .. math::

        L(W) = \sum_i (K_i - 1)(v_i - N_i)^2 + 2 \sum_{i \ne j} (W_i \cdot W_j)^2,

    with its analytic gradient (:func:`capalloc.quadratic_loss_grad`), each
    evaluation costing :math:`O(n d^2)`, finished by a few Newton steps on exact
    Hessian-vector products; several random restarts, the best kept.
``"sampled"``
    Minibatch Adam in torch on samples of the input law, the way a network is
    trained: the per-instance loss is the batch mean of :math:`(\hat y - y)^2`
    with :math:`\hat y = \lVert W x\rVert^2 + b` and a learnable bias ``b``. All
    instances of a batched problem and all restarts train together as one
    ``(R, m, d, n)`` tensor program, on CPU or GPU.

Both report the exact expected loss of what they found, so training can be
scored against :func:`capalloc.solve`. Internally each instance is rescaled to
:math:`\max_i v_i = 1` (the loss is homogeneous: :math:`v \to s v` maps
:math:`W \to \sqrt s W`, :math:`L \to s^2 L`), which makes the tolerances and
the learning rate scale free.

References
----------
.. [1] Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892, section on the quadratic model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from capalloc._capacity import capacity
from capalloc._lib.registry import Registry
from capalloc._lib.validation import check_budget, readonly, short
from capalloc.allocation.problems import QuadraticProblem
from capalloc.distributions import Gaussian, InputLaw, PerFeature, ThreePoint, from_kurtosis
from capalloc.quadratic.model import quadratic_loss, quadratic_loss_grad

__all__ = ["TrainResult", "train_quadratic", "train_methods"]

#: Defaults that differ between the methods.
_DEFAULT_RESTARTS = {"exact": 4, "sampled": 1}
_DEFAULT_STEPS = {"exact": 100_000, "sampled": 4000}
_DEFAULT_LR = 0.01
_DEFAULT_BATCH = 2048
_DEFAULT_TOL = 1e-12


def _scalar_or_array(x: np.ndarray) -> Any:
    return float(x) if np.ndim(x) == 0 else x


@dataclass(frozen=True, repr=False, eq=False)
class TrainResult:
    """Outcome of :func:`train_quadratic`.

    Attributes
    ----------
    W : (d, n) or (m, d, n) ndarray
        Trained embedding (the best restart of each instance; read-only).
    bias : float or (m,) ndarray
        Output bias: the optimal bias for ``"exact"``, the learned one for ``"sampled"``.
    capacity : (n,) or (m, n) ndarray
        Capacities of the trained columns, :func:`capalloc.capacity` of ``W``.
    loss : float or (m,) ndarray
        Exact expected loss of the trained model ``(W, bias)``.
    history : (T,) or (m, T) ndarray
        Loss per iteration of the best restart: the exact loss after each
        L-BFGS iteration and Newton step (``"exact"``; shorter runs of a batch
        are padded with their final value) or the minibatch loss of each Adam step (``"sampled"``).
    restart_losses : (R,) or (m, R) ndarray
        Final exact loss of every restart, to measure how often descent ends in a
        spurious local minimum.
    method : str
        ``"exact"`` or ``"sampled"``.
    nit : int
        Iterations: L-BFGS iterations plus Newton polishing steps of the best
        restart (largest over a batch), or Adam steps.
    device : str
        Where the training ran (``"cpu"`` for ``"exact"``).
    message : str
        Optimiser message of the best restart (the first instance of a batch).
    """

    W: np.ndarray
    bias: Any
    capacity: np.ndarray
    loss: Any
    history: np.ndarray
    restart_losses: np.ndarray
    method: str
    nit: int
    device: str
    message: str

    def __repr__(self) -> str:
        loss = np.asarray(self.loss)
        loss_txt = f"{float(loss):.6g}" if loss.ndim == 0 else f"array(shape={loss.shape})"
        return (
            f"TrainResult(method={self.method!r}, W.shape={self.W.shape}, loss={loss_txt}, "
            f"restarts={self.restart_losses.shape[-1]}, nit={self.nit}, "
            f"device={self.device!r})"
        )


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {short(value)}")
    return int(value)


def _check_positive_float(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {short(value)}")
    return float(value)


# ---------------------------------------------------------------------------
# Method registry
# ---------------------------------------------------------------------------

_METHODS: Registry[Callable[..., TrainResult]] = Registry("method")
_register = _METHODS.register


def train_methods() -> list[str]:
    """Names of the training methods accepted by :func:`train_quadratic`.

    Examples
    --------
    >>> from capalloc.training.train import train_methods
    >>> train_methods()
    ['exact', 'sampled']
    """
    return _METHODS.names()


def train_quadratic(
    problem: QuadraticProblem,
    method: str = "exact",
    *,
    d: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    lr: float = _DEFAULT_LR,
    batch_size: int = _DEFAULT_BATCH,
    device: Any = "cpu",
    progress: bool = False,
    tol: float = _DEFAULT_TOL,
    law: Any = None,
    init_scale: float = 0.5,
    polish: bool = True,
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
    d : int, optional
        Width of ``W``; default ``problem.d``. Must be ``>= 1``.
    restarts : int, optional
        Random initialisations per instance; the one of lowest exact loss is
        kept. Default 4 for ``"exact"``, 1 for ``"sampled"``.
    seed : int, default 0
        Seed of the initialisations (numpy) and of the samples (``torch.Generator``).
    steps : int, optional
        Maximum L-BFGS iterations (``"exact"``, default 100000) or Adam steps
        (``"sampled"``, default 4000).
    lr : float, default 0.01
        Peak Adam learning rate, in units where :math:`\max_i v_i = 1`; a short
        linear warm-up is followed by cosine decay to zero (``"sampled"`` only).
    batch_size : int, default 2048
        Samples per Adam step (``"sampled"`` only).
    device : str or torch.device, default "cpu"
        Torch device of ``"sampled"`` training; ``"cuda"`` without a GPU raises.
    progress : bool, default False
        Show a tqdm progress bar (over restarts for ``"exact"``, steps for ``"sampled"``).
    tol : float, default 1e-12
        L-BFGS-B ``gtol`` on the rescaled loss (``"exact"`` only); ``ftol`` is
        fixed at ``1e-15``.
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
    polish : bool, default True
        ``"exact"`` only: after L-BFGS-B, take up to 4 Newton steps (MINRES on
        exact Hessian-vector products), each accepted only if it shrinks the
        gradient. L-BFGS-B stops when the loss no longer decreases in floating
        point, which leaves weakly curved directions (the angle between a
        monosemantic feature and a polysemantic one of small norm) accurate to
        only about ``1e-6``; the Newton steps take capacities to about ``1e-12``.

    Returns
    -------
    TrainResult

    Raises
    ------
    TypeError
        ``problem`` is not a :class:`~capalloc.QuadraticProblem`.
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
    >>> from capalloc.training.train import train_quadratic
    >>> problem = capalloc.QuadraticProblem([4.0, 2.0, 1.0, 0.2], d=2, kurtosis=10.0)
    >>> res = train_quadratic(problem, restarts=2)
    >>> res.capacity.round(4).tolist()
    [1.0, 0.7619, 0.2381, 0.0]
    >>> bool(abs(res.loss - capalloc.solve(problem).loss) < 1e-9)
    True
    """
    if not isinstance(problem, QuadraticProblem):
        raise TypeError(f"problem must be a QuadraticProblem, got {short(problem)}")
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(f"method must be one of {train_methods()}, got {method!r}")
    if problem.n == 0:
        raise ValueError(f"problem must have at least one feature, got {problem!r}")
    width = problem.d if d is None else check_budget(d, "d")
    if width < 1:
        raise ValueError(f"d must be >= 1 to train an embedding, got {width!r}")
    restarts = _check_count(_DEFAULT_RESTARTS[method] if restarts is None else restarts, "restarts")
    steps = _check_count(_DEFAULT_STEPS[method] if steps is None else steps, "steps")
    batch_size = _check_count(batch_size, "batch_size")
    lr = _check_positive_float(lr, "lr")
    tol = _check_positive_float(tol, "tol")
    init_scale = _check_positive_float(init_scale, "init_scale")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {short(seed)}")
    if law is not None and method != "sampled":
        raise ValueError(
            f"law is used by method='sampled' only, got law={short(law)} with method={method!r}"
        )
    return _METHODS[method](
        problem,
        d=width,
        restarts=restarts,
        seed=int(seed),
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        device=device,
        progress=progress,
        tol=tol,
        law=law,
        init_scale=init_scale,
        polish=bool(polish),
    )


def _rows(problem: QuadraticProblem) -> tuple[np.ndarray, np.ndarray]:
    """Importance and kurtosis as ``(m, n)`` arrays."""
    v = np.atleast_2d(problem.importance)
    K = np.broadcast_to(problem.kurtosis, problem.importance.shape)
    return v, np.atleast_2d(K)


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
    r"""Hessian of the exact loss (optimal bias) applied to a direction ``V``, :math:`O(n d^2)`.

    Differentiating :math:`\nabla_{W_i} L = -4 (K_i-1)(v_i-N_i) W_i + 8 (M W_i - N_i W_i)`
    along ``V`` with :math:`\dot N_i = 2 W_i\cdot V_i`, :math:`\dot M = V W^\top + W V^\top`.
    """
    N = np.einsum("kn,kn->n", W, W)
    dN = 2 * np.einsum("kn,kn->n", W, V)
    dM = V @ W.T
    dM += dM.T
    return (
        (-4 * (K - 1) * (v - N) - 8 * N) * V
        + (4 * (K - 1) - 8) * dN * W
        + 8 * (dM @ W + (W @ W.T) @ V)
    )


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
    op = LinearOperator(
        (d * n, d * n), dtype=float, matvec=lambda x: _hessp(W, v, K, x.reshape(d, n)).ravel()
    )
    for _ in range(_NEWTON_STEPS):
        if size <= gtol:
            break
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


@_register("exact")
def _train_exact(
    problem: QuadraticProblem,
    *,
    d: int,
    restarts: int,
    seed: int,
    steps: int,
    tol: float,
    progress: bool,
    init_scale: float,
    polish: bool,
    **_: Any,
) -> TrainResult:
    v, K = _rows(problem)
    m, n = v.shape
    rng = np.random.default_rng(seed)
    Ws = np.zeros((m, d, n))
    losses = np.zeros((m, restarts))
    histories: list[np.ndarray] = []
    nits, messages = [], []
    jobs = [(row, r) for row in range(m) for r in range(restarts)]
    best: dict[int, tuple[float, np.ndarray, list[float], int, str]] = {}
    for row, r in _progress(jobs, progress, desc="exact training", unit="restart"):
        s = float(v[row].max()) if n else 1.0
        s = s if s > 0 else 1.0
        vn = v[row] / s
        W0 = _initial(rng, vn, d, init_scale)
        Wn, hist, nit, message = _lbfgs(vn, K[row], W0, steps, tol, polish)
        W = Wn * math.sqrt(s)
        loss = quadratic_loss(W, v[row], K[row])
        losses[row, r] = loss
        if row not in best or loss < best[row][0]:
            best[row] = (loss, W, [h * s * s for h in hist], nit, message)
    for row in range(m):
        W, hist, nit, message = best[row][1:]
        Ws[row] = W
        histories.append(np.asarray(hist if hist else [losses[row].min()], dtype=float))
        nits.append(nit)
        messages.append(message)
    length = max(h.size for h in histories)
    history = np.stack([np.pad(h, (0, length - h.size), mode="edge") for h in histories])
    bias = np.sum(v - np.einsum("mkn,mkn->mn", Ws, Ws), axis=-1)
    loss = quadratic_loss(Ws, v, K)
    if not problem.batched:
        Ws, bias, loss, history, losses = Ws[0], bias[0], loss[0], history[0], losses[0]
    return TrainResult(
        W=readonly(Ws),
        bias=readonly(_scalar_or_array(bias)),
        capacity=readonly(capacity(Ws)),
        loss=readonly(_scalar_or_array(loss)),
        history=readonly(history),
        restart_losses=readonly(losses),
        method="exact",
        nit=max(nits),
        device="cpu",
        message=messages[0],
    )


# ---------------------------------------------------------------------------
# "sampled": minibatch Adam in torch
# ---------------------------------------------------------------------------


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # torch missing, or blocked with sys.modules["torch"] = None
        raise ImportError(
            "method='sampled' needs torch, which is not installed: pip install capalloc[torch]"
        ) from exc
    return torch


def _torch_device(torch: Any, device: Any) -> Any:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must name a torch device such as 'cpu' or 'cuda', got {short(device)}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={short(device)} was requested but CUDA is not available "
            f"(torch.cuda.is_available() is False); use device='cpu'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={short(device)}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return dev


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


class _Sampler:
    """Draws ``(B, m * n)`` samples with the per-column laws, vectorised by law family.

    Gaussian columns come from one ``randn``, three-point columns (any kurtosis)
    from one ``rand`` with a per-column activation probability; other laws are
    drawn once per distinct law.
    """

    def __init__(self, torch: Any, laws: list[InputLaw], device: Any, dtype: Any) -> None:
        self.torch, self.device, self.dtype, self.width = torch, device, dtype, len(laws)
        groups: dict[Any, list[int]] = {}
        for j, law in enumerate(laws):
            key = (
                ("three",)
                if isinstance(law, ThreePoint)
                else (("gauss",) if isinstance(law, Gaussian) else ("law", law))
            )
            groups.setdefault(key, []).append(j)
        self.groups = []
        for key, cols in groups.items():
            index = torch.tensor(cols, dtype=torch.long, device=device)
            extra: Any = None
            if key[0] == "three":
                extra = torch.tensor(
                    [1.0 / laws[j].kurtosis for j in cols], dtype=dtype, device=device
                )
            self.groups.append((key, index, extra))

    def __call__(self, gen: Any, batch: int) -> Any:
        torch = self.torch
        single = len(self.groups) == 1
        x: Any = (
            None if single else torch.empty(batch, self.width, device=self.device, dtype=self.dtype)
        )
        for key, index, p in self.groups:
            scale = None if p is None else p.rsqrt()
            shape = (batch, index.numel())
            if key[0] == "gauss":
                part = torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)
            elif key[0] == "three":
                # x = +-1/sqrt(p) with probability p/2 each, else 0: kurtosis 1/p
                u = torch.rand(shape, generator=gen, device=self.device, dtype=self.dtype)
                part = (2 * (u < p / 2).to(self.dtype) - (u < p).to(self.dtype)) * scale
            else:
                part = key[1]._draw_torch(gen, shape, self.device, self.dtype)
            if single:
                return part
            x[:, index] = part
        return x


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 2% of steps, then cosine decay to zero."""
    warm = max(1, steps // 50)
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * t))


@_register("sampled")
def _train_sampled(
    problem: QuadraticProblem,
    *,
    d: int,
    restarts: int,
    seed: int,
    steps: int,
    lr: float,
    batch_size: int,
    device: Any,
    progress: bool,
    law: Any,
    init_scale: float,
    **_: Any,
) -> TrainResult:
    laws = _feature_laws(problem, law)  # checked before torch is needed
    torch = _import_torch()
    dev = _torch_device(torch, device)
    v, K = _rows(problem)
    m, n = v.shape
    dtype = torch.float32
    scale = v.max(axis=-1) if n else np.ones(m)
    scale = np.where(scale > 0, scale, 1.0)
    vn = v / scale[:, None]

    rng = np.random.default_rng(seed)
    W0 = _initial(rng, vn, d, init_scale, shape=(restarts,))  # (R, m, d, n)
    W = torch.tensor(W0, dtype=dtype, device=dev, requires_grad=True)
    b0 = np.sum(vn - np.einsum("rmkn,rmkn->rmn", W0, W0), axis=-1)
    b = torch.tensor(b0, dtype=dtype, device=dev, requires_grad=True)
    vt = torch.tensor(vn, dtype=dtype, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    sampler = _Sampler(torch, laws, dev, dtype)
    opt = torch.optim.Adam([W, b], lr=lr, foreach=True)
    history = torch.zeros(steps, restarts, m, dtype=dtype, device=dev)

    bar = _progress(range(steps), progress, desc="sampled training", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, steps)
        x = sampler(gen, batch_size).reshape(batch_size, m, n).transpose(0, 1)  # (m, B, n)
        y = (x * x) @ vt.unsqueeze(-1)  # (m, B, 1)
        h = x.unsqueeze(0) @ W.transpose(-1, -2)  # (R, m, B, d)
        err = (h * h).sum(-1) + b.unsqueeze(-1) - y.squeeze(-1)  # (R, m, B)
        per_instance = (err * err).mean(-1)  # (R, m)
        opt.zero_grad(set_to_none=True)
        per_instance.sum().backward()
        opt.step()
        with torch.no_grad():
            history[step] = per_instance.detach()
        if progress and (step % 50 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(per_instance.detach().mean()):.4g}")

    Wn = W.detach().to("cpu", torch.float64).numpy()  # (R, m, d, n)
    bn = b.detach().to("cpu", torch.float64).numpy()  # (R, m)
    hist = history.to("cpu", torch.float64).numpy() * (scale**2)[None, None, :]  # (T, R, m)
    W_all = Wn * np.sqrt(scale)[None, :, None, None]
    b_all = bn * scale[None, :]
    losses = np.stack(
        [quadratic_loss(W_all[r], v, K, bias=b_all[r]) for r in range(restarts)], axis=-1
    )  # (m, R)
    pick = np.argmin(losses, axis=-1)
    rows = np.arange(m)
    W_best = W_all[pick, rows]
    b_best = b_all[pick, rows]
    h_best = hist[:, pick, rows].T  # (m, T)
    loss = losses[rows, pick]
    if not problem.batched:
        W_best, b_best, h_best, loss, losses = W_best[0], b_best[0], h_best[0], loss[0], losses[0]
    return TrainResult(
        W=readonly(W_best),
        bias=readonly(_scalar_or_array(b_best)),
        capacity=readonly(capacity(W_best)),
        loss=readonly(_scalar_or_array(loss)),
        history=readonly(h_best),
        restart_losses=readonly(losses),
        method="sampled",
        nit=steps,
        device=str(dev),
        message=f"{steps} Adam steps",
    )
