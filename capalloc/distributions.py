r"""Input laws for independent features with mean 0 and variance 1.

Only the fourth moment :math:`K = E[x_i^4]` (plain kurtosis) enters the
quadratic model's expected loss, so every law here carries its exact moments
and a seeded sampler. Sparsity enters through kurtosis: a feature that is
active with probability ``p``, :math:`x = B z / \sqrt p`, has
:math:`K = K_0 / p`.

Examples
--------
>>> from capalloc import distributions as D
>>> D.Sparse(D.Gaussian(), p=0.1).kurtosis
30.0
>>> x = D.Uniform().sample(100_000, 3, seed=0)
>>> x.shape, bool(abs(x.var() - 1) < 0.02)
((100000, 3), True)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capalloc._lib.validation import as_float_array, check_kurtosis, check_probability, short

__all__ = [
    "InputLaw",
    "Gaussian",
    "Uniform",
    "Rademacher",
    "Sparse",
    "ThreePoint",
    "PerFeature",
    "from_kurtosis",
    "kurtosis_vector",
    "sparse_kurtosis",
]


def _numpy_rng(seed: Any) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class InputLaw(ABC):
    """A law of one feature with mean 0 and variance 1 (independent across features)."""

    mean = 0.0
    variance = 1.0

    @property
    @abstractmethod
    def kurtosis(self) -> float:
        """Fourth moment :math:`E[x^4]` (plain kurtosis; 3 for a Gaussian)."""

    @property
    def fourth_moment(self) -> float:
        """Alias of :attr:`kurtosis` (variance is 1)."""
        return self.kurtosis

    @abstractmethod
    def draw_numpy(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Draw a numpy array of ``shape`` from ``rng`` (no checks; :meth:`sample` checks).

        Examples
        --------
        >>> import numpy as np
        >>> from capalloc.distributions import Rademacher
        >>> Rademacher().draw_numpy(np.random.default_rng(0), (2, 3)).shape
        (2, 3)
        """

    @abstractmethod
    def draw_torch(self, gen: Any, shape: tuple[int, ...], device: Any, dtype: Any) -> Any:
        """Draw a torch tensor of ``shape`` from the ``torch.Generator`` ``gen`` on ``device``.

        The building block of the samplers of :mod:`capalloc.training`; :meth:`sample`
        with ``backend="torch"`` is the checked entry point.

        Examples
        --------
        >>> import pytest
        >>> torch = pytest.importorskip("torch")
        >>> from capalloc.distributions import Gaussian
        >>> gen = torch.Generator().manual_seed(0)
        >>> Gaussian().draw_torch(gen, (4, 2), "cpu", torch.float64).dtype
        torch.float64
        """

    def sample(
        self,
        n_samples: int,
        n_features: int,
        seed: Any = None,
        *,
        backend: str = "numpy",
        device: Any = "cpu",
        dtype: Any = None,
    ) -> Any:
        """Draw an ``(n_samples, n_features)`` array of independent features.

        Parameters
        ----------
        n_samples, n_features : int
            Output shape.
        seed : int, numpy.random.Generator or torch.Generator, optional
            Seed or generator; equal seeds give equal samples.
        backend : {"numpy", "torch"}
            Array library of the result.
        device, dtype
            Torch device and dtype (``backend="torch"`` only; default float32).
        """
        shape = (_count(n_samples, "n_samples"), _count(n_features, "n_features"))
        if backend == "numpy":
            return self.draw_numpy(_numpy_rng(seed), shape)
        if backend == "torch":
            import torch

            gen = seed
            if not isinstance(seed, torch.Generator):
                gen = torch.Generator(device=device)
                if seed is None:
                    gen.seed()  # fresh entropy for this generator only; global RNG untouched
                else:
                    gen.manual_seed(int(seed))
            return self.draw_torch(gen, shape, device, dtype or torch.float32)
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Gaussian(InputLaw):
    """Standard normal feature, :math:`K = 3`."""

    @property
    def kurtosis(self) -> float:
        return 3.0

    def draw_numpy(self, rng, shape):
        return rng.standard_normal(shape)

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        return torch.randn(shape, generator=gen, device=device, dtype=dtype)


