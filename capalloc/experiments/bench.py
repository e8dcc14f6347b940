r"""Solver benchmark: time and accuracy of every allocation method by problem size.

The logic behind ``benchmarks/bench_solvers.py`` and ``capalloc bench``. The test
problem is the quadratic model with power-law importances
:math:`v_i = i^{-1.1}` (shuffled), budget :math:`d = n/10` and kurtosis
:math:`K = 10` (plus a row with per-feature :math:`K_i \in [3.5, 30]`). Every
method is timed as the best of a few repeats with JIT compilation and imports
done beforehand, and compared with the exact water-filling result.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from capalloc._lib.tables import format_table as _text_table
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.solve import solve

__all__ = [
    "SIZES",
    "QUICK_SIZES",
    "power_law_problem",
    "runs",
    "run_solver_benchmark",
    "sum_ratio",
    "format_table",
]

SIZES = (10**2, 10**3, 10**4, 10**5, 10**6, 10**7)
QUICK_SIZES = (10**2, 10**3, 10**4, 10**5)
METHODS = ("waterfill", "scipy", "cvxpy", "slsqp")
_LIMITS = {"cvxpy": 10**5, "slsqp": 200}  # largest n each reference method is run at
OPTIONS = {"slsqp": {"starts": 1}}  # one SLSQP run: the timing of a single local solve
_CVXPY_BUDGET_S = 60.0  # skip cvxpy where the extrapolated time exceeds this
_BATCH = (10**5, 100)  # (m, n) of the batched row
_QUICK_BATCH = (10**4, 100)


def power_law_problem(
    n: int, *, kurtosis: Any = 10.0, seed: int = 0, m: int | None = None
) -> QuadraticProblem:
    r"""The benchmark problem: :math:`v_i = i^{-1.1}` shuffled, :math:`d = \max(n/10, 1)`.

    Parameters
    ----------
    n : int
        Number of features.
    kurtosis : float or (n,) array_like, default 10
        Kurtosis of every feature, or per feature.
    seed : int, default 0
        Seed of the shuffle.
    m : int, optional
        Batch size; each row is shuffled independently.

    Returns
    -------
    QuadraticProblem

    Examples
    --------
    >>> from capalloc.experiments.bench import power_law_problem
    >>> power_law_problem(1000)
    QuadraticProblem(n=1000, d=100, kurtosis in [10, 10])
    """
    rng = np.random.default_rng(seed)
    v = np.arange(1, n + 1, dtype=float) ** -1.1
    v = rng.permuted(np.broadcast_to(v, (m, n)), axis=1) if m else rng.permutation(v)
    return QuadraticProblem(v, d=max(n // 10, 1), kurtosis=kurtosis)


def runs(method: str, n: int) -> bool:
    """Whether the benchmark runs ``method`` at size ``n`` (the reference methods are capped).

    Examples
    --------
    >>> from capalloc.experiments.bench import runs
    >>> runs("waterfill", 10**7), runs("slsqp", 1000)
    (True, False)
    """
    return n <= _LIMITS.get(method, math.inf)


def _best_time(fn: Callable[[], Any], repeats: int, budget_s: float = 2.0) -> tuple[float, Any]:
    """Best wall time of up to ``repeats`` calls (fewer once ``budget_s`` is spent)."""
    best, out, spent = math.inf, None, 0.0
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best, out


def _warm_up(methods: Iterable[str]) -> None:
    """Compile the numba kernels and import cvxpy outside every timed region."""
    for K in (10.0, np.linspace(3.5, 30, 300)):
        for method in methods:
            if runs(method, 300) and method != "slsqp":
                solve(power_law_problem(300, kurtosis=K), method=method)
    for method in ("waterfill", "scipy"):  # the large-n code paths compile too
        for K in (10.0, np.linspace(3.5, 30, 70_000)):
            solve(power_law_problem(70_000, kurtosis=K), method=method)
    solve(power_law_problem(100, m=4), method="waterfill")


def run_solver_benchmark(
    quick: bool = False, *, max_n: int | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    r"""Time every method at every size and measure its error against water-filling.

    .. math::

        \text{speedup} = t_{\text{cvxpy}} / t_{\text{method}}, \qquad
        \text{error} = \max_i |C_i - C_i^{\text{waterfill}}|

    Parameters
    ----------
    quick : bool, default False
        Sizes up to :math:`10^5`, a batch of :math:`10^4`, fewer repeats and cvxpy
        only where it should take under 10 s (60 s otherwise).
    max_n : int, optional
        Skip sizes above this.
    progress : bool, default True
        Show a tqdm progress bar on stderr.

    Returns
    -------
    list of dict
        One row per measurement with keys ``case``, ``n``, ``m`` (batch size or
        None), ``method``, ``time_s``, ``speedup_vs_cvxpy`` (None where cvxpy did
        not run), ``max_dC`` (None for the reference itself) and ``note``.

    Examples
    --------
    >>> from capalloc.experiments.bench import run_solver_benchmark
    >>> rows = run_solver_benchmark(quick=True, max_n=100, progress=False)
    >>> sorted({r["method"] for r in rows if r["n"] == 100 and r["m"] is None})
    ['cvxpy', 'numpy.sum', 'scipy', 'slsqp', 'waterfill']
    """
    from tqdm.auto import tqdm

    sizes = [n for n in (QUICK_SIZES if quick else SIZES) if max_n is None or n <= max_n]
    repeats = 3 if quick else 5
    m_batch, n_batch = _QUICK_BATCH if quick else _BATCH
    if max_n is not None:
        m_batch = min(m_batch, max(max_n // n_batch, 1))
    cvxpy_budget = 10.0 if quick else _CVXPY_BUDGET_S
    tasks = sum(sum(runs(meth, n) for meth in METHODS) for n in sizes) + 4
    bar = tqdm(
        total=tasks, desc="capalloc bench", file=sys.stderr, disable=not progress, leave=False
    )
    _warm_up(METHODS)
    rows: list[dict[str, Any]] = []

    def add(
        case: str,
        n: int,
        method: str,
        t: float,
        dC: float | None = None,
        speedup: float | None = None,
        note: str = "",
        m: int | None = None,
    ) -> None:
        rows.append(
            {
                "case": case,
                "n": n,
                "m": m,
                "method": method,
                "time_s": t,
                "speedup_vs_cvxpy": speedup,
                "max_dC": dC,
                "note": note,
            }
        )
        bar.update()

    cvxpy_time: float | None = None
    cvxpy_n: int | None = None
    for n in sizes:
        problem = power_law_problem(n)
        bar.set_postfix_str(f"n={n:.0e}")
        times: dict[str, float] = {}
        results: dict[str, Any] = {}
        for method in METHODS:
            if not runs(method, n):
                continue
            if method == "cvxpy" and cvxpy_time is not None and cvxpy_n is not None:
                if cvxpy_time * (n / cvxpy_n) * 1.3 > cvxpy_budget:
                    bar.update()
                    continue
            reps = 1 if method in ("cvxpy", "slsqp") and n > 10**3 else repeats

            def run(p: QuadraticProblem = problem, method: str = method) -> Any:
                return solve(p, method=method, **OPTIONS.get(method, {}))

            times[method], results[method] = _best_time(run, reps)
            if method == "cvxpy":
                cvxpy_time, cvxpy_n = times[method], n
        ref = results["waterfill"].capacity
        for method, t in times.items():
            res = results[method]
            dC = None if method == "waterfill" else float(np.max(np.abs(res.capacity - ref)))
            speedup = times["cvxpy"] / t if "cvxpy" in times else None
            note = ", ".join(f"{k}={v}" for k, v in OPTIONS.get(method, {}).items())
            if res.status != 0:
                note += f" status {res.status}: {res.message}"
            add("power law, K=10", n, method, t, dC, speedup, note)

    n_top = sizes[-1] if sizes else 100
    problem = power_law_problem(n_top)
    t_fill, _ = _best_time(lambda: solve(problem, method="waterfill"), repeats)
    t_sum, _ = _best_time(lambda: float(np.sum(problem.importance)), 10 * repeats)
    add(
        "waterfill vs one numpy.sum",
        n_top,
        "numpy.sum",
        t_sum,
        note=f"waterfill / sum = {t_fill / t_sum:.1f}x",
    )

    n_k = min(n_top, 10**6)
    rng = np.random.default_rng(1)
    problem = power_law_problem(n_k, kurtosis=rng.uniform(3.5, 30.0, n_k))
    t_fill, ref = _best_time(lambda: solve(problem, method="waterfill"), repeats)
    add("per-feature K in [3.5, 30]", n_k, "waterfill", t_fill)
    t_sc, res = _best_time(lambda: solve(problem, method="scipy"), repeats)
    add(
        "per-feature K in [3.5, 30]",
        n_k,
        "scipy",
        t_sc,
        float(np.max(np.abs(res.capacity - ref.capacity))),
    )

    problem = power_law_problem(n_batch, m=m_batch)
    t_b, _ = _best_time(lambda: solve(problem, method="waterfill"), repeats)
    add(
        f"batched m={m_batch:.0e}",
        n_batch,
        "waterfill",
        t_b,
        note=f"{t_b / m_batch * 1e6:.2f} us per problem",
        m=m_batch,
    )
    bar.close()
    return rows


def _fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1.0:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Format benchmark rows as a fixed-width text table.

    Parameters
    ----------
    rows : list of dict
        As returned by :func:`run_solver_benchmark`.

    Returns
    -------
    str

    Examples
    --------
    >>> from capalloc.experiments.bench import format_table
    >>> print(format_table([{"case": "power law, K=10", "n": 100, "m": None,
    ...                      "method": "waterfill", "time_s": 2e-5, "speedup_vs_cvxpy": 900.0,
    ...                      "max_dC": None, "note": ""}]))
    case             n      method     time     vs cvxpy  max|dC|  note
    ---------------  -----  ---------  -------  --------  -------  ----
    power law, K=10  1e+02  waterfill  20.0 us  900x      -
    """
    header = ("case", "n", "method", "time", "vs cvxpy", "max|dC|", "note")
    body = []
    for r in rows:
        speed = r.get("speedup_vs_cvxpy")
        dC = r.get("max_dC")
        body.append(
            (
                str(r["case"]),
                f"{r['n']:.0e}",
                str(r["method"]),
                _fmt_time(r["time_s"]),
                "-" if speed is None else f"{speed:.3g}x",
                "-" if dC is None else f"{dC:.1e}",
                str(r.get("note", "")),
            )
        )
    return _text_table(header, body, align="left", rule=True)


