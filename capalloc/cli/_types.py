"""Argument types shared by the command-line modules (argparse ``type=`` callables).

Each raises :class:`argparse.ArgumentTypeError` naming the value, which argparse turns
into a usage error (exit status 2).

Examples
--------
>>> from capalloc.cli._types import positive, sparsity
>>> positive(int)("3"), sparsity("0.9")
(3, 0.9)
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["MODELS", "non_negative_int", "positive", "positive_int", "sparsity"]

#: The registered toy models the experiments train.
MODELS = ("quadratic", "relu", "gelu", "relu-ae")


def positive(kind: type) -> Any:
    """A parser of positive (and, for floats, finite) numbers of type ``kind``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a positive {kind.__name__}, got {text!r}"
            ) from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


positive_int = positive(int)


def non_negative_int(text: str) -> int:
    """An integer ``>= 0``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def sparsity(text: str) -> float:
    """A sparsity in ``[0, 1)``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must lie in [0, 1), got {text!r}")
    return value
