"""Benchmark: ``capalloc.capacity`` against the naive Gram-matrix formula.

The naive formula builds the ``(n, n)`` Gram matrix :math:`G = W^\\top W` and
reads :math:`C_i = G_{ii}^2 / \\sum_j G_{ij}^2`: :math:`O(n^2 d)` time and
:math:`O(n^2)` memory. ``capalloc.capacity`` uses :math:`W_i^\\top (W W^\\top) W_i`
instead: :math:`O(n d^2)` time and :math:`O(d^2 + n)` extra memory.

Run as a script for a table::

    python benchmarks/bench_capacity.py          # d = 256, n up to 1e6 (about 2 GiB for W)
    python benchmarks/bench_capacity.py --quick  # small sizes, a few seconds
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_capacity.py --gemm-ratio  # vs W @ W.T

On a shared machine, ``OPENBLAS_NUM_THREADS=1`` gives far steadier timings
(an oversubscribed multi-threaded BLAS can be 100x slower on small products).

The classes follow asv's conventions (``params``, ``param_names``, ``setup``,
``time_*``, ``peakmem_*``, ``track_*``), so asv can run them unchanged; a
``setup`` that raises ``NotImplementedError`` marks the case as skipped.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from capalloc import capacity

#: The naive formula is skipped when its (n, n) matrix would exceed this many bytes.
GRAM_LIMIT = 4 * 2**30


def naive_capacity(W: np.ndarray) -> np.ndarray:
    """Capacities through the full (n, n) Gram matrix (the reference formula)."""
    G = W.T @ W
    num = np.diag(G) ** 2
    G *= G
    den = G.sum(axis=1)
    out = np.zeros_like(den)
    np.divide(num, den, out=out, where=den > 0)
    return out


def gram_fits(n: int) -> bool:
    return 8 * n * n <= GRAM_LIMIT


def random_embedding(d: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((d, n))


# ---------------------------------------------------------------------------
# asv-style suites
# ---------------------------------------------------------------------------


class Capacity:
    """The O(n d^2) capacity of ``capalloc``."""

    params = ([1_000, 10_000, 100_000], [256])
    param_names = ["n", "d"]

    def setup(self, n: int, d: int) -> None:
        self.W = random_embedding(d, n)

    def time_capacity(self, n: int, d: int) -> None:
        capacity(self.W)

    def peakmem_capacity(self, n: int, d: int) -> None:
        capacity(self.W)


class NaiveGram:
    """The naive formula, and the largest difference between the two."""

    params = ([1_000, 10_000, 100_000], [256])
    param_names = ["n", "d"]

    def setup(self, n: int, d: int) -> None:
        if not gram_fits(n):
            raise NotImplementedError(f"(n, n) Gram matrix of {8 * n * n / 2**30:.0f} GiB")
        self.W = random_embedding(d, n)

    def time_naive(self, n: int, d: int) -> None:
        naive_capacity(self.W)

    def peakmem_naive(self, n: int, d: int) -> None:
        naive_capacity(self.W)

    def track_max_abs_difference(self, n: int, d: int) -> float:
        return float(np.max(np.abs(capacity(self.W) - naive_capacity(self.W))))


class CapacityMemory:
    """One very wide embedding: extra memory must stay far below n^2."""

    params = ([1_000_000], [256])
    param_names = ["n", "d"]
    timeout = 600

    def setup(self, n: int, d: int) -> None:
        self.W = random_embedding(d, n)

    def peakmem_capacity(self, n: int, d: int) -> None:
        capacity(self.W)

    def track_extra_mib(self, n: int, d: int) -> float:
        return traced_peak(lambda: capacity(self.W))[1] / 2**20


# ---------------------------------------------------------------------------
# Script
# ---------------------------------------------------------------------------


def best_time(func: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best


def traced_peak(func: Callable[[], object]) -> tuple[object, int]:
    """Run ``func`` and return its result and the peak of memory it allocated (bytes)."""
    tracemalloc.start()
    try:
        out = func()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


#: Shapes (d, n) of the ratio to one ``W @ W.T``.
GEMM_SHAPES = [(256, 8192), (256, 100_000), (768, 16_384), (64, 200_000)]


def paired_best(
    fn: Callable[[], object], ref: Callable[[], object], pairs: int
) -> tuple[float, float]:
    """Best times of ``fn`` and ``ref`` over ``pairs`` alternating calls (after one of each)."""
    fn(), ref()
    best_f = best_r = float("inf")
    for _ in range(pairs):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        best_r, best_f = min(best_r, t1 - t0), min(best_f, t2 - t1)
    return best_f, best_r


def gemm_ratio(quick: bool) -> None:
    """``capacity(W)`` against one ``W @ W.T`` (numpy: a BLAS syrk) and one general GEMM.

    Both passes of capacity (Gram matrix by syrk, quadratic forms by trmm) cost
    ``n d^2`` flops, as much as ``W @ W.T``, so 2x that product is the floor; a
    general ``W @ B`` with ``B = W.T`` copied costs ``2 n d^2``.
    """
    shapes = GEMM_SHAPES[:1] if quick else GEMM_SHAPES
    pairs = 3 if quick else 9
    print("capacity(W) / one W @ W.T (best of alternating pairs; W @ W.T is a BLAS syrk in numpy)")
    print(f"{'d':>5} {'n':>8} {'W @ W.T':>10} {'capacity':>10} {'ratio':>7} {'vs GEMM':>8}")
    for d, n in shapes:
        W = random_embedding(d, n)
        B = np.ascontiguousarray(W.T)
        t_cap, t_syrk = paired_best(lambda W=W: capacity(W), lambda W=W: W @ W.T, pairs)
        t_gemm, _ = paired_best(lambda W=W, B=B: W @ B, lambda W=W: W @ W.T, max(1, pairs // 3))
        print(
            f"{d:>5} {n:>8} {t_syrk * 1e3:8.1f}ms {t_cap * 1e3:8.1f}ms {t_cap / t_syrk:6.2f}x "
            f"{t_cap / t_gemm:7.2f}x"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument(
        "--gemm-ratio",
        action="store_true",
        help="only the ratio of capacity to one W @ W.T (and to one general GEMM)",
    )
    args = parser.parse_args(argv)
    if args.gemm_ratio:
        gemm_ratio(args.quick)
        return

    if args.quick:
        d, sizes = 64, [1_000, 3_000, 10_000, 200_000]
    else:
        d, sizes = 256, [1_000, 10_000, 100_000, 1_000_000]

    threads = (
        os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    )
    print(f"capalloc.capacity vs naive (n, n) Gram formula, d = {d}")
    print(
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, BLAS threads: {threads}; "
        "time: best of 3 (1 run if n > 1e4); extra: peak allocation inside the call "
        "(tracemalloc)"
    )
    header = (
        f"{'n':>9} {'d':>4} {'capacity [s]':>13} {'naive [s]':>10} {'speed-up':>9} "
        f"{'max |dC|':>9} {'extra [MiB]':>12} {'naive extra [MiB]':>18}"
    )
    print(header)
    print("-" * len(header))
    capacity(random_embedding(d, 10))  # warm-up (imports, BLAS threads)
    for n in sizes:
        W = random_embedding(d, n)
        repeat = 3 if n <= 10_000 else 1
        t_fast = best_time(lambda W=W: capacity(W), repeat)
        C, extra = traced_peak(lambda W=W: capacity(W))
        row = f"{n:>9} {d:>4} {t_fast:13.4f}"
        if gram_fits(n):
            t_naive = best_time(lambda W=W: naive_capacity(W), repeat)
            ref, naive_extra = traced_peak(lambda W=W: naive_capacity(W))
            diff = np.max(np.abs(C - ref))
            row += (
                f" {t_naive:10.4f} {t_naive / t_fast:8.1f}x {diff:9.1e} "
                f"{extra / 2**20:12.1f} {naive_extra / 2**20:18.1f}"
            )
            del ref
        else:
            row += (
                f" {'skipped':>10} {'-':>9} {'-':>9} {extra / 2**20:12.1f} "
                f"{'(' + format(8 * n * n / 2**30, ',.0f') + ' GiB)':>18}"
            )
        print(row)
        if n == sizes[-1]:
            print()
            print(f"largest case, n = {n:,}, d = {d}:")
            print(f"  W itself                        {W.nbytes / 2**30:7.3f} GiB")
            print(f"  extra peak inside capacity()    {extra / 2**30:7.3f} GiB  (tracemalloc)")
            print(
                f"  process max RSS so far          {max_rss_bytes() / 2**30:7.3f} GiB  "
                "(getrusage; includes W and the naive runs above)"
            )
            print(
                f"  sum C = {np.sum(C):.4f} <= d = {d};  0 <= C <= 1: "
                f"{bool(np.all((C >= 0) & (C <= 1)))}"
            )
        del W, C


if __name__ == "__main__":
    main()
