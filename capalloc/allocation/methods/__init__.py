"""The solver methods, one module each, registered with :func:`capalloc.register_method`:
``waterfill`` (exact; numpy for small problems, numba kernels in ``kernels`` for large
ones and batches), ``mixed`` (exact mixed curvature), ``scipy_methods`` (``scipy``: dual
root finding, ``slsqp``) and ``cvxpy_method``.

numba costs about a second to import and its kernels compile on first use (cached on
disk afterwards), so :func:`load_kernels` imports them only when a method needs them.
"""

from __future__ import annotations

import glob
import importlib
import os
import sys
from types import ModuleType

__all__ = ["load_kernels"]

_NOTICE = "capalloc: compiling numba kernels (first run only, cached afterwards)\n"


def _cache_is_cold() -> bool:
    """Whether no compiled kernel is cached yet (numba's cache beside the module, or in
    ``NUMBA_CACHE_DIR``)."""
    here = os.path.join(os.path.dirname(__file__), "__pycache__", "kernels.*.nbi")
    places = [here]
    if os.environ.get("NUMBA_CACHE_DIR"):
        places.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "**", "kernels.*.nbi"))
    return not any(glob.glob(p, recursive=True) for p in places)


def load_kernels() -> ModuleType:
    """The numba kernels module, imported on first use; says so once on stderr when its
    kernels are about to compile for the first time on this machine."""
    name = "capalloc.allocation.methods.kernels"
    module = sys.modules.get(name)
    if module is None:
        if _cache_is_cold():
            sys.stderr.write(_NOTICE)
        module = importlib.import_module(name)
    return module