@dataclass(frozen=True)
class Uniform(InputLaw):
    r"""Uniform on :math:`[-\sqrt 3, \sqrt 3]`, :math:`K = 9/5`."""

    @property
    def kurtosis(self) -> float:
        return 1.8

    def draw_numpy(self, rng, shape):
        return rng.uniform(-math.sqrt(3), math.sqrt(3), shape)

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        u = torch.rand(shape, generator=gen, device=device, dtype=dtype)
        return (2 * u - 1) * math.sqrt(3)


@dataclass(frozen=True)
class Rademacher(InputLaw):
    """Random sign :math:`\\pm 1`, :math:`K = 1` (the smallest possible)."""

    @property
    def kurtosis(self) -> float:
        return 1.0

    def draw_numpy(self, rng, shape):
        return rng.integers(0, 2, shape) * 2.0 - 1.0

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype) * 2 - 1


@dataclass(frozen=True)
class Sparse(InputLaw):
    r"""A base law switched on with probability ``p`` and rescaled to unit variance.

    :math:`x = B z / \sqrt p` with :math:`B \sim \mathrm{Bernoulli}(p)`, so
    :math:`K = K_0 / p`.

    Parameters
    ----------
    base : InputLaw
        Law of the active value ``z``.
    p : float in (0, 1]
        Probability that the feature is active (``1 - p`` is the sparsity).
    """

    base: InputLaw = field(default_factory=Gaussian)
    p: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.base, InputLaw):
            raise TypeError(f"base must be an InputLaw, got {self.base!r}")
        object.__setattr__(self, "p", check_probability(self.p, "p"))

    @property
    def kurtosis(self) -> float:
        return self.base.kurtosis / self.p

    def draw_numpy(self, rng, shape):
        z = self.base.draw_numpy(rng, shape)
        return z * (rng.random(shape) < self.p) / math.sqrt(self.p)

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        z = self.base.draw_torch(gen, shape, device, dtype)
        on = torch.rand(shape, generator=gen, device=device, dtype=dtype) < self.p
        return z * on / math.sqrt(self.p)


@dataclass(frozen=True)
class ThreePoint(InputLaw):
    r"""The symmetric law on :math:`\{-\sqrt K, 0, \sqrt K\}` with kurtosis ``K >= 1``.

    :math:`P(x = \pm\sqrt K) = 1/(2K)`: a sparse Rademacher feature with
    ``p = 1/K``. It realises any kurtosis, so it stands for "a law given by its
    kurtosis".
    """

    K: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", float(check_kurtosis(self.K, "K")))

    @property
    def kurtosis(self) -> float:
        return self.K

    def _as_sparse(self) -> Sparse:
        return Sparse(Rademacher(), 1.0 / self.K)

    def draw_numpy(self, rng, shape):
        return self._as_sparse().draw_numpy(rng, shape)

    def draw_torch(self, gen, shape, device, dtype):
        return self._as_sparse().draw_torch(gen, shape, device, dtype)


def from_kurtosis(K: float) -> InputLaw:
    """A law with kurtosis ``K``: Gaussian for 3, otherwise :class:`ThreePoint`.

    Examples
    --------
    >>> from capalloc.distributions import from_kurtosis
    >>> from_kurtosis(7.5).kurtosis
    7.5
    """
    K = float(check_kurtosis(K, "K"))
    return Gaussian() if K == 3.0 else ThreePoint(K)


