r"""Batched torch toy models, the input sampler and the one Adam trainer.

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
``"neuron"``
    Their privileged-basis model :math:`h = \mathrm{ReLU}(W x)`,
    :math:`\hat x = \mathrm{ReLU}(W^\top h + b)`, same inputs and loss.

The first three draw sparse Gaussian inputs :math:`x_i = B_i z_i/\sqrt p`
(:math:`B_i \sim \mathrm{Bernoulli}(p)`, ``p = 1 - sparsity``, so the quadratic
model sees kurtosis :math:`K = 3/p`) through :class:`LawSampler` and the laws of
:mod:`capalloc.distributions`; the autoencoder draws :math:`x_i \sim U[0, 1]`
with probability ``1 - sparsity``, else 0 (not centred, so not one of those laws).

:func:`fit` is the one training loop of the package (Adam on fresh minibatches,
the learning-rate schedule of :meth:`~capalloc.training.TrainConfig.lr_at`);
:func:`train_model` and ``train_quadratic(method="sampled")`` both run it, and
both return a :class:`~capalloc.training.TrainResult` (``ModelRun`` is that class).

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
>>> from capalloc.training import TrainConfig
>>> from capalloc.training.torch_models import train_model
>>> run = train_model("quadratic", d=2, n=4, sparsity=0.5, instances=2,
...                   config=TrainConfig(steps=50))
>>> run.W.shape, run.capacity.shape, run.loss.shape, run.loss_history.shape
((2, 2, 4), (2, 4), (2,), (2, 50))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
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

from capalloc._lib.registry import Registry
from capalloc._lib.validation import as_float_array, check_importance, check_positive, short
from capalloc.distributions import Gaussian, InputLaw, PerFeature, Sparse, ThreePoint
from capalloc.training.config import TrainConfig
from capalloc.training.result import (
    TrainResult,
    check_tolerances,
    effective_capacity,
    trained_labels,
)

__all__ = [
    "ToyModel",
    "QuadraticModel",
    "ActivationModel",
    "ReluAutoencoder",
    "NeuronModel",
    "LawSampler",
    "ModelRun",
    "TrainConfig",
    "TrainResult",
    "available_models",
    "build_model",
    "default_importance",
    "get_model",
    "register_model",
    "resolve_device",
    "effective_capacity",
    "trained_labels",
    "fit",
    "train_model",
    "Penalised",
]

#: The result type of 0.1.0's :func:`train_model`; now the one :class:`TrainResult`.
ModelRun = TrainResult

_MODELS: Registry[Callable[..., ToyModel]] = Registry("model_name")


def register_model(name: str) -> Callable[[Callable[..., ToyModel]], Callable[..., ToyModel]]:
    """Decorator registering a model factory under ``name`` (a name is registered once).

    The factory is called as ``factory(importance, sparsity, d, generator=...)``
    with ``importance`` of shape ``(m, n)`` and ``sparsity`` of shape ``(m,)``
    (tensors on the target device) and returns a :class:`ToyModel`.

    Examples
    --------
    >>> from capalloc.training.torch_models import QuadraticModel, register_model
    >>> register_model("quadratic")(QuadraticModel)
    Traceback (most recent call last):
    ValueError: model_name 'quadratic' is already registered
    """
    return _MODELS.register(name)


def available_models() -> list[str]:
    """Names of the registered models.

    Examples
    --------
    >>> from capalloc.training.torch_models import available_models
    >>> available_models()
    ['gelu', 'neuron', 'quadratic', 'relu', 'relu-ae']
    """
    return _MODELS.names()


def get_model(name: str) -> Callable[..., ToyModel]:
    """The factory registered under ``name`` (``ValueError`` listing the valid names).

    Examples
    --------
    >>> from capalloc.training.torch_models import get_model
    >>> get_model("relu-ae").__name__
    'ReluAutoencoder'
    """
    return _MODELS[name]


def resolve_device(device: Any) -> torch.device:
    """A :class:`torch.device`, checking that CUDA (and the device index) is there when asked for.

    The one device check of the package: every trainer resolves its
    ``config.device`` here before it allocates anything.

    Raises
    ------
    ValueError
        ``device`` names no torch device, or CUDA (that CUDA device) is not available.

    Examples
    --------
    >>> from capalloc.training.torch_models import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
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


