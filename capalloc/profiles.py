r"""Per-feature profiles (importances, kurtoses) and the SPEC language that names them.

A SPEC is a short text that stands for a vector of floats, as the command line
takes it (``capalloc solve -v SPEC``):

- a comma-separated list: ``"1,0.5,0.25"``;
- a file, ``.npy``, ``.npz`` (one array), ``.txt``, ``.csv`` or ``.tsv``, read by
  :func:`capalloc.io.load_vector`;
- a generator ``NAME:ARG[:ARG]``:

  ===========================  ==============================================
  ``geometric:RATIO:N``        :func:`geometric`, :math:`v_i = r^i`, ``i = 0..N-1``
  ``powerlaw:EXPONENT:N``      :func:`powerlaw`, :math:`v_i = i^{-a}`, ``i = 1..N``
  ``uniform:N[:SEED]``         :func:`uniform`, uniform on [0, 1), seed 0
  ``constant:N[:VALUE]``       :func:`constant`, every entry VALUE (default 1)
  ===========================  ==============================================

Bad SPECs raise ``ValueError`` naming the SPEC, the argument and its value. A
generator's length is known before anything is allocated (:func:`spec_length`),
so callers can refuse sizes that would not fit in memory.

Examples
--------
>>> from capalloc.profiles import parse_profile
>>> parse_profile("geometric:0.5:4").tolist()
[1.0, 0.5, 0.25, 0.125]
>>> parse_profile("3, 2,1").tolist()
[3.0, 2.0, 1.0]
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from capalloc._lib.validation import check_positive, short
from capalloc.io import check_memory, load_vector

__all__ = [
    "FILE_SUFFIXES",
    "GENERATORS",
    "constant",
    "geometric",
    "parse_profile",
    "powerlaw",
    "spec_length",
    "uniform",
]

#: File suffixes that make a SPEC a file name even when the file does not exist.
FILE_SUFFIXES = (".npy", ".npz", ".txt", ".csv", ".tsv")
#: The generators of the SPEC language, as ``name: usage``.
GENERATORS = {
    "geometric": "geometric:RATIO:N",
    "powerlaw": "powerlaw:EXPONENT:N",
    "uniform": "uniform:N[:SEED]",
    "constant": "constant:N[:VALUE]",
}
_USAGE = ", ".join(list(GENERATORS.values())[:-1]) + " or " + list(GENERATORS.values())[-1]


# ----------------------------------------------------------------------------- generators


def _length(n: Any, what: str) -> int:
    """``n`` as a count of values, refused before allocating when it cannot fit in memory."""
    n = check_positive(n, "n", integer=True)
    check_memory(8 * n, f"{what} of {n} float64 values")
    return n


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number, got {short(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {short(value)}")
    return float(value)


def geometric(ratio: float, n: int) -> np.ndarray:
    r"""Geometric profile :math:`v_i = r^i`, ``i = 0, ..., n - 1``.

    Parameters
    ----------
    ratio : float
        :math:`r > 0` (a decay when below 1).
    n : int
        Number of features, ``n >= 1``.

    Returns
    -------
    v : (n,) ndarray of float

    Examples
    --------
    >>> from capalloc.profiles import geometric
    >>> geometric(0.5, 3).tolist()
    [1.0, 0.5, 0.25]
    """
    ratio = check_positive(ratio, "ratio")
    v = np.arange(_length(n, "geometric profile"), dtype=float)
    return np.power(ratio, v, out=v)  # in place: one array of n floats, however long


def powerlaw(exponent: float, n: int) -> np.ndarray:
    r"""Power-law profile :math:`v_i = i^{-a}`, ``i = 1, ..., n`` (Zipf for :math:`a = 1`).

    Parameters
    ----------
    exponent : float
        :math:`a`, any finite number.
    n : int
        Number of features, ``n >= 1``.

    Returns
    -------
    v : (n,) ndarray of float

    Examples
    --------
    >>> from capalloc.profiles import powerlaw
    >>> powerlaw(2.0, 3).round(4).tolist()
    [1.0, 0.25, 0.1111]
    """
    exponent = _finite(exponent, "exponent")
    v = np.arange(1, _length(n, "power-law profile") + 1, dtype=float)
    return np.power(v, -exponent, out=v)


def uniform(n: int, seed: int = 0) -> np.ndarray:
    """Independent uniform draws on [0, 1), reproducible from ``seed``.

    Parameters
    ----------
    n : int
        Number of features, ``n >= 1``.
    seed : int, default 0
        Seed of :func:`numpy.random.default_rng`, ``>= 0``.

    Returns
    -------
    v : (n,) ndarray of float

    Examples
    --------
    >>> from capalloc.profiles import uniform
    >>> v = uniform(1000, seed=3)
    >>> bool(v.min() >= 0 and v.max() < 1), bool(abs(v.mean() - 0.5) < 0.05)
    (True, True)
    """
    seed = check_positive(seed, "seed", integer=True, strict=False)
    return np.random.default_rng(seed).uniform(0.0, 1.0, _length(n, "uniform profile"))


def constant(n: int, value: float = 1.0) -> np.ndarray:
    """Every one of ``n`` entries equal to ``value``.

    Examples
    --------
    >>> from capalloc.profiles import constant
    >>> constant(3, 0.5).tolist()
    [0.5, 0.5, 0.5]
    """
    value = _finite(value, "value")
    return np.full(_length(n, "constant profile"), value)


# ----------------------------------------------------------------------------- SPEC parsing


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {short(text)}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {short(text)}")
    return value


def _count(text: str, what: str, *, minimum: int = 1) -> int:
    """An integer written as digits (or an integral float such as ``1e7``), at least ``minimum``."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{what} must be {kind}, got {short(text)}") from None
        if not (math.isfinite(number) and number.is_integer()):
            raise ValueError(f"{what} must be {kind}, got {short(text)}") from None
        value = int(number)
    if value < minimum:
        raise ValueError(f"{what} must be {kind}, got {short(value)}")
    return value


