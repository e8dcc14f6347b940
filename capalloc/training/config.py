r"""The settings of every trainer in :mod:`capalloc.training`, in one frozen dataclass.

One :class:`TrainConfig` drives both the Adam/minibatch loop
(:func:`capalloc.training.torch_models.fit`, used by ``train_model`` and by
``train_quadratic(method="sampled")``) and the exact L-BFGS-B training of
``train_quadratic(method="exact")``. It holds plain Python values only, so it
needs no torch and can be pickled into worker processes.

The learning-rate schedule is the one of :meth:`TrainConfig.lr_at`: a linear
warm-up over the first ``warmup`` fraction of the steps, then a cosine decay
from ``lr`` to ``lr * lr_final``.

Examples
--------
>>> from capalloc.training import TrainConfig
>>> config = TrainConfig(steps=100, lr=0.1, lr_final=0.0, warmup=0.1)
>>> [round(config.lr_at(t), 4) for t in (0, 9, 10, 55, 99)]
[0.01, 0.1, 0.1, 0.05, 0.0]
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from capalloc._lib.validation import check_positive, short

__all__ = ["TrainConfig"]

#: Floating-point types a torch trainer accepts, by name.
_DTYPES = ("float32", "float64")
#: Optimisers of the torch training loop.
_OPTIMIZERS = ("adam", "adamw", "sgd")


def _fraction(value: Any, name: str, *, below_one: bool) -> float:
    """A number in ``[0, 1]`` (``[0, 1)`` when ``below_one``)."""
    x = check_positive(value, name, strict=False)
    if x > 1 or (below_one and x == 1):
        raise ValueError(f"{name} must lie in [0, {'1)' if below_one else '1]'}, got {value!r}")
    return x


def _device_name(device: Any) -> str:
    """``"cpu"``, ``"cuda:0"``, ... from a string or a ``torch.device`` (checked when training)."""
    if isinstance(device, str) and device:
        return device
    if type(device).__name__ == "device" and hasattr(device, "type"):  # a torch.device
        return str(device)
    raise ValueError(
        f"device must name a torch device such as 'cpu' or 'cuda', got {short(device)}"
    )


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from a name or a ``torch.dtype``."""
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in _DTYPES or not (isinstance(dtype, str) or str(dtype).startswith("torch.")):
        raise ValueError(f"dtype must be one of {list(_DTYPES)} or torch.float32/64, got {dtype!r}")
    return name