def _torch_dtype(dtype: Any) -> torch.dtype:
    """``torch.float32`` / ``torch.float64`` from a torch dtype or its name."""
    return (
        dtype if isinstance(dtype, torch.dtype) else getattr(torch, TrainConfig(dtype=dtype).dtype)
    )


def default_importance(n: int, decay: float = 0.9) -> np.ndarray:
    r"""Geometrically decaying importances :math:`v_i = \text{decay}^i`, shape ``(n,)``.

    Examples
    --------
    >>> from capalloc.training.torch_models import default_importance
    >>> default_importance(3).tolist()
    [1.0, 0.9, 0.81]
    """
    return float(decay) ** np.arange(n, dtype=float)


# ---------------------------------------------------------------------------
# The sampler: inputs drawn from the laws of capalloc.distributions
# ---------------------------------------------------------------------------


def _family(law: InputLaw) -> str:
    if isinstance(law, Gaussian):
        return "gauss"
    if isinstance(law, Sparse) and isinstance(law.base, Gaussian):
        return "sparse-gauss"
    if isinstance(law, ThreePoint):
        return "three"
    return "law"


def _parameter(kind: str, law: InputLaw) -> float:
    """The activation probability ``p`` of a sparse Gaussian or three-point law (else 1)."""
    if kind == "sparse-gauss":
        return float(law.p)  # type: ignore[attr-defined]
    return 1.0 / float(law.kurtosis) if kind == "three" else 1.0


