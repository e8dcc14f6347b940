"""Input checks shared by every public entry point.

Each checker raises ``ValueError`` (bad value) or ``TypeError`` (bad type) whose
message names the argument and shows the offending value, so that users never
meet a silent NaN further down.
"""

from __future__ import annotations

import datetime
import math
import numbers
from typing import Any, cast

import numpy as np

__all__ = [
    "as_float_array",
    "check_capacity",
    "check_kurtosis",
    "check_importance",
    "importance_and_max",
    "kurtosis_and_range",
    "check_budget",
    "check_positive",
    "check_probability",
    "short",
    "readonly",
]


def short(value: Any, limit: int = 60) -> str:
    """Return a short printable form of ``value`` for error messages."""
    if isinstance(value, np.ndarray):
        text = np.array2string(value, threshold=6, precision=4)
        text = f"array(shape={value.shape}, {text})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: dtype kinds that numpy would cast to float silently or lossily, but that are not real numbers.
_NOT_REAL_KINDS = {
    "b": "bool",
    "c": "complex",
    "M": "datetime64",
    "m": "timedelta64",
    "U": "str",
    "S": "bytes",
    "V": "structured",
}
#: Elements of an object array refused for the same reason.
_NOT_REAL_TYPES = (
    bool,
    np.bool_,
    str,
    bytes,
    datetime.date,
    datetime.timedelta,
    np.datetime64,
    np.timedelta64,
    type(None),
)


def _not_real(arr: np.ndarray) -> str | None:
    """Why ``arr`` does not hold real numbers (a dtype or element type), or ``None``."""
    if arr.dtype.kind in _NOT_REAL_KINDS:
        return f"{_NOT_REAL_KINDS[arr.dtype.kind]} (dtype {arr.dtype})"
    if arr.dtype.kind == "O":
        for x in arr.flat:
            if isinstance(x, _NOT_REAL_TYPES) or (
                isinstance(x, numbers.Complex) and not isinstance(x, numbers.Real)
            ):
                return f"object array holding {type(x).__name__} {x!r}"
    return None


def as_float_array(
    value: Any, name: str, *, ndim: int | tuple[int, ...] | None = None, min_ndim: int | None = None
) -> np.ndarray:
    """Convert ``value`` to a finite float64 array, checking its number of dimensions.

    Only real numbers are accepted: bool, complex, datetime/timedelta and
    string values (numpy would cast them to 0/1, drop the imaginary part,
    count ticks or parse text) raise ``TypeError``, and so does a masked array
    (its mask would be lost).
    """
    return _float_range(value, name, ndim, min_ndim)[0]


