"""Differential fuzz of the exact methods against the bisection oracle.

``python benchmarks/fuzz_solvers.py [--count N] [--seed S] [--method M ...]`` generates
problems with :func:`capalloc.testing.random_hard_problem` (importances over 1e-300..1e300,
geometric and power-law profiles of 10**3..10**4 features, decade-spaced importances with
K up to 1e6, K within 1e-15 of 3, batched rows) and counts, per method, the results
reported optimal (status 0) that are infeasible or more than 1e-9 worse than
:func:`capalloc.testing.bisection_reference`, and the ones reported not certified.
A method ``NAME:ENGINE`` passes ``engine=ENGINE`` (``waterfill:numpy``,
``waterfill:compiled``); engines that solve unbatched problems skip the batches.
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import numpy as np

import capalloc
from capalloc.testing import bisection_reference, random_hard_problem, relative_excess_loss

TOL = 1e-9


def check(problem, result, reference):
    """Why a status-0 result is wrong, or ``None``."""
    C = result.capacity
    if not np.all(np.isfinite(C)) or C.min(initial=0) < 0 or C.max(initial=0) > 1:
        return "capacity outside [0, 1]"
    over = np.max(np.sum(C, axis=-1) - problem.d) / max(problem.d, 1)
    if over > TOL:
        return f"budget exceeded by {over:.2g} (relative)"
    gap = np.max(relative_excess_loss(problem, C, reference))
    if not gap <= TOL:
        return f"loss {gap:.2g} above the reference (relative)"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-n", type=int, default=10_000)
    parser.add_argument("--method", nargs="+", default=["waterfill", "scipy"])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    counts = collections.Counter()
    failures = []
    start = time.perf_counter()
    for k in range(args.count):
        profile = str(rng.choice(capalloc.testing.HARD_PROFILES))
        problem = random_hard_problem(rng, profile, max_n=args.max_n)
        reference = bisection_reference(problem)
        for method in args.method:
            name, _, engine = method.partition(":")
            options = {"engine": engine} if engine else {}
            if engine == "numpy" and problem.batched:
                counts[method, "skipped (batched)"] += 1
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = capalloc.solve(problem, method=name, **options)
            if result.status != 0:
                counts[method, "not certified (status 1)"] += 1
                continue
            why = check(problem, result, reference)
            counts[method, "wrong, labelled optimal" if why else "optimal and right"] += 1
            if why:
                failures.append((k, profile, method, repr(problem), why))
        if (k + 1) % 500 == 0:
            done = ", ".join(f"{m} {o}: {c}" for (m, o), c in sorted(counts.items()))
            print(f"[{k + 1}/{args.count}, {time.perf_counter() - start:.0f} s] {done}", flush=True)
    print(f"{args.count} problems, seed {args.seed}, {time.perf_counter() - start:.0f} s")
    for (method, outcome), c in sorted(counts.items()):
        print(f"  {method:18s} {outcome:28s} {c}")
    for f in failures[:20]:
        print("  FAIL", *f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