class LawSampler:
    r"""Draws inputs whose feature ``j`` of instance ``i`` follows ``laws[i][j]``, all independent.

    Features are drawn by law family, one call per family: Gaussian features from
    one ``randn``, sparse Gaussian features (:class:`~capalloc.distributions.Sparse`
    of a Gaussian, any ``p``) from one ``randn`` and one ``rand``, three-point
    features (any kurtosis) from one ``rand``; any other law with its own
    :meth:`~capalloc.distributions.InputLaw.draw_torch`, once per distinct law.
    When one family covers every feature its draw has the output's shape
    ``(m, batch, n)`` (so one instance draws exactly like ``(batch, n)``).

    Parameters
    ----------
    laws : sequence of InputLaw, or sequence of sequences of InputLaw
        One single-feature law per feature (expand a
        :class:`~capalloc.distributions.PerFeature` law into its ``laws``), or one
        such row per instance, all of the same length ``n``.

    Examples
    --------
    >>> import torch
    >>> from capalloc import distributions as D
    >>> from capalloc.training.torch_models import LawSampler
    >>> sampler = LawSampler([D.Gaussian(), D.ThreePoint(4.0), D.Sparse(D.Gaussian(), 0.5)])
    >>> x = sampler(200_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> x.shape, (x**4).mean(0).round(decimals=1).tolist()
    (torch.Size([200000, 3]), [3.0, 4.0, 6.0])
    >>> LawSampler([[D.Gaussian()] * 3, [D.Uniform()] * 3])(5).shape  # two instances
    torch.Size([2, 5, 3])
    """

    def __init__(self, laws: Sequence[Any]) -> None:
        rows = list(laws)
        self.batched = bool(rows) and not isinstance(rows[0], InputLaw)
        grid = [list(row) for row in rows] if self.batched else [rows]
        n = len(grid[0]) if grid else 0
        flat = [law for row in grid for law in row]
        if (
            not n
            or any(len(row) != n for row in grid)
            or not all(isinstance(law, InputLaw) for law in flat)
        ):
            raise ValueError(
                "laws must be a non-empty sequence of InputLaw (or of equal-length rows of "
                f"them), got {short(laws)}"
            )
        if any(isinstance(law, PerFeature) for law in flat):
            raise ValueError("laws must hold one single-feature law per feature, got a PerFeature")
        self.laws = tuple(tuple(row) for row in grid) if self.batched else tuple(grid[0])
        self.shape = (len(grid), n)
        groups: dict[Any, list[int]] = {}
        for k, law in enumerate(flat):
            kind = _family(law)
            groups.setdefault((kind, law if kind == "law" else None), []).append(k)
        # (family, law of a "law" group, flat positions i * n + j, parameter p per position)
        self._groups = [
            (kind, law, pos, [_parameter(kind, flat[k]) for k in pos])
            for (kind, law), pos in groups.items()
        ]
        self._on: dict[tuple[str, Any], list[tuple[Any, Any, Any, Any]]] = {}

    def _tensors(self, device: Any, dtype: Any) -> list[tuple[Any, Any, Any, Any]]:
        """Per group: instance and feature indices, ``p`` and ``sqrt(p)`` on ``device``.

        One family alone gets its ``p`` as an ``(m, 1, n)`` grid that broadcasts over
        the batch; ``sqrt(p)`` is taken in float64 and then rounded. Built once per
        device and dtype.
        """
        key = (str(device), dtype)
        if key not in self._on:
            m, n = self.shape
            single = len(self._groups) == 1
            built = []
            for _, _, pos, p in self._groups:
                p64 = torch.tensor(p, dtype=torch.float64)
                if single:
                    p64 = p64.reshape(m, 1, n)
                index = torch.tensor(pos, dtype=torch.long, device=device)
                built.append(
                    (
                        index // n,
                        index % n,
                        p64.to(device=device, dtype=dtype),
                        p64.sqrt().to(device=device, dtype=dtype),
                    )
                )
            self._on[key] = built
        return self._on[key]

    def __call__(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: Any = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw a ``(batch, n)`` tensor, or ``(m, batch, n)`` for rows of laws, on ``device``."""
        m, n = self.shape
        parts = zip(self._groups, self._tensors(device, dtype), strict=True)
        if len(self._groups) == 1:
            (kind, law, _, _), (_, _, p, root) = next(parts)
            x = self._draw(kind, law, p, root, (m, batch, n), generator, device, dtype)
        else:
            x = torch.empty(m, batch, n, device=device, dtype=dtype)
            for (kind, law, pos, _), (rows, cols, p, root) in parts:
                part = self._draw(kind, law, p, root, (batch, len(pos)), generator, device, dtype)
                x[rows, :, cols] = part.T
        return x if self.batched else x[0]

    @staticmethod
    def _draw(
        kind: str,
        law: Any,
        p: Any,
        root: Any,
        shape: tuple[int, ...],
        generator: Any,
        device: Any,
        dtype: Any,
    ) -> Any:
        if kind == "gauss":
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if kind == "sparse-gauss":  # x = B z / sqrt(p), B ~ Bernoulli(p)
            z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return z * (u < p).to(dtype) / root
        if kind == "three":  # x = +-1/sqrt(p) with probability p/2 each, else 0: kurtosis 1/p
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return (2 * (u < p / 2).to(dtype) - (u < p).to(dtype)) * p.rsqrt()
        return law.draw_torch(generator, shape, device, dtype)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class ToyModel(nn.Module):
    r"""Base class: ``m`` instances of a ``(d, n)`` embedding trained side by side.

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
    density : (m, n) torch.Tensor, optional
        Per-feature probability that a feature is active, in (0, 1]; default
        ``1 - sparsity`` for every feature.
    init_std : float, optional
        Standard deviation of the normal initial weights; default Xavier normal
        :math:`\sqrt{2/(n + d)}`.
    correlation : float in [-1, 1], default 0.0
        Coupling of the masks of feature pairs ``(0, 1), (2, 3), ...`` (autoencoder
        models only; see :meth:`ReluAutoencoder.sample`).
    """

    # buffers (set by ``register_buffer``) and the bias, set by every subclass
    importance: torch.Tensor
    sparsity: torch.Tensor
    feature_sparsity: torch.Tensor
    b: torch.Tensor
    #: Whether the model's sampler takes correlated feature pairs.
    _correlated_inputs = False

    def __init__(
        self,
        importance: torch.Tensor,
        sparsity: torch.Tensor,
        d: int,
        generator: torch.Generator | None = None,
        *,
        density: torch.Tensor | None = None,
        init_std: float | None = None,
        correlation: float = 0.0,
    ) -> None:
        super().__init__()
        m, n = importance.shape
        self.register_buffer("importance", importance)
        self.register_buffer("sparsity", sparsity)
        # per-feature probability of being zero, (m, n): exactly ``sparsity`` broadcast by default
        zero = sparsity[:, None].expand(m, n) if density is None else 1.0 - density
        self.register_buffer("feature_sparsity", zero.clone())
        self.correlation = float(correlation)
        if self.correlation and not self._correlated_inputs:
            raise ValueError(
                f"correlation={self.correlation!r}: {type(self).__name__} draws independent "
                "features (only the autoencoder models take correlated pairs)"
            )
        std = math.sqrt(2.0 / (n + d)) if init_std is None else float(init_std)  # Xavier normal
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


class _ScalarOutput(ToyModel):
    """Shared code of the models that sum an activation of ``W x`` into one output."""

    def __init__(self, importance, sparsity, d, generator=None, **options):
        super().__init__(importance, sparsity, d, generator, **options)
        self.b = nn.Parameter(torch.zeros(self.m, device=importance.device, dtype=importance.dtype))
        self._sampler: LawSampler | None = None

    @property
    def sampler(self) -> LawSampler:
        """The input sampler, built on first use from ``sparsity``: each of the ``n``
        features of an instance follows ``Sparse(Gaussian(), p)``, ``p = 1 - sparsity``
        (per feature: ``1 - feature_sparsity``)."""
        if self._sampler is None:
            p = (1.0 - self.feature_sparsity).to(torch.float64).tolist()
            self._sampler = LawSampler([[Sparse(Gaussian(), q) for q in row] for row in p])
        return self._sampler

    def activation(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, batch_size, generator=None):
        return self.sampler(batch_size, generator, self.W.device, self.W.dtype)

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

    Examples
    --------
    >>> import torch
    >>> from capalloc.training.torch_models import ActivationModel
    >>> model = ActivationModel(torch.ones(2, 3), torch.zeros(2), d=2, activation="gelu")
    >>> model.loss(model.sample(4)).shape
    torch.Size([2])
    """

    _FUNCTIONS = {"relu": torch.relu, "gelu": nn.functional.gelu}

    def __init__(
        self, importance, sparsity, d, generator=None, *, activation: str = "relu", **options
    ):
        if activation not in self._FUNCTIONS:
            raise ValueError(
                f"activation must be one of {sorted(self._FUNCTIONS)}, got {activation!r}"
            )
        super().__init__(importance, sparsity, d, generator, **options)
        self.activation_name = activation
        self._f = self._FUNCTIONS[activation]

    def activation(self, t):
        return self._f(t)


@register_model("relu")
def _relu_model(importance, sparsity, d, generator=None, **options):
    return ActivationModel(importance, sparsity, d, generator, activation="relu", **options)


@register_model("gelu")
def _gelu_model(importance, sparsity, d, generator=None, **options):
    return ActivationModel(importance, sparsity, d, generator, activation="gelu", **options)


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

    _correlated_inputs = True

    def __init__(self, importance, sparsity, d, generator=None, **options):
        super().__init__(importance, sparsity, d, generator, **options)
        self.b = nn.Parameter(
            torch.zeros(self.m, self.n, device=importance.device, dtype=importance.dtype)
        )

    def sample(self, batch_size, generator=None):
        r"""Inputs of shape ``(m, batch_size, n)``: :math:`x_i = u_i [v_i \ge s_i]`.

        :math:`u_i, v_i \sim U[0, 1]` and :math:`s_i` = ``feature_sparsity``, so
        feature ``i`` is active with probability :math:`p_i = 1 - s_i`. With
        ``correlation`` :math:`c \ne 0` the second feature of each pair
        ``(2k, 2k + 1)`` reuses its partner's mask variable with probability
        :math:`|c|`: :math:`v_{2k+1} = v_{2k}` for :math:`c > 0` (same mask when
        :math:`p_{2k} = p_{2k+1}`: the indicator correlation is :math:`c`), or
        :math:`v_{2k+1} = 1 - v_{2k}` for :math:`c < 0` (never active together when
        :math:`p_{2k} + p_{2k+1} \le 1`: indicator correlation
        :math:`c\,p/(1 - p)` at equal :math:`p`). Each feature keeps its :math:`p_i`.
        """
        shape = (self.m, batch_size, self.n)
        dev, dt = self.sparsity.device, self.sparsity.dtype
        u = torch.rand(shape, generator=generator, device=dev, dtype=dt)
        v = torch.rand(shape, generator=generator, device=dev, dtype=dt)
        if self.correlation and self.n >= 2:
            half = self.n // 2
            first, second = v[..., 0 : 2 * half : 2], v[..., 1 : 2 * half : 2]
            coupled = torch.rand(
                (self.m, batch_size, half), generator=generator, device=dev, dtype=dt
            ) < abs(self.correlation)
            partner = first if self.correlation > 0 else 1.0 - first
            v[..., 1 : 2 * half : 2] = torch.where(coupled, partner, second)
        return u * (v >= self.feature_sparsity[:, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x = \mathrm{ReLU}(W^\top W x + b)`, shape ``(m, B, n)``."""
        return torch.relu(self.embed(x) @ self.W + self.b[:, None, :])

    def loss(self, x):
        err = (x - self.forward(x)) ** 2
        return (err * self.importance[:, None, :]).sum(-1).mean(-1)


@register_model("neuron")
class NeuronModel(ReluAutoencoder):
    r"""Elhage et al.'s privileged-basis model: :math:`h = \mathrm{ReLU}(W x + c)`,
    :math:`\hat x = \mathrm{ReLU}(W^\top h + b)`.

    The ReLU on the ``d`` hidden units makes the neuron basis privileged, so
    neurons (rows of ``W``) can be mono- or polysemantic
    (:func:`capalloc.neurons.neuron_monosemanticity`). Inputs and loss are those of
    :class:`ReluAutoencoder`. The hidden bias :math:`c` (``hidden_bias``, shape
    ``(m, d)``) is there only when ``hidden_bias`` is given (its initial value,
    e.g. negative for Jermyn et al.'s intervention); by default :math:`c = 0`
    and is not trained, as in Elhage et al. ``activation_l1`` adds an L1 penalty on
    :math:`h` to the loss (default 0).

    Examples
    --------
    >>> import torch
    >>> from capalloc.training.torch_models import NeuronModel
    >>> model = NeuronModel(torch.ones(2, 4), torch.full((2,), 0.5), d=3, hidden_bias=-0.1)
    >>> model(model.sample(8)).shape, tuple(model.c.shape)
    (torch.Size([2, 8, 4]), (2, 3))
    """

    c: torch.Tensor | None

    def __init__(
        self,
        importance,
        sparsity,
        d,
        generator=None,
        *,
        hidden_bias=None,
        activation_l1: float = 0.0,
        **options,
    ):
        super().__init__(importance, sparsity, d, generator, **options)
        self.activation_l1 = float(check_positive(activation_l1, "activation_l1", strict=False))
        if hidden_bias is None:
            self.c = None
        else:
            value = float(hidden_bias)
            if not math.isfinite(value):
                raise ValueError(f"hidden_bias must be a finite number, got {hidden_bias!r}")
            self.c = nn.Parameter(
                torch.full((self.m, d), value, device=importance.device, dtype=importance.dtype)
            )

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`h = \mathrm{ReLU}(W x + c)`, shape ``(m, B, d)``."""
        pre = self.embed(x)
        return torch.relu(pre if self.c is None else pre + self.c[:, None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x = \mathrm{ReLU}(W^\top h + b)`, shape ``(m, B, n)``."""
        return torch.relu(self.hidden(x) @ self.W + self.b[:, None, :])

    def loss(self, x):
        r"""Importance-weighted squared error, plus :math:`\lambda \sum_k h_k` with
        ``activation_l1`` :math:`\lambda` (Lecomte et al.'s L1 penalty on activations)."""
        if not self.activation_l1:
            return super().loss(x)
        h = self.hidden(x)
        err = (x - torch.relu(h @ self.W + self.b[:, None, :])) ** 2
        fit = (err * self.importance[:, None, :]).sum(-1).mean(-1)
        return fit + self.activation_l1 * h.sum(-1).mean(-1)


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
    dtype: Any = torch.float32,
    generator: torch.Generator | None = None,
    density: Any = None,
    correlation: float = 0.0,
    init_std: float | None = None,
    hidden_bias: float | None = None,
    activation_l1: float = 0.0,
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
    device : str or torch.device, default "cpu"
        Checked by :func:`resolve_device`.
    dtype : torch.dtype or {"float32", "float64"}, default torch.float32
    generator : torch.Generator, optional
        Source of the initial weights.
    density : float, (n,) or (m, n) array_like of float, optional
        Per-feature probability :math:`p_i` that a feature is active, in (0, 1];
        replaces ``sparsity`` (whose per-instance value becomes :math:`1 - \bar p`).
    correlation : float in [-1, 1], default 0.0
        Mask coupling of the feature pairs ``(2k, 2k + 1)`` (``"relu-ae"`` and
        ``"neuron"`` only; see :meth:`ReluAutoencoder.sample`).
    init_std : float, optional
        Standard deviation of the initial weights (default Xavier normal).
    hidden_bias : float, optional
        ``"neuron"`` only: train a hidden bias, initialised to this value.
    activation_l1 : float >= 0, default 0.0
        ``"neuron"`` only: L1 penalty on the hidden activations.

    Returns
    -------
    ToyModel

    Raises
    ------
    ValueError
        Unknown ``model_name``, bad ``d``, ``importance``, ``sparsity``,
        ``instances``, ``device`` or ``dtype``.

    Examples
    --------
    >>> from capalloc.training.torch_models import build_model
    >>> model = build_model("relu", [1.0, 0.5, 0.2], d=2, sparsity=[0.0, 0.9])
    >>> model.m, model.n, tuple(model.W.shape)
    (2, 3, (2, 2, 3))
    """
    factory = get_model(model_name)
    d = check_positive(d, "d", integer=True)
    v = check_importance(importance, ndim=(1, 2))
    m = int(check_positive(instances, "instances", integer=True))
    options: dict[str, Any] = {}
    if density is not None:
        p = as_float_array(density, "density", ndim=(0, 1, 2))
        if p.size and (p.min() <= 0 or p.max() > 1):
            bad = float(p[(p <= 0) | (p > 1)].ravel()[0])
            raise ValueError(f"density must lie in (0, 1], found {bad!r} in {short(p)}")
        if p.ndim == 2:
            if v.ndim == 2 and v.shape[0] != p.shape[0]:
                raise ValueError(
                    f"density of shape {p.shape} disagrees with importance of shape {v.shape}"
                )
            m = p.shape[0]
        elif v.ndim == 2:
            m = v.shape[0]
        n = v.shape[-1]
        if p.ndim and p.shape[-1] != n:
            raise ValueError(f"density of shape {p.shape} must end in n={n}")
        p = np.broadcast_to(p, (m, n))
        sparsity = 1.0 - p.mean(axis=1)
    if not -1 <= correlation <= 1 or isinstance(correlation, bool):
        raise ValueError(f"correlation must lie in [-1, 1], got {short(correlation)}")
    if correlation:
        options["correlation"] = float(correlation)
    if init_std is not None:
        options["init_std"] = check_positive(init_std, "init_std")
    if hidden_bias is not None:
        if model_name != "neuron":
            raise ValueError(f"hidden_bias is a setting of the 'neuron' model, not {model_name!r}")
        options["hidden_bias"] = hidden_bias
    if activation_l1:
        if model_name != "neuron":
            raise ValueError(
                f"activation_l1 is a setting of the 'neuron' model, not {model_name!r}"
            )
        options["activation_l1"] = check_positive(activation_l1, "activation_l1", strict=False)
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
    dt = _torch_dtype(dtype)
    tv = torch.as_tensor(np.array(v), dtype=dt, device=dev)
    ts = torch.as_tensor(s, dtype=dt, device=dev)
    if density is not None:
        options["density"] = torch.as_tensor(np.array(p), dtype=dt, device=dev)
    return factory(tv, ts, d, generator=generator, **options)


# ---------------------------------------------------------------------------
# The one training loop
# ---------------------------------------------------------------------------


def _optimizer(model: ToyModel | Penalised, config: TrainConfig) -> tuple[Any, list[Any]]:
    """The torch optimiser of ``config`` and the decoupled decays ``[(params, decay)]``."""
    lr = config.lr_at(0)
    if config.optimizer == "adam" and not config.weight_decay and not config.bias_decay:
        return torch.optim.Adam(model.parameters(), lr=lr), []  # 0.1.0's optimiser, as it was
    weights = [model.W]
    biases = [p for p in model.parameters() if p is not model.W]
    if config.optimizer == "adamw":
        decoupled = [
            (ps, decay)
            for ps, decay in ((weights, config.weight_decay), (biases, config.bias_decay))
            if decay and ps
        ]
        return torch.optim.Adam(model.parameters(), lr=lr), decoupled
    groups = [
        {"params": weights, "weight_decay": config.weight_decay},
        {"params": biases, "weight_decay": config.bias_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr), []
    return torch.optim.Adam(groups, lr=lr), []


class Penalised(nn.Module):
    r"""A model trained on its loss plus a per-instance penalty, :math:`L(x) + P(\text{model})`.

    :func:`fit` trains the wrapped model's parameters; sampling, ``W`` and ``m`` are the
    wrapped model's. ``penalty(model, loss)`` gets the wrapped model and its unpenalised
    loss and returns one value per instance, shape ``(m,)``.

    Examples
    --------
    >>> import torch
    >>> from capalloc.training.torch_models import Penalised, build_model
    >>> inner = build_model("relu-ae", [1.0, 0.5], d=1, sparsity=0.5, instances=2)
    >>> wrapped = Penalised(inner, lambda model, loss: (model.W**2).sum((-2, -1)))
    >>> wrapped.loss(wrapped.sample(8)).shape, wrapped.m
    (torch.Size([2]), 2)
    """

    def __init__(self, inner: ToyModel, penalty: Any) -> None:
        super().__init__()
        self.inner = inner
        self.penalty = penalty

    @property
    def W(self) -> torch.Tensor:
        return self.inner.W

    @property
    def m(self) -> int:
        return self.inner.m

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.inner.sample(batch_size, generator)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        plain = self.inner.loss(x)
        return plain + self.penalty(self.inner, plain)


def fit(
    model: ToyModel | Penalised,
    config: TrainConfig,
    *,
    generator: torch.Generator | None = None,
    sample: Callable[[int, Any], torch.Tensor] | None = None,
    desc: str = "train",
) -> np.ndarray:
    r"""Train ``model`` in place with Adam on fresh minibatches: the package's one training loop.

    Step ``t`` draws ``config.batch_size`` inputs, evaluates the per-instance
    losses ``model.loss(x)`` (shape ``(m,)``) and takes an Adam step (or the
    ``config.optimizer`` step, with ``config.weight_decay`` on ``W`` and
    ``config.bias_decay`` on the biases) on their sum at learning rate
    ``config.lr_at(t)``, so every instance follows its own
    loss. While it runs torch uses ``config.num_threads`` CPU threads (its
    setting is restored afterwards; ``None`` leaves it alone): these models are
    far too small to gain from threads, and on a busy machine spinning threads
    slow a step several times over.

    Parameters
    ----------
    model : ToyModel
        Any model with parameters, ``m``, ``W``, ``sample`` and a per-instance ``loss``.
    config : TrainConfig
        ``steps``, ``batch_size``, ``lr``, ``lr_final``, ``warmup``, ``seed``,
        ``num_threads`` and ``progress`` are used.
    generator : torch.Generator, optional
        Source of the batches; default a generator on the model's device seeded with ``config.seed``.
    sample : callable, optional
        ``sample(batch_size, generator)`` returning inputs for ``model.loss``;
        default ``model.sample``.
    desc : str, default "train"
        Label of the progress bar.

    Returns
    -------
    history : (m, steps) ndarray
        Minibatch loss of every instance at every step.

    Raises
    ------
    TypeError
        ``config`` is not a :class:`~capalloc.training.TrainConfig`.

    Examples
    --------
    >>> from capalloc.training import TrainConfig
    >>> from capalloc.training.torch_models import build_model, fit
    >>> model = build_model("quadratic", [1.0, 0.5], d=1, sparsity=0.5, instances=3)
    >>> history = fit(model, TrainConfig(steps=200, batch_size=256, lr=0.03))
    >>> history.shape, bool((history[:, -20:].mean() < history[:, :20].mean()))
    ((3, 200), True)
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {short(config)}")
    draw = model.sample if sample is None else sample
    dev = model.W.device
    if generator is None:
        generator = torch.Generator(device=dev)
        generator.manual_seed(config.seed)
    opt, decoupled = _optimizer(model, config)
    history = torch.empty(config.steps, model.m, device=dev, dtype=model.W.dtype)
    steps: Any = range(config.steps)
    if config.progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, unit="step", leave=False)
    previous = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        for step in steps:
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            loss = model.loss(draw(config.batch_size, generator))
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            if decoupled:  # AdamW's decay, by hand so that it may be negative
                with torch.no_grad():
                    for params, decay in decoupled:
                        for param in params:
                            param.mul_(1.0 - config.lr_at(step) * decay)
            opt.step()
            history[step] = loss.detach()
            if config.progress and (step % 50 == 0 or step == config.steps - 1):
                steps.set_postfix(loss=f"{float(loss.detach().mean()):.4g}")
    finally:
        if config.num_threads is not None:
            torch.set_num_threads(previous)
    return history.T.to("cpu", torch.float64).numpy()


def train_model(
    model_name: str,
    importance: Any = None,
    d: int = 10,
    sparsity: Any = 0.9,
    *,
    n: int | None = None,
    instances: int = 1,
    config: TrainConfig | None = None,
    cap_tol: float = 0.05,
    norm_tol: float = 1e-2,
    block_tol: float = 0.05,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_final: float | None = None,
    device: Any = None,
    seed: int | None = None,
    progress: bool | None = None,
    eval_batch: int | None = None,
    dtype: Any = None,
    num_threads: int | None = None,
    density: Any = None,
    correlation: float = 0.0,
    hidden_bias: float | None = None,
    activation_l1: float = 0.0,
) -> TrainResult:
    r"""Train ``instances`` copies of a toy model with :func:`fit` and report its capacities.

    Each step draws a fresh batch; with the default settings the learning rate
    follows a cosine decay from ``lr`` to ``lr * lr_final``. The loss summed
    over instances is minimised, which trains each instance on its own loss.

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
    config : TrainConfig, optional
        Settings of the run; default ``TrainConfig()`` (3000 steps of 1024
        samples, ``lr = 0.01`` decaying to ``5e-4``, seed 0, CPU, float32, one
        torch thread, final loss on 8192 samples).
    cap_tol, norm_tol : float, default 0.05, 0.01
        Tolerances of the result's labels (:func:`trained_labels`).
    block_tol : float, default 0.05
        Tolerance of the result's blocks (:func:`capalloc.geometry.find_blocks`).
    steps, batch_size, lr, lr_final, device, seed, progress, eval_batch, dtype, num_threads : optional
        The keywords of 0.1.0: each replaces that field of ``config`` (see
        :class:`~capalloc.training.TrainConfig`; to leave torch's thread
        setting alone, pass a config with ``num_threads=None``).
    density, correlation, hidden_bias, activation_l1 : optional
        Per-feature activation probabilities, pair correlation, the neuron
        model's hidden bias and L1 activation penalty (see :func:`build_model`); ``config.init_std`` sets
        the initial weights.

    Returns
    -------
    TrainResult
        ``model=model_name``, ``method="sampled"``; ``loss`` on a fresh batch
        of ``config.eval_batch`` samples, ``loss_history`` of shape ``(m, steps)``.

    Raises
    ------
    ValueError
        Unknown ``model_name`` or a bad setting (the message names it).

    References
    ----------
    .. [1] Scherlis et al., arXiv:2210.01892 (the quadratic model and its variants).
    .. [2] Elhage et al., "Toy Models of Superposition" (2022) (the ReLU autoencoder).

    Examples
    --------
    >>> from capalloc.training.torch_models import train_model
    >>> run = train_model("relu-ae", n=5, d=2, sparsity=[0.0, 0.9], steps=20)
    >>> run.instances, run.polysemantic_fraction.shape, run.config.steps
    (2, (2,), 20)
    """
    cfg = TrainConfig.resolve(
        config,
        TrainConfig(),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lr_final=lr_final,
        device=device,
        seed=seed,
        progress=progress,
        eval_batch=eval_batch,
        dtype=dtype,
        num_threads=num_threads,
    )
    check_tolerances(cap_tol, norm_tol, block_tol)
    if importance is None:
        importance = default_importance(20 if n is None else check_positive(n, "n", integer=True))
    elif n is not None and np.shape(importance)[-1] != n:
        raise ValueError(f"n={n!r} disagrees with importance of shape {np.shape(importance)}")
    dev = resolve_device(cfg.device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(cfg.seed)
    model = build_model(
        model_name,
        importance,
        d,
        sparsity,
        instances=instances,
        device=dev,
        dtype=cfg.dtype,
        generator=gen,
        density=density,
        correlation=correlation,
        init_std=cfg.init_std,
        hidden_bias=hidden_bias,
        activation_l1=activation_l1,
    )
    start = time.perf_counter()
    history = fit(model, cfg, generator=gen, desc=f"train {model_name}")
    with torch.no_grad():
        final = model.loss(model.sample(cfg.eval_batch, gen)).cpu().numpy().astype(float)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - start

    def host(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(float)

    return TrainResult(
        W=host(model.W),
        bias=host(model.b),
        loss=final,
        loss_history=history,
        restart_losses=final[:, None],
        importance=host(model.importance),
        method="sampled",
        model=model_name,
        nit=cfg.steps,
        device=str(dev),
        message=f"{cfg.steps} Adam steps",
        elapsed=elapsed,
        config=cfg,
        sparsity=host(model.sparsity),
        density=None if density is None else 1.0 - host(model.feature_sparsity),
        hidden_bias=None if getattr(model, "c", None) is None else host(model.c),  # type: ignore[arg-type]
        cap_tol=cap_tol,
        norm_tol=norm_tol,
        block_tol=block_tol,
    )