def _float_range(
    value: Any, name: str, ndim: int | tuple[int, ...] | None, min_ndim: int | None
) -> tuple[np.ndarray, float, float]:
    """:func:`as_float_array` and the array's ``(min, max)`` (NaN for an empty array),
    in two passes: NaN propagates through ``min`` and ``max``, and so does an infinity
    to one of them, so no separate finiteness pass is needed."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be a plain array of real numbers, got a masked array "
            f"(shape {value.shape}, {np.ma.count_masked(value)} masked); fill it "
            f"(value.filled(...)) or drop the masked entries"
        )
    wanted = f"{name} must be array-like of real numbers, got"
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{wanted} {short(value)}") from exc
    why = _not_real(raw)
    if why is not None:
        raise TypeError(f"{wanted} {why}: {short(value)}")
    try:
        arr = raw.astype(np.float64, copy=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{wanted} {short(value)}") from exc
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and arr.ndim not in allowed:
        raise ValueError(
            f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
            f"got ndim={arr.ndim} (shape {arr.shape})"
        )
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape}")
    if not arr.size:
        return arr, math.nan, math.nan
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = float(arr[~np.isfinite(arr)].ravel()[0])
        raise ValueError(f"{name} must be finite, found {bad!r} in {short(arr)}")
    return arr, lo, hi


def check_importance(
    value: Any, name: str = "importance", ndim: tuple[int, ...] | None = (1,)
) -> np.ndarray:
    """Finite, non-negative importances."""
    return importance_and_max(value, name, ndim)[0]


#: Bit patterns (as unsigned 64-bit integers) of the finite non-negative doubles are
#: exactly those below +inf's; their order is the order of the values.
_INF_BITS = np.uint64(0x7FF0000000000000)


def importance_and_max(
    value: Any, name: str = "importance", ndim: tuple[int, ...] | None = (1,)
) -> tuple[np.ndarray, float]:
    """:func:`check_importance` and the largest importance (0 when empty).

    One pass for float64 input: the largest bit pattern, read as an unsigned integer, is
    below +inf's exactly when every value is finite and non-negative (a sign bit, NaN
    or infinity makes it larger), and it is then the bit pattern of the largest value.
    Otherwise (and for ``-0.0``, which has the sign bit) two passes find the culprit.
    """
    if type(value) in (np.ndarray, np.memmap) and value.dtype == np.float64 and value.size:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if allowed is None or value.ndim in allowed:
            top = value.view(np.uint64).max()
            if top < _INF_BITS:
                return value, float(np.array(top, dtype=np.uint64).view(np.float64))
    arr, lo, hi = _float_range(value, name, ndim, None)
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, found {lo!r} in {short(arr)}")
    return arr, (hi if arr.size else 0.0)


def check_kurtosis(value: Any, name: str = "kurtosis") -> np.ndarray:
    """Finite kurtosis values ``E[x^4] >= 1`` (no law with unit variance has less)."""
    return kurtosis_and_range(value, name)[0]


def kurtosis_and_range(value: Any, name: str = "kurtosis") -> tuple[np.ndarray, float, float]:
    """:func:`check_kurtosis` and the smallest and largest value (NaN when empty)."""
    arr, lo, hi = _float_range(value, name, None, None)
    if lo < 1:
        raise ValueError(
            f"{name} must be >= 1 (E[x^4] >= E[x^2]^2 = 1), found {lo!r} in {short(arr)}"
        )
    return arr, lo, hi


def check_capacity(value: Any, name: str = "C") -> np.ndarray:
    """Finite capacities in ``[0, 1]``."""
    arr = as_float_array(value, name)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        bad = float(arr[(arr < 0) | (arr > 1)].ravel()[0])
        raise ValueError(f"{name} must lie in [0, 1], found {bad!r}")
    return arr


#: The largest budget or count accepted: integers above it are not exact as floats.
MAX_COUNT = 2**53


def check_budget(value: Any, name: str = "d") -> int:
    """A non-negative integer budget (number of embedding dimensions); ``2.0`` is taken as 2."""
    if isinstance(value, (bool, np.bool_)):  # a Real with an integer value, yet never a count
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(cast(float, value))  # the stubs of numbers.Real lack int()
        else:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value > MAX_COUNT:  # beyond exact float arithmetic (and any real embedding)
        raise ValueError(f"{name} must be at most 2**53, got {short(value)}")
    return int(value)


def check_positive(value: Any, name: str, *, integer: bool = False, strict: bool = True) -> Any:
    """A positive scalar (``> 0``, or ``>= 0`` when ``strict`` is false)."""
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if (
        isinstance(value, bool)
        or not ok_type
        or not (isinstance(value, numbers.Integral) or math.isfinite(value))
    ):
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a finite positive {kind}, got {value!r}")
    if value < 0 or (strict and value == 0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {value!r}")
    return int(value) if integer else float(value)


def check_probability(value: Any, name: str = "p") -> float:
    """A probability in (0, 1]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (0 < cast(float, value) <= 1)
    ):  # stubs: Real does not compare with int
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def readonly(x: Any, dtype: Any = None, copy: bool | str = True) -> Any:
    """A read-only C-ordered copy of an array (of ``dtype`` when given); other values pass through.

    ``copy=False`` freezes an array the caller owns in place (no copy where the
    dtype already matches); ``copy="shared"`` returns an array that is already
    read-only, C-contiguous and of ``dtype`` as it is (a view), and copies any other.
    """
    if copy == "shared" and isinstance(x, np.ndarray) and not x.flags.writeable:
        if x.flags.c_contiguous and (dtype is None or x.dtype == np.dtype(dtype)):
            return x.view()
    if isinstance(x, np.ndarray) or dtype is not None:
        # copies are C-ordered: kernels read rows
        x = np.array(x, dtype=dtype, copy=True, order="C") if copy else np.asarray(x, dtype)
        x.setflags(write=False)
    return x