@dataclass(frozen=True)
class TrainConfig:
    r"""Settings of a training run: optimiser, schedule, seed, device and precision.

    Every entry point has its own defaults (see ``DEFAULT_CONFIGS`` in
    :mod:`capalloc.training.train` and :func:`~capalloc.training.torch_models.train_model`);
    the class defaults are those of ``train_model``. Values are checked on
    construction (``ValueError`` naming the field); the device is resolved only
    when training starts, so a config needs no torch.

    Parameters
    ----------
    steps : int, default 3000
        Adam steps, or the cap on L-BFGS-B iterations of exact training.
    batch_size : int, default 1024
        Samples per Adam step.
    lr : float, default 0.01
        Peak learning rate.
    lr_final : float in [0, 1], default 0.05
        Learning rate at the end of the cosine decay, as a fraction of ``lr``.
    warmup : float in [0, 1), default 0.0
        Fraction of the steps spent in a linear warm-up from ``lr / w`` to ``lr``
        (``w`` the number of warm-up steps).
    seed : int, default 0
        Seeds the initial weights and every batch.
    device : str or torch.device, default "cpu"
        Torch device (stored by name); ``"cuda"`` without a GPU raises when training starts.
    dtype : {"float32", "float64"} or torch.dtype, default "float32"
        Precision of torch training (stored by name; exact training is float64).
    restarts : int, default 1
        Random initialisations per instance (the best is kept; ``train_quadratic`` only).
    tol : float, default 1e-12
        L-BFGS-B ``gtol`` of exact training, on the loss rescaled to :math:`\max v = 1`.
    polish : bool, default True
        Newton steps after L-BFGS-B in exact training.
    eval_batch : int, default 8192
        Samples of the batch on which ``train_model`` measures the final loss.
    num_threads : int or None, default 1
        CPU threads torch may use while training (restored afterwards); ``None``
        leaves torch's setting alone.
    progress : bool, default False
        Show a tqdm progress bar.
    optimizer : {"adam", "adamw", "sgd"}, default "adam"
        The optimiser of :func:`~capalloc.training.torch_models.fit`. ``"adam"`` and
        ``"sgd"`` add ``weight_decay`` as an L2 penalty :math:`\tfrac{\lambda}{2}\|W\|^2`
        (so it must be ``>= 0``: a negative penalty makes the loss unbounded below);
        ``"adamw"`` decays decoupled, :math:`W \leftarrow (1 - \eta_t \lambda) W` before
        each Adam step, and takes any real :math:`\lambda` (Liu, Liu & Gore use
        :math:`\lambda \in [-1, 1]` to move between weak and strong superposition).
    weight_decay : float, default 0.0
        :math:`\lambda`, applied to the embedding ``W``.
    bias_decay : float, default 0.0
        The same for the biases (the decay of Jermyn et al.'s bias intervention).
    init_std : float or None, default None
        Standard deviation of the normal initial weights; ``None`` is Xavier normal,
        :math:`\sqrt{2/(n + d)}`.

    Examples
    --------
    >>> from capalloc.training import TrainConfig
    >>> config = TrainConfig(steps=500, seed=3)
    >>> config.replace(lr=0.03).lr, config.steps
    (0.03, 500)
    >>> TrainConfig(steps=0)
    Traceback (most recent call last):
    ValueError: steps must be > 0, got 0
    """

    steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-2
    lr_final: float = 0.05
    warmup: float = 0.0
    seed: int = 0
    device: Any = "cpu"
    dtype: Any = "float32"
    restarts: int = 1
    tol: float = 1e-12
    polish: bool = True
    eval_batch: int = 8192
    num_threads: int | None = 1
    progress: bool = False
    optimizer: str = "adam"
    weight_decay: float = 0.0
    bias_decay: float = 0.0
    init_std: float | None = None

    def __post_init__(self) -> None:
        checked = {
            "steps": check_positive(self.steps, "steps", integer=True),
            "batch_size": check_positive(self.batch_size, "batch_size", integer=True),
            "lr": check_positive(self.lr, "lr"),
            "lr_final": _fraction(self.lr_final, "lr_final", below_one=False),
            "warmup": _fraction(self.warmup, "warmup", below_one=True),
            "seed": check_positive(self.seed, "seed", integer=True, strict=False),
            "device": _device_name(self.device),
            "dtype": _dtype_name(self.dtype),
            "restarts": check_positive(self.restarts, "restarts", integer=True),
            "tol": check_positive(self.tol, "tol"),
            "eval_batch": check_positive(self.eval_batch, "eval_batch", integer=True),
            "num_threads": None
            if self.num_threads is None
            else check_positive(self.num_threads, "num_threads", integer=True),
        }
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {list(_OPTIMIZERS)}, got {short(self.optimizer)}"
            )
        for decay in ("weight_decay", "bias_decay"):
            value = getattr(self, decay)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{decay} must be a finite number, got {short(value)}")
            if not math.isfinite(value):
                raise ValueError(f"{decay} must be a finite number, got {value!r}")
            if value < 0 and self.optimizer != "adamw":
                raise ValueError(
                    f"{decay}={value!r} < 0 is an L2 penalty unbounded below with "
                    f"optimizer={self.optimizer!r}; use optimizer='adamw' for negative decay"
                )
            checked[decay] = float(value)
        if self.init_std is not None:
            checked["init_std"] = check_positive(self.init_std, "init_std")
        for flag in ("polish", "progress"):
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {short(value)}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked like a new config).

        Raises
        ------
        ValueError
            A name that is not a field, or a bad value.

        Examples
        --------
        >>> from capalloc.training import TrainConfig
        >>> TrainConfig().replace(steps=10, seed=1).seed
        1
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"TrainConfig has no field {unknown[0]!r}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def resolve(
        cls, config: TrainConfig | None, default: TrainConfig, **overrides: Any
    ) -> TrainConfig:
        """The settings of an entry point: ``config`` (``default`` when it is ``None``) with
        every keyword that is not ``None`` replaced (``polish`` and ``progress`` taken as bools).

        This is how the keywords of 0.1.0 (``steps=...``, ``seed=...``) keep working next
        to ``config=``.

        Raises
        ------
        TypeError
            ``config`` is neither ``None`` nor a :class:`TrainConfig`.
        ValueError
            An unknown keyword or a bad value.

        Examples
        --------
        >>> from capalloc.training import TrainConfig
        >>> TrainConfig.resolve(None, TrainConfig(steps=50), seed=2, lr=None).steps
        50
        """
        if config is not None and not isinstance(config, cls):
            raise TypeError(f"config must be a TrainConfig, got {short(config)}")
        for flag in ("polish", "progress"):
            if overrides.get(flag) is not None:
                overrides[flag] = bool(overrides[flag])
        base = default if config is None else config
        return base.replace(
            **{name: value for name, value in overrides.items() if value is not None}
        )

    @property
    def warmup_steps(self) -> int:
        """Number of warm-up steps, :math:`\\lfloor \\text{warmup} \\cdot \\text{steps}\\rfloor`.

        Examples
        --------
        >>> from capalloc.training import TrainConfig
        >>> TrainConfig(steps=4000, warmup=0.02).warmup_steps
        80
        """
        return math.floor(self.warmup * self.steps + 1e-9)

    def lr_at(self, step: int) -> float:
        r"""Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay.

        With ``w`` warm-up steps: :math:`\text{lr}\,(t + 1)/w` for :math:`t < w`,
        then :math:`\text{lr}\,[f + (1 - f)(1 + \cos \pi s)/2]` with
        :math:`s = (t - w)/(\text{steps} - w)` and ``f = lr_final``.

        Examples
        --------
        >>> from capalloc.training import TrainConfig
        >>> config = TrainConfig(steps=4, lr=1.0, lr_final=0.5)
        >>> [config.lr_at(t) for t in range(4)]
        [1.0, 0.9267766952966369, 0.75, 0.5732233047033631]
        """
        warm = self.warmup_steps
        if step < warm:
            return self.lr * ((step + 1) / warm)
        angle = math.pi * (step - warm) / max(1, self.steps - warm)
        return self.lr * (self.lr_final + (1.0 - self.lr_final) * 0.5 * (1.0 + math.cos(angle)))
