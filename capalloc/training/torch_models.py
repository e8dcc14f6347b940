r"""Batched torch toy models and a common trainer.

Every model holds ``m`` independent instances in one tensor program: the
embedding is a parameter of shape ``(m, d, n)``, inputs are ``(m, B, n)`` and
the loss is returned per instance, shape ``(m,)``. Instances may differ in seed,
sparsity and importance, so a whole sweep axis trains at once. Adam updates each
entry from its own gradient history, so instances never interact.

Models (the registry is :func:`available_models`):

``"quadratic"``
    :math:`\hat y = \sum_k (W x)_k^2 + b` against :math:`y = \sum_i v_i x_i^2`.
``"relu"``, ``"gelu"``
    The same with the square replaced by :math:`f = \mathrm{ReLU}` or GeLU:
    :math:`\hat y = \sum_k f((W x)_k) + b` against :math:`y = \sum_i v_i f(x_i)`.
``"relu-ae"``
    Elhage et al.'s ReLU autoencoder :math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`
    with loss :math:`\sum_i I_i (x_i - \hat x_i)^2`.

The first three draw sparse Gaussian inputs :math:`x_i = B_i z_i/\sqrt p`
(:math:`B_i \sim \mathrm{Bernoulli}(p)`, ``p = 1 - sparsity``, so the quadratic
model sees kurtosis :math:`K = 3/p`); the autoencoder draws
:math:`x_i \sim U[0, 1]` with probability ``1 - sparsity``, else 0.

This module imports torch at import time; :mod:`capalloc.training` does not
import it.

References
----------
.. [1] A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892.
.. [2] N. Elhage et al., "Toy Models of Superposition", Transformer Circuits
   Thread (2022).

Examples
--------
>>> from capalloc.training.torch_models import train_model
>>> run = train_model("quadratic", d=2, n=4, sparsity=0.5, instances=2, steps=50)
>>> run.W.shape, run.capacities.shape, run.loss.shape
((2, 2, 4), (2, 4), (2,))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import torch
    from torch import nn
except ModuleNotFoundError as exc:
    if exc.name != "torch":
        raise
    raise ModuleNotFoundError(
        "capalloc.training.torch_models needs torch, which is not "
        "installed: pip install 'capalloc[torch]'",
        name="torch",
    ) from exc

from capalloc._capacity import IGNORED, MONOSEMANTIC, POLYSEMANTIC, capacity
from capalloc._lib.registry import Registry
from capalloc._lib.validation import check_importance, check_positive, short

__all__ = [
    "ToyModel",
    "QuadraticModel",
    "ActivationModel",
    "ReluAutoencoder",
    "ModelRun",
    "available_models",
    "build_model",
    "default_importance",
    "get_model",
    "register_model",
    "resolve_device",
    "effective_capacity",
    "trained_labels",
    "train_model",
]

_MODELS: Registry[Callable[..., ToyModel]] = Registry("model_name")


def register_model(name: str) -> Callable[[Callable[..., ToyModel]], Callable[..., ToyModel]]:
    """Decorator registering a model factory under ``name`` (a name is registered once).

    The factory is called as ``factory(importance, sparsity, d, generator=...)``
    with ``importance`` of shape ``(m, n)`` and ``sparsity`` of shape ``(m,)``
    (tensors on the target device) and returns a :class:`ToyModel`.
    """
    return _MODELS.register(name)


def available_models() -> list[str]:
    """Names of the registered models.

    Examples
    --------
    >>> from capalloc.training.torch_models import available_models
    >>> available_models()
    ['gelu', 'quadratic', 'relu', 'relu-ae']
    """
    return _MODELS.names()


def get_model(name: str) -> Callable[..., ToyModel]:
    """The factory registered under ``name`` (``ValueError`` listing the valid names)."""
    return _MODELS[name]


def resolve_device(device: Any) -> torch.device:
    """A :class:`torch.device`, checking that CUDA is there when asked for.

    Examples
    --------
    >>> from capalloc.training.torch_models import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must name a torch device, got {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def default_importance(n: int, decay: float = 0.9) -> np.ndarray:
    r"""Geometrically decaying importances :math:`v_i = \text{decay}^i`, shape ``(n,)``.

    Examples
    --------
    >>> from capalloc.training.torch_models import default_importance
    >>> default_importance(3).tolist()
    [1.0, 0.9, 0.81]
    """
    return float(decay) ** np.arange(n, dtype=float)


class ToyModel(nn.Module):
    """Base class: ``m`` instances of a ``(d, n)`` embedding trained side by side.

    Parameters
    ----------
    importance : (m, n) torch.Tensor
        Per-instance importances (``v`` or ``I``).
    sparsity : (m,) torch.Tensor
        Per-instance probability that a feature is zero, in [0, 1).
    d : int
        Embedding dimension.
    generator : torch.Generator, optional
        Source of the initial weights.
    """

    # buffers (set by ``register_buffer``) and the bias, set by every subclass
    importance: torch.Tensor
    sparsity: torch.Tensor
    b: torch.Tensor

    def __init__(
        self,
        importance: torch.Tensor,
        sparsity: torch.Tensor,
        d: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        m, n = importance.shape
        self.register_buffer("importance", importance)
        self.register_buffer("sparsity", sparsity)
        std = math.sqrt(2.0 / (n + d))  # Xavier normal
        W = (
            torch.randn(
                (m, d, n), generator=generator, device=importance.device, dtype=importance.dtype
            )
            * std
        )
        self.W = nn.Parameter(W)

    @property
    def m(self) -> int:
        """Number of instances."""
        return int(self.W.shape[0])

    @property
    def n(self) -> int:
        """Number of features."""
        return int(self.W.shape[2])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden activations :math:`h = W x`, shape ``(m, B, d)`` for ``x`` of shape ``(m, B, n)``."""
        return x @ self.W.transpose(-1, -2)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw inputs of shape ``(m, batch_size, n)``."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per-instance mean loss over the batch, shape ``(m,)``."""
        raise NotImplementedError


def _sparse_gaussian(
    sparsity: torch.Tensor, shape: tuple[int, int, int], generator: torch.Generator | None
) -> torch.Tensor:
    """``x = B z / sqrt(p)``, ``p = 1 - sparsity`` per instance (leading axis)."""
    p = (1.0 - sparsity).to(torch.float64)
    dev, dt = sparsity.device, sparsity.dtype
    z = torch.randn(shape, generator=generator, device=dev, dtype=dt)
    on = torch.rand(shape, generator=generator, device=dev, dtype=dt) < p.to(dt)[:, None, None]
    return z * on / torch.sqrt(p).to(dt)[:, None, None]


class _ScalarOutput(ToyModel):
    """Shared code of the models that sum an activation of ``W x`` into one output."""

    def __init__(self, importance, sparsity, d, generator=None):
        super().__init__(importance, sparsity, d, generator)
        self.b = nn.Parameter(torch.zeros(self.m, device=importance.device, dtype=importance.dtype))

    def activation(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, batch_size, generator=None):
        return _sparse_gaussian(self.sparsity, (self.m, batch_size, self.n), generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat y = \sum_k f((W x)_k) + b`, shape ``(m, B)``."""
        return self.activation(self.embed(x)).sum(-1) + self.b[:, None]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`y = \sum_i v_i f(x_i)`, shape ``(m, B)``."""
        return (self.activation(x) * self.importance[:, None, :]).sum(-1)

    def loss(self, x):
        return ((self.forward(x) - self.target(x)) ** 2).mean(-1)


@register_model("quadratic")
class QuadraticModel(_ScalarOutput):
    r"""The quadratic model, :math:`f(t) = t^2` (its optimum is known exactly).

    Examples
    --------
    >>> import torch
    >>> from capalloc.training.torch_models import QuadraticModel
    >>> model = QuadraticModel(torch.ones(1, 3), torch.zeros(1), d=2)
    >>> model(torch.zeros(1, 5, 3)).shape
    torch.Size([1, 5])
    """

    def activation(self, t):
        return t * t


class ActivationModel(_ScalarOutput):
    """The quadratic model with the square replaced by ``activation`` (ReLU or GeLU).

    Parameters
    ----------
    importance, sparsity, d, generator
        As in :class:`ToyModel`.
    activation : {"relu", "gelu"}
        The non-linearity :math:`f`.
    """

    _FUNCTIONS = {"relu": torch.relu, "gelu": nn.functional.gelu}

    def __init__(self, importance, sparsity, d, generator=None, *, activation: str = "relu"):
        if activation not in self._FUNCTIONS:
            raise ValueError(
                f"activation must be one of {sorted(self._FUNCTIONS)}, got {activation!r}"
            )
        super().__init__(importance, sparsity, d, generator)
        self.activation_name = activation
        self._f = self._FUNCTIONS[activation]

    def activation(self, t):
        return self._f(t)


@register_model("relu")
def _relu_model(importance, sparsity, d, generator=None):
    return ActivationModel(importance, sparsity, d, generator, activation="relu")


@register_model("gelu")
def _gelu_model(importance, sparsity, d, generator=None):
    return ActivationModel(importance, sparsity, d, generator, activation="gelu")


@register_model("relu-ae")
class ReluAutoencoder(ToyModel):
    r"""Elhage et al.'s ReLU autoencoder, :math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`.

    Loss :math:`\sum_i I_i (x_i - \hat x_i)^2` averaged over the batch; inputs
    :math:`x_i \sim U[0, 1]` with probability ``1 - sparsity``, else 0.

    Examples
    --------
    >>> import torch
    >>> from capalloc.training.torch_models import ReluAutoencoder
    >>> model = ReluAutoencoder(torch.ones(2, 4), torch.full((2,), 0.5), d=2)
    >>> model(model.sample(8)).shape
    torch.Size([2, 8, 4])
    """

    def __init__(self, importance, sparsity, d, generator=None):
        super().__init__(importance, sparsity, d, generator)
        self.b = nn.Parameter(
            torch.zeros(self.m, self.n, device=importance.device, dtype=importance.dtype)
        )

    def sample(self, batch_size, generator=None):
        shape = (self.m, batch_size, self.n)
        dev, dt = self.sparsity.device, self.sparsity.dtype
        u = torch.rand(shape, generator=generator, device=dev, dtype=dt)
        on = (
            torch.rand(shape, generator=generator, device=dev, dtype=dt)
            >= self.sparsity[:, None, None]
        )
        return u * on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`, shape ``(m, B, n)``."""
        return torch.relu(self.embed(x) @ self.W + self.b[:, None, :])

    def loss(self, x):
        err = (x - self.forward(x)) ** 2
        return (err * self.importance[:, None, :]).sum(-1).mean(-1)


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

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.training.torch_models import effective_capacity
    >>> W = np.array([[1.0, 0.0, 0.05], [0.0, 1.0, 0.05]])
    >>> effective_capacity(W).round(3).tolist()
    [1.0, 1.0, 0.0]
    """
    W = np.asarray(W, dtype=float)
    if not norm_tol >= 0:
        raise ValueError(f"norm_tol must be >= 0, got {norm_tol!r}")
    N = np.einsum("...kn,...kn->...n", W, W)
    keep = N > norm_tol * N.max(axis=-1, keepdims=True, initial=0.0)
    return capacity(W * keep[..., None, :])


def trained_labels(W: Any, *, cap_tol: float = 0.05, norm_tol: float = 1e-2) -> np.ndarray:
    r"""Monosemantic / polysemantic / ignored labels for trained (noisy) embeddings.

    A trained column is never exactly zero nor exactly orthogonal, so the
    tolerances are loose. With :math:`C` the :func:`effective_capacity`, feature
    ``i`` is *ignored* when its squared norm is at most ``norm_tol`` times the
    largest or :math:`C_i \le \text{cap\_tol}`, *monosemantic* when
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

    Examples
    --------
    >>> import numpy as np
    >>> from capalloc.training.torch_models import trained_labels
    >>> W = np.array([[1.0, 0.0, 0.6, 0.001], [0.0, 1.0, -0.6, 0.0]])
    >>> trained_labels(W).tolist()
    ['polysemantic', 'polysemantic', 'polysemantic', 'ignored']
    >>> trained_labels(np.eye(2, 3)).tolist()
    ['monosemantic', 'monosemantic', 'ignored']
    """
    if not 0 <= cap_tol < 0.5:
        raise ValueError(f"cap_tol must lie in [0, 0.5), got {cap_tol!r}")
    C = effective_capacity(W, norm_tol)
    labels = np.full(C.shape, POLYSEMANTIC, dtype="<U12")
    labels[C >= 1 - cap_tol] = MONOSEMANTIC
    labels[C <= cap_tol] = IGNORED
    return labels


def _readonly(a: Any) -> Any:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, repr=False, eq=False)
class ModelRun:
    """Outcome of :func:`train_model` for ``m`` instances.

    Attributes
    ----------
    model : str
        Model name.
    W : (m, d, n) ndarray
        Trained embeddings.
    bias : (m,) or (m, n) ndarray
        Trained biases.
    importance : (m, n) ndarray
    sparsity : (m,) ndarray
    capacities : (m, n) ndarray
        Capacities of the trained embeddings, :func:`capalloc.capacity` of ``W``.
    effective_capacities : (m, n) ndarray
        :func:`effective_capacity` (remnants of ignored columns dropped); the
        labels and the summaries below use these.
    labels : (m, n) ndarray of str
        From :func:`trained_labels`.
    polysemantic_fraction : (m,) ndarray
        Fraction of the non-ignored features that are polysemantic (0 when all are ignored).
    polysemantic_fraction_all : (m,) ndarray
        Fraction of all ``n`` features that are polysemantic.
    capacity_held_by_poly : (m,) ndarray
        Share of the total capacity :math:`\\sum_i C_i` held by polysemantic features.
    blocks : tuple of list or None
        Per instance, the blocks found by :func:`capalloc.geometry.find_blocks`
        (tolerance ``block_tol``) among the non-ignored features, each of which
        lies in exactly one block; ``None`` when that module is unavailable.
    loss : (m,) ndarray
        Final loss per instance, on a fresh evaluation batch.
    loss_history : (k, m) ndarray
        Mean training loss over successive windows of steps.
    steps : int
    device : str
    seed : int
    elapsed : float
        Training wall time in seconds.
    """

    model: str
    W: np.ndarray
    bias: np.ndarray
    importance: np.ndarray
    sparsity: np.ndarray
    capacities: np.ndarray
    effective_capacities: np.ndarray
    labels: np.ndarray
    polysemantic_fraction: np.ndarray
    polysemantic_fraction_all: np.ndarray
    capacity_held_by_poly: np.ndarray
    blocks: tuple[list[Any], ...] | None
    loss: np.ndarray
    loss_history: np.ndarray
    steps: int
    device: str
    seed: int
    elapsed: float

    @property
    def instances(self) -> int:
        """Number of instances ``m``."""
        return int(self.W.shape[0])

    def block_shapes(self) -> list[list[tuple[int, int]]] | None:
        """Per instance, ``(dim, number of features)`` of each block (``None`` without blocks)."""
        if self.blocks is None:
            return None
        return [[(int(b.dim), len(b.features)) for b in inst] for inst in self.blocks]

    def __repr__(self) -> str:
        pf = self.polysemantic_fraction
        return (
            f"ModelRun(model={self.model!r}, m={self.instances}, d={self.W.shape[1]}, "
            f"n={self.W.shape[2]}, steps={self.steps}, "
            f"polysemantic_fraction={np.round(pf, 3).tolist()}, "
            f"loss={np.array2string(self.loss, precision=4)})"
        )


def _find_blocks(W: np.ndarray, labels: np.ndarray, tol: float) -> tuple[list[Any], ...] | None:
    """Blocks of each instance from :mod:`capalloc.geometry`, or ``None`` if it is missing.

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
    out = []
    for Wi, lab in zip(W, labels, strict=True):
        kept = lab != IGNORED
        Wk = Wi * kept[None, :]
        N = np.einsum("kn,kn->n", Wk, Wk)
        floor = 2 * tol * N.max(initial=0.0)
        lift = np.where(kept & (N > 0) & (N < floor), np.sqrt(floor / np.where(N > 0, N, 1.0)), 1.0)
        out.append(list(find_blocks(Wk * lift[None, :], tol)))
    return tuple(out)


def _per_instance(value: Any, m: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    if arr.shape != (m,):
        raise ValueError(f"{name} must be a scalar or have shape ({m},), got {short(value)}")
    return arr


def build_model(
    model_name: str,
    importance: Any,
    d: int,
    sparsity: Any,
    *,
    instances: int = 1,
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> ToyModel:
    """Construct a registered model for ``instances`` instances (no training).

    Parameters
    ----------
    model_name : str
        One of :func:`available_models`.
    importance : (n,) or (m, n) array_like of float
        Importances, shared or per instance.
    d : int
        Embedding dimension, ``d >= 1``.
    sparsity : float or (m,) array_like of float
        Probability that a feature is zero, in [0, 1).
    instances : int, default 1
        ``m``; ignored when ``importance`` or ``sparsity`` already fixes it.
    device, dtype
        Torch device and dtype.
    generator : torch.Generator, optional
        Source of the initial weights.

    Returns
    -------
    ToyModel
    """
    factory = get_model(model_name)
    d = check_positive(d, "d", integer=True)
    v = check_importance(importance, ndim=(1, 2))
    m = int(check_positive(instances, "instances", integer=True))
    s = np.asarray(sparsity, dtype=float)
    if v.ndim == 2:
        m = v.shape[0]
    elif s.ndim == 1:
        m = s.shape[0]
    v = np.broadcast_to(v, (m, v.shape[-1]))
    s = _per_instance(s, m, "sparsity")
    if np.any(~np.isfinite(s)) or s.min() < 0 or s.max() >= 1:
        raise ValueError(f"sparsity must lie in [0, 1), got {short(sparsity)}")
    dev = resolve_device(device)
    tv = torch.as_tensor(np.array(v), dtype=dtype, device=dev)
    ts = torch.as_tensor(s, dtype=dtype, device=dev)
    return factory(tv, ts, d, generator=generator)


def train_model(
    model_name: str,
    importance: Any = None,
    d: int = 10,
    sparsity: Any = 0.9,
    *,
    n: int | None = None,
    instances: int = 1,
    steps: int = 3000,
    batch_size: int = 1024,
    lr: float = 1e-2,
    lr_final: float = 0.05,
    device: Any = "cpu",
    seed: int = 0,
    progress: bool = False,
    eval_batch: int = 8192,
    cap_tol: float = 0.05,
    norm_tol: float = 1e-2,
    block_tol: float = 0.05,
    dtype: torch.dtype = torch.float32,
    num_threads: int | None = 1,
) -> ModelRun:
    r"""Train ``instances`` copies of a toy model with Adam and report its capacities.

    Each step draws a fresh batch; the learning rate follows a cosine decay from
    ``lr`` to ``lr * lr_final``. The loss summed over instances is minimised, which
    trains each instance on its own loss.

    Parameters
    ----------
    model_name : {"quadratic", "relu", "gelu", "relu-ae"}
        A registered model (see :func:`available_models`).
    importance : (n,) or (m, n) array_like of float, optional
        Importances :math:`v_i` (or :math:`I_i`); default :math:`0.9^i` with ``n`` features.
    d : int, default 10
        Embedding dimension.
    sparsity : float or (m,) array_like of float, default 0.9
        Probability that a feature is zero, per instance or shared.
    n : int, optional
        Number of features when ``importance`` is omitted (default 20).
    instances : int, default 1
        Instances ``m`` when neither ``importance`` nor ``sparsity`` is per instance
        (e.g. several seeds of one setting).
    steps : int, default 3000
    batch_size : int, default 1024
    lr : float, default 1e-2
        Initial Adam learning rate.
    lr_final : float, default 0.05
        Final learning rate as a fraction of ``lr``.
    device : str or torch.device, default "cpu"
        ``"cpu"`` or ``"cuda"`` (``ValueError`` when CUDA is unavailable).
    seed : int, default 0
        Seeds the initial weights and every batch.
    progress : bool, default False
        Show a tqdm progress bar.
    eval_batch : int, default 8192
        Size of the batch the final loss is measured on.
    cap_tol, norm_tol : float
        Tolerances of :func:`trained_labels`.
    block_tol : float, default 0.05
        Tolerance passed to :func:`capalloc.geometry.find_blocks`.
    dtype : torch.dtype, default torch.float32
    num_threads : int or None, default 1
        CPU threads torch may use while training (its setting is restored
        afterwards); ``None`` leaves it alone. These models are far too small to
        gain from threads, and on a busy machine spinning threads slow a step
        several times over.

    Returns
    -------
    ModelRun

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892 (the quadratic model and its variants).
    .. [2] Elhage et al., "Toy Models of Superposition" (2022) (the ReLU autoencoder).

    Examples
    --------
    >>> from capalloc.training.torch_models import train_model
    >>> run = train_model("relu-ae", n=5, d=2, sparsity=[0.0, 0.9], steps=20)
    >>> run.instances, run.polysemantic_fraction.shape
    (2, (2,))
    """
    if importance is None:
        importance = default_importance(20 if n is None else check_positive(n, "n", integer=True))
    elif n is not None and np.shape(importance)[-1] != n:
        raise ValueError(f"n={n!r} disagrees with importance of shape {np.shape(importance)}")
    steps = check_positive(steps, "steps", integer=True)
    batch_size = check_positive(batch_size, "batch_size", integer=True)
    eval_batch = check_positive(eval_batch, "eval_batch", integer=True)
    lr = check_positive(lr, "lr")
    lr_final = check_positive(lr_final, "lr_final")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if num_threads is not None:
        num_threads = check_positive(num_threads, "num_threads", integer=True)
    dev = resolve_device(device)
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(
            model_name,
            importance,
            d,
            sparsity,
            instances,
            steps,
            batch_size,
            lr,
            lr_final,
            dev,
            int(seed),
            progress,
            eval_batch,
            dtype,
            dict(cap_tol=cap_tol, norm_tol=norm_tol, block_tol=block_tol),
        )
    finally:
        if num_threads is not None:
            torch.set_num_threads(previous)


def _train(
    model_name: str,
    importance: Any,
    d: int,
    sparsity: Any,
    instances: int,
    steps: int,
    batch_size: int,
    lr: float,
    lr_final: float,
    dev: torch.device,
    seed: int,
    progress: bool,
    eval_batch: int,
    dtype: torch.dtype,
    label_kw: dict[str, float],
) -> ModelRun:
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    model = build_model(
        model_name,
        importance,
        d,
        sparsity,
        instances=instances,
        device=dev,
        dtype=dtype,
        generator=gen,
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def schedule(t: int) -> float:
        return lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * t / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    window = max(steps // 50, 1)
    history: list[np.ndarray] = []
    acc = torch.zeros(model.m, device=dev, dtype=dtype)
    iterator: Sequence[int] | Any = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"train {model_name}", leave=False)
    start = time.perf_counter()
    for t in iterator:
        x = model.sample(batch_size, gen)
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        sched.step()
        acc += loss.detach()
        if (t + 1) % window == 0 or t + 1 == steps:
            history.append((acc / ((t % window) + 1)).cpu().numpy())
            acc.zero_()
    with torch.no_grad():
        final = model.loss(model.sample(eval_batch, gen)).cpu().numpy().astype(float)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - start
    return _summarise(
        model_name, model, final, np.array(history), steps, str(dev), seed, elapsed, **label_kw
    )


def _summarise(
    name: str,
    model: ToyModel,
    final: np.ndarray,
    history: np.ndarray,
    steps: int,
    device: str,
    seed: int,
    elapsed: float,
    *,
    cap_tol: float,
    norm_tol: float,
    block_tol: float,
) -> ModelRun:
    W = model.W.detach().cpu().numpy().astype(float)
    C = effective_capacity(W, norm_tol)
    labels = trained_labels(W, cap_tol=cap_tol, norm_tol=norm_tol)
    poly = labels == POLYSEMANTIC
    kept = (labels != IGNORED).sum(-1)
    frac = np.where(kept > 0, poly.sum(-1) / np.maximum(kept, 1), 0.0)
    total = C.sum(-1)
    held = np.where(total > 0, (C * poly).sum(-1) / np.where(total > 0, total, 1.0), 0.0)
    return ModelRun(
        model=name,
        W=_readonly(W),
        bias=_readonly(model.b.detach().cpu().numpy().astype(float)),
        importance=_readonly(model.importance.cpu().numpy().astype(float)),
        sparsity=_readonly(model.sparsity.cpu().numpy().astype(float)),
        capacities=_readonly(capacity(W)),
        effective_capacities=_readonly(C),
        labels=_readonly(labels),
        polysemantic_fraction=_readonly(frac),
        polysemantic_fraction_all=_readonly(poly.mean(-1)),
        capacity_held_by_poly=_readonly(held),
        blocks=_find_blocks(W, labels, block_tol),
        loss=_readonly(final),
        loss_history=_readonly(history),
        steps=steps,
        device=device,
        seed=seed,
        elapsed=float(elapsed),
    )
