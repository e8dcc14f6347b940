"""Root pytest configuration: skip the modules of optional extras that are not installed.

``testpaths`` holds ``capalloc`` too (``--doctest-modules``), so pytest imports
every module of the package to collect its doctests; a module that needs an
optional extra (torch: ``pip install -e ".[torch]"``) cannot be imported without
it and is left out here instead of failing collection. Tests of such modules
skip themselves with ``pytest.importorskip``. Hypothesis profiles and shared
fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

#: Modules (relative to this directory) importable only with torch installed.
TORCH_ONLY = ["capalloc/training/torch_models.py"]

collect_ignore: list[str] = []

try:
    import torch  # noqa: F401
except ImportError:  # torch is the optional [torch] extra
    collect_ignore += TORCH_ONLY
