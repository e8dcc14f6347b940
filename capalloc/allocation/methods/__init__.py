"""The solver methods, one module each, registered with :func:`capalloc.register_method`:
``waterfill`` (exact, numba kernels in ``kernels``), ``mixed`` (exact mixed curvature),
``scipy_methods`` (``scipy``: dual root finding, ``slsqp``) and ``cvxpy_method``."""
