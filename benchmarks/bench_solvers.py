"""Benchmark of the allocation methods: time and error against water-filling by size.

Run as a script, ``python benchmarks/bench_solvers.py [--quick] [--max-n N]``, to print
a table (the logic lives in :mod:`capalloc.experiments.bench`, shared with ``capalloc bench``), or
let asv collect the classes below: ``params``/``setup``/``time_*``/``track_*``, with a
``NotImplementedError`` from ``setup`` marking the sizes a reference method skips.
"""

from __future__ import annotations

import argparse

import numpy as np

import capalloc
from capalloc.experiments import bench as _bench


class Solvers:
    """One quadratic problem (power-law importances, ``d = n/10``, ``K = 10``) per size."""

    params = (list(_bench.SIZES), list(_bench.METHODS))
    param_names = ["n", "method"]
    timeout = 600

    def setup(self, n, method):
        if not _bench.runs(method, n):
            raise NotImplementedError(f"{method} is not benchmarked at n={n}")
        self.problem = _bench.power_law_problem(n)
        capalloc.solve(_bench.power_law_problem(100), method=method)  # JIT / import warm-up

    def time_solve(self, n, method):
        capalloc.solve(self.problem, method=method, **_bench.OPTIONS.get(method, {}))

    def track_max_abs_dC(self, n, method):
        ref = capalloc.solve(self.problem, method="waterfill").capacity
        res = capalloc.solve(self.problem, method=method, **_bench.OPTIONS.get(method, {})).capacity
        return float(np.max(np.abs(res - ref)))

    track_max_abs_dC.unit = "capacity"


class PerFeatureKurtosis:
    """Per-feature kurtosis ``K_i`` uniform in [3.5, 30]."""

    params = ([10**4, 10**6], ["waterfill", "scipy"])
    param_names = ["n", "method"]

    def setup(self, n, method):
        K = np.random.default_rng(1).uniform(3.5, 30.0, n)
        self.problem = _bench.power_law_problem(n, kurtosis=K)
        capalloc.solve(_bench.power_law_problem(100, kurtosis=K[:100]), method=method)

    def time_solve(self, n, method):
        capalloc.solve(self.problem, method=method)


class Batched:
    """``m`` problems of ``n = 100`` features solved by one batched water-filling call."""

    params = [10**3, 10**4, 10**5]
    param_names = ["m"]

    def setup(self, m):
        self.problem = _bench.power_law_problem(100, m=m)
        capalloc.solve(_bench.power_law_problem(100, m=2), method="waterfill")

    def time_waterfill(self, m):
        capalloc.solve(self.problem, method="waterfill")


class Reduction:
    """Water-filling against one ``numpy.sum`` over the importances (its lower bound)."""

    params = [10**6, 10**7]
    param_names = ["n"]

    def setup(self, n):
        self.problem = _bench.power_law_problem(n)
        capalloc.solve(_bench.power_law_problem(100), method="waterfill")

    def time_waterfill(self, n):
        capalloc.solve(self.problem, method="waterfill")

    def time_numpy_sum(self, n):
        np.sum(self.problem.importance)


def main(argv=None):
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 1e5, fewer repeats")
    parser.add_argument("--max-n", type=int, default=None, help="skip sizes above N")
    parser.add_argument(
        "--sum-ratio",
        action="store_true",
        help="only time waterfill against numpy.sum at n = 1e7, alternately",
    )
    args = parser.parse_args(argv)
    if args.sum_ratio:
        r = _bench.sum_ratio()
        print(
            f"n = 1e7: numpy.sum {r['sum_ms']:.2f} ms, waterfill {r['waterfill_ms']:.2f} ms "
            f"(medians of 15 alternating calls): {r['median_ratio']:.1f}x "
            f"(best/best {r['best_ratio']:.1f}x)"
        )
        return
    rows = _bench.run_solver_benchmark(args.quick, max_n=args.max_n)
    print(_bench.format_table(rows))


if __name__ == "__main__":
    main()