def _is_file(text: str) -> bool:
    return os.path.exists(text) or os.path.splitext(text)[1].lower() in FILE_SUFFIXES


def _parse(spec: Any, name: str) -> tuple[str, Any, int | None]:
    """``(kind, payload, length)``: a file path, a parsed list, or a checked generator call."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"{name} SPEC must be a string or a path, got {short(spec)}")
    text = os.fspath(spec).strip()
    if not text:
        raise ValueError(f"{name} SPEC is empty")
    if _is_file(text):
        return "file", text, None
    if ":" in text:
        gen, *args = (part.strip() for part in text.split(":"))
        gen = gen.lower()
        where = f"in {name} SPEC {short(text)}"
        if gen in ("geometric", "powerlaw") and len(args) == 2:
            param = "RATIO" if gen == "geometric" else "EXPONENT"
            first = _number(args[0], f"{param} {where}")
            if gen == "geometric" and first <= 0:
                raise ValueError(f"RATIO {where} must be > 0, got {first!r}")
            n = _count(args[1], f"N {where}")
            return gen, (first, n), n
        if gen in ("uniform", "constant") and len(args) in (1, 2):
            n = _count(args[0], f"N {where}")
            if gen == "uniform":
                seed = _count(args[1], f"SEED {where}", minimum=0) if len(args) == 2 else 0
                return gen, (n, seed), n
            value = _number(args[1], f"VALUE {where}") if len(args) == 2 else 1.0
            return gen, (n, value), n
        raise ValueError(f"{name} SPEC {short(text)} is not a generator; use {_USAGE}")
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError(f"{name} SPEC {short(text)} has an empty entry")
    values = [_number(item, f"{name} entry") for item in items]
    return "list", values, len(values)


def spec_length(spec: str | os.PathLike, name: str = "importance") -> int | None:
    """Number of values a SPEC stands for, found without allocating them.

    Parameters
    ----------
    spec : str or path-like
        A SPEC (see the module summary).
    name : str, default "importance"
        What the vector is, for error messages.

    Returns
    -------
    n : int or None
        The length of a list or generator; ``None`` for a file, whose length
        is known only once it is read.

    Raises
    ------
    ValueError
        When the SPEC is malformed (the same errors as :func:`parse_profile`).

    Examples
    --------
    >>> from capalloc.profiles import spec_length
    >>> spec_length("powerlaw:1.1:10000000"), spec_length("1,2,3"), spec_length("v.npy")
    (10000000, 3, None)
    """
    return _parse(spec, name)[2]


def parse_profile(spec: str | os.PathLike, name: str = "importance") -> np.ndarray:
    """The float vector a SPEC stands for: a list, a file or a generator.

    Parameters
    ----------
    spec : str or path-like
        A comma-separated list (``"1,0.5,0.25"``), a ``.npy``/``.npz``/``.txt``/
        ``.csv``/``.tsv`` file, or a generator ``geometric:RATIO:N``,
        ``powerlaw:EXPONENT:N``, ``uniform:N[:SEED]`` or ``constant:N[:VALUE]``.
    name : str, default "importance"
        What the vector is, for error messages (``"kurtosis"``, ...).

    Returns
    -------
    v : (n,) ndarray of float

    Raises
    ------
    ValueError
        A malformed SPEC, or a generator too long for the available memory;
        the message names the SPEC, the argument and its value.

    Examples
    --------
    >>> from capalloc.profiles import parse_profile
    >>> parse_profile("powerlaw:1:3").round(4).tolist()
    [1.0, 0.5, 0.3333]
    >>> parse_profile("constant:2:7").tolist()
    [7.0, 7.0]
    >>> parse_profile("geometric:-1:5")
    Traceback (most recent call last):
    ...
    ValueError: RATIO in importance SPEC 'geometric:-1:5' must be > 0, got -1.0
    """
    kind, payload, _ = _parse(spec, name)
    if kind == "file":
        return load_vector(payload)
    if kind == "list":
        return np.array(payload, dtype=float)
    if kind == "geometric":
        return geometric(*payload)
    if kind == "powerlaw":
        return powerlaw(*payload)
    if kind == "uniform":
        return uniform(*payload)
    return constant(*payload)