def sparse_kurtosis(sparsity: Any, base: InputLaw | float | None = None) -> Any:
    r"""Kurtosis of a feature that is zero with probability ``sparsity``: :math:`K_0 / (1 - S)`.

    Following Elhage et al., the *sparsity* :math:`S` is the fraction of zeros:
    the feature is active with probability :math:`p = 1 - S` and its active value,
    drawn from ``base``, is rescaled to unit variance (the law
    ``Sparse(base, p=1 - S)``), so :math:`K = K_0 / p`. This is the one
    sparsity-to-kurtosis conversion of the package.

    Parameters
    ----------
    sparsity : float or array_like of float
        :math:`S \in [0, 1)`.
    base : InputLaw or float, optional
        Law of the active value, or its kurtosis :math:`K_0 \ge 1`; default
        :class:`Gaussian` (:math:`K_0 = 3`).

    Returns
    -------
    K : float or ndarray
        Same shape as ``sparsity``.

    Examples
    --------
    >>> from capalloc.distributions import Uniform, sparse_kurtosis
    >>> sparse_kurtosis(0.5)
    6.0
    >>> sparse_kurtosis(0.5, Uniform())
    3.6
    >>> sparse_kurtosis([0.0, 0.9], base=1.0).round(6).tolist()
    [1.0, 10.0]
    """
    if base is None:
        base = Gaussian()
    K0 = base.kurtosis if isinstance(base, InputLaw) else float(check_kurtosis(base, "base"))
    S = as_float_array(sparsity, "sparsity")
    if not np.all((S >= 0) & (S < 1)):
        raise ValueError(f"sparsity must lie in [0, 1) (fraction of zeros), got {short(sparsity)}")
    K = K0 / (1.0 - S)
    return float(K) if K.ndim == 0 else K


@dataclass(frozen=True)
class PerFeature(InputLaw):
    """Independent features, each with its own law (per-feature kurtosis ``K_i``).

    Parameters
    ----------
    laws : sequence of InputLaw
        One law per feature.

    Examples
    --------
    >>> from capalloc import distributions as D
    >>> D.PerFeature([D.Gaussian(), D.Uniform()]).kurtosis
    array([3. , 1.8])
    """

    laws: Sequence[InputLaw] = ()

    def __post_init__(self) -> None:
        laws = tuple(self.laws)
        if not laws or not all(isinstance(law, InputLaw) for law in laws):
            raise ValueError(f"laws must be a non-empty sequence of InputLaw, got {self.laws!r}")
        object.__setattr__(self, "laws", laws)

    @property
    def kurtosis(self) -> np.ndarray:  # type: ignore[override]
        return np.array([law.kurtosis for law in self.laws])

    def _check_width(self, shape):
        if shape[1] != len(self.laws):
            raise ValueError(
                f"n_features must equal the number of laws ({len(self.laws)}), got {shape[1]}"
            )

    def draw_numpy(self, rng, shape):
        self._check_width(shape)
        cols = [law.draw_numpy(rng, (shape[0], 1)) for law in self.laws]
        return np.concatenate(cols, axis=1)

    def draw_torch(self, gen, shape, device, dtype):
        import torch

        self._check_width(shape)
        cols = [law.draw_torch(gen, (shape[0], 1), device, dtype) for law in self.laws]
        return torch.cat(cols, dim=1)


def kurtosis_vector(law_or_kurtosis: Any, n: int) -> np.ndarray:
    """Per-feature kurtosis ``(n,)`` from a law, a scalar or an array.

    Examples
    --------
    >>> from capalloc.distributions import kurtosis_vector, Gaussian
    >>> kurtosis_vector(Gaussian(), 2)
    array([3., 3.])
    """
    K = law_or_kurtosis.kurtosis if isinstance(law_or_kurtosis, InputLaw) else law_or_kurtosis
    K = check_kurtosis(K, "kurtosis")
    if K.ndim > 1 or (K.ndim == 1 and K.shape[0] != n):
        raise ValueError(f"kurtosis must be a scalar or have shape ({n},), got shape {K.shape}")
    return np.broadcast_to(K, (n,)).astype(float)