def sum_ratio(n: int = 10**7, calls: int = 15) -> dict[str, float]:
    """Water-filling against one ``numpy.sum`` over the importances, timed alternately.

    Alternating the two calls exposes both to the same state of the machine (its
    memory bandwidth varies from second to second on a shared host), so the
    median ratio is steadier than a ratio of two best times.

    Returns
    -------
    dict
        ``sum_ms`` and ``waterfill_ms`` (medians), ``median_ratio`` and
        ``best_ratio`` (best waterfill time over best sum time).

    Examples
    --------
    >>> from capalloc.experiments.bench import sum_ratio
    >>> sorted(sum_ratio(10**4, calls=3))
    ['best_ratio', 'median_ratio', 'sum_ms', 'waterfill_ms']
    """
    problem = power_law_problem(n)
    solve(problem, method="waterfill")
    sums, fills = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        np.sum(problem.importance)
        t1 = time.perf_counter()
        solve(problem, method="waterfill")
        t2 = time.perf_counter()
        sums.append(t1 - t0)
        fills.append(t2 - t1)
    s, w = float(np.median(sums)), float(np.median(fills))
    return {
        "sum_ms": 1e3 * s,
        "waterfill_ms": 1e3 * w,
        "median_ratio": w / s,
        "best_ratio": min(fills) / min(sums),
    }
