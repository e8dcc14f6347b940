"""Regression guard: speed as ratios against references timed in the same run.

``python benchmarks/ratios.py [--quick] [--busy] [--check]`` prints, for each figure,
its time, the time of its reference (one ``numpy.sum``, ``numpy.sort``, an all-convex
batch, one GEMM, ``import numpy, scipy.optimize`` in a fresh process) and their ratio,
next to the ratio documented in ``docs/benchmarks.md``. Calls alternate with their
reference so that both meet the same state of the machine, and each ratio is the best
of several such pairs. ``--busy`` runs everything once more while another process
spins, and prints both columns. ``--check`` (what ``.ci/run`` runs) exits 1 only on a
gross regression: a ratio more than ``FACTOR`` times its documented value. No figure
is an absolute time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time

import numpy as np
from bench_capacity import paired_best  # this folder: the one alternating timer

import capalloc
from capalloc.experiments.bench import power_law_problem

FACTOR = 3.0  # --check fails above FACTOR times the documented ratio
_BIG = 1 << 22

# Documented ratios (docs/benchmarks.md, "Idle and busy"): the larger of the idle and busy
# columns measured on the 2-core machine, so that --check holds under the load CI meets.
DOCUMENTED = {
    "waterfill n=4e6 / sum": 18.0,
    "waterfill n=4e6, K per feature / sum": 25.0,
    "QuadraticProblem(v) n=4e6 / sum": 4.5,
    "QuadraticProblem(read-only v) n=4e6 / sum": 1.3,
    "waterfill numpy engine n=1e4 / sort": 180.0,
    "phase-diagram batch 4000x20 / convex batch": 1.5,
    "waterfill n=1e7 / sum": 18.0,
    "waterfill n=1e7, K per feature / sum": 25.0,
    "batched 1e5 x 100 / sum of its 1e7 entries": 46.0,
    "phase diagram 200x200, K 1.5-10 / convex batch": 2.1,
    "capacity 8192x256 / W @ W.T": 2.4,  # one BLAS thread, as .ci/run sets
    "first small solve, fresh process / import numpy, scipy.optimize": 0.4,
}


def _wall(code: str, runs: int) -> float:
    """Best wall time of ``python -c code`` in a fresh process."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def _phase_batch(rows: int, n: int, convex_only: bool) -> capalloc.QuadraticProblem:
    """A phase-diagram batch: rows of importances ``r**-i`` with one kurtosis per row,
    from 1.5 to 10 (or 3.5 to 10 for the all-convex reference)."""
    ratios = np.linspace(1.05, 4.0, rows)[:, None]
    v = ratios ** -np.arange(n)[None, :]
    K = np.linspace(3.5 if convex_only else 1.5, 10.0, rows)[::-1][:, None]
    return capalloc.QuadraticProblem(v, n // 4, np.broadcast_to(K, v.shape))


def measure(quick: bool) -> dict[str, tuple[float, float]]:
    """``{figure: (seconds, reference seconds)}``."""
    pairs = 5 if quick else 15
    out = {}
    # 2**22 features (32 MB): larger than the caches, so the sum reads memory as the solve does
    big = power_law_problem(_BIG)
    v = np.array(big.importance)
    out["waterfill n=4e6 / sum"] = paired_best(
        lambda: capalloc.solve(big), lambda: np.sum(big.importance), pairs
    )
    perk = power_law_problem(_BIG, kurtosis=np.linspace(3.5, 30.0, _BIG))
    out["waterfill n=4e6, K per feature / sum"] = paired_best(
        lambda: capalloc.solve(perk), lambda: np.sum(big.importance), pairs
    )
    out["QuadraticProblem(v) n=4e6 / sum"] = paired_best(
        lambda: capalloc.QuadraticProblem(v, _BIG // 10, 10.0), lambda: np.sum(v), pairs
    )
    frozen = big.importance  # read-only: shared, not copied
    out["QuadraticProblem(read-only v) n=4e6 / sum"] = paired_best(
        lambda: capalloc.QuadraticProblem(frozen, _BIG // 10, 10.0), lambda: np.sum(v), pairs
    )
    small = power_law_problem(10**4)
    vs = np.array(small.importance)
    out["waterfill numpy engine n=1e4 / sort"] = paired_best(
        lambda: capalloc.waterfill(small, engine="numpy"), lambda: np.sort(vs), pairs
    )
    rows = 1000 if quick else 4000
    mixed, convex = _phase_batch(rows, 20, False), _phase_batch(rows, 20, True)
    out[f"phase-diagram batch {rows}x20 / convex batch"] = paired_best(
        lambda: capalloc.solve(mixed), lambda: capalloc.solve(convex), pairs
    )
    if not quick:  # the sizes of issue 13's targets
        n7 = 10**7
        p7 = power_law_problem(n7)
        v7 = p7.importance
        out["waterfill n=1e7 / sum"] = paired_best(
            lambda: capalloc.solve(p7), lambda: np.sum(v7), pairs
        )
        k7 = power_law_problem(n7, kurtosis=np.linspace(3.5, 30.0, n7))
        out["waterfill n=1e7, K per feature / sum"] = paired_best(
            lambda: capalloc.solve(k7), lambda: np.sum(v7), pairs
        )
        b7 = power_law_problem(100, m=10**5)
        out["batched 1e5 x 100 / sum of its 1e7 entries"] = paired_best(
            lambda: capalloc.solve(b7), lambda: np.sum(b7.importance), pairs
        )
        diagram, convex2 = _phase_batch(200 * 200, 2, False), _phase_batch(200 * 200, 2, True)
        out["phase diagram 200x200, K 1.5-10 / convex batch"] = paired_best(
            lambda: capalloc.solve(diagram), lambda: capalloc.solve(convex2), pairs
        )
    W = np.random.default_rng(0).standard_normal((256, 8192))
    out["capacity 8192x256 / W @ W.T"] = paired_best(
        lambda: capalloc.capacity(W), lambda: W @ W.T, pairs
    )
    solve_code = (
        "import capalloc\n"
        "capalloc.solve(capalloc.QuadraticProblem([1.0 / (i + 1) for i in range(10000)], 1000, 10.0))"
    )
    runs = 2 if quick else 5
    out["first small solve, fresh process / import numpy, scipy.optimize"] = (
        _wall(solve_code, runs),
        _wall("import numpy, scipy.optimize", runs),
    )
    return out


def _spin(stop: multiprocessing.synchronize.Event) -> None:  # pragma: no cover - child
    while not stop.is_set():
        sum(range(10_000))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs and a smaller batch")
    parser.add_argument("--busy", action="store_true", help="also measure with a busy process")
    parser.add_argument("--check", action="store_true", help=f"fail above {FACTOR}x documented")
    args = parser.parse_args(argv)
    capalloc.solve(_phase_batch(8, 20, False))  # compile (or load) the kernels first
    capalloc.solve(power_law_problem(_BIG))
    idle = measure(args.quick)
    busy = None
    if args.busy:
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
        spinner.start()
        try:
            busy = measure(args.quick)
        finally:
            stop.set()
            spinner.join()
    failed = []
    print(f"{'figure':66s} {'time':>10s} {'ref':>10s} {'ratio':>7s} {'busy':>7s} {'doc':>6s}")
    for name, (t, r) in idle.items():
        key = name.replace("1000x20", "4000x20")
        doc = DOCUMENTED.get(key, float("nan"))
        ratio = t / r
        busy_txt = f"{busy[name][0] / busy[name][1]:7.2f}" if busy else f"{'-':>7s}"
        print(f"{name:66s} {t * 1e3:8.2f}ms {r * 1e3:8.2f}ms {ratio:7.2f} {busy_txt} {doc:6.2f}")
        if ratio > FACTOR * doc:
            failed.append(f"{name}: {ratio:.2f} > {FACTOR:g} x {doc:g}")
    if args.check and failed:
        print("gross regression:", *failed, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
