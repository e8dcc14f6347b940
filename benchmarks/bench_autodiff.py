"""Cost of the derivatives of ``capalloc.autodiff.solve`` relative to its forward solve.

``python benchmarks/bench_autodiff.py [--quick] [--device cpu|cuda] [--repeat R]`` prints, for
one problem of ``n = 10**6`` features and a batch of ``10**4`` problems of 100 features
(power-law importances, per-feature kurtosis in [4, 12], ``d = n/10``), the best-of-``R``
times of

* the forward pass (``autodiff.solve`` on tensors that require grad: the certified numpy
  solve plus the tensors of the result),
* the backward pass (one vector-Jacobian product of ``capacity`` and ``loss`` into
  ``importance`` and ``kurtosis``),
* forward mode (the same solve under ``torch.autograd.forward_ad`` with tangents for both,
  minus the forward pass: the Jacobian-vector product's own cost),
* the plain numpy solve ``capalloc.solve`` (the reference of the forward pass),

and the ratios backward/forward, JVP/forward and forward/numpy solve. Forward and backward
alternate in each repetition so that both meet the same state of the machine. No figure
is a pass/fail threshold; ``--quick`` shrinks the sizes tenfold.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import capalloc


def _problem(m: int | None, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    shape = (n,) if m is None else (m, n)
    v = (1.0 + np.arange(n)) ** -0.7 * rng.uniform(0.5, 1.5, shape)
    K = rng.uniform(4.0, 12.0, shape)
    return v, K, max(n // 10, 1)


def _sync(torch, device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(m: int | None, n: int, device: str, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` times (seconds) of forward, backward, JVP and the numpy solve."""
    import torch
    import torch.autograd.forward_ad as fwAD

    from capalloc import autodiff

    v_np, K_np, d = _problem(m, n)
    v = torch.tensor(v_np, device=device, requires_grad=True)
    K = torch.tensor(K_np, device=device, requires_grad=True)
    gC = torch.randn(v.shape, dtype=v.dtype, device=device)
    tv, tK = torch.randn_like(v), torch.randn_like(K)
    problem = capalloc.QuadraticProblem(v_np, d, K_np)
    capalloc.solve(problem)  # compile the kernels, warm the caches
    autodiff.solve(v, d, K)
    best = {"forward": np.inf, "backward": np.inf, "jvp": np.inf, "numpy": np.inf}
    for _ in range(repeat):
        t0 = time.perf_counter()
        capalloc.solve(problem)
        best["numpy"] = min(best["numpy"], time.perf_counter() - t0)

        _sync(torch, device)
        t0 = time.perf_counter()
        res = autodiff.solve(v, d, K)
        out = (res.capacity * gC).sum() + res.loss.sum()
        _sync(torch, device)
        forward = time.perf_counter() - t0
        best["forward"] = min(best["forward"], forward)

        t0 = time.perf_counter()
        torch.autograd.grad(out, (v, K))
        _sync(torch, device)
        best["backward"] = min(best["backward"], time.perf_counter() - t0)

        with torch.no_grad(), fwAD.dual_level():
            vd, Kd = fwAD.make_dual(v.detach(), tv), fwAD.make_dual(K.detach(), tK)
            _sync(torch, device)
            t0 = time.perf_counter()
            r = autodiff.solve(vd, d, Kd)
            fwAD.unpack_dual(r.capacity).tangent.sum()
            _sync(torch, device)
            dual = time.perf_counter() - t0
        best["jvp"] = min(best["jvp"], max(dual - forward, 0.0))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes divided by ten")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a loaded machine more threads spin)",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    scale = 10 if args.quick else 1
    cases = [("n = 1e6", None, 10**6 // scale), ("batch 1e4 x 100", 10**4 // scale, 100)]
    print(f"device {args.device}, float64, {args.threads} torch thread(s), best of {args.repeat}")
    header = (
        f"{'problem':<18} {'forward':>9} {'backward':>9} {'jvp':>9} {'numpy':>9} "
        f"{'bwd/fwd':>8} {'jvp/fwd':>8} {'fwd/numpy':>9}"
    )
    print(header)
    for label, m, n in cases:
        t = measure(m, n, args.device, args.repeat)
        name = label if not args.quick else f"{label} / 10"
        print(
            f"{name:<18} {t['forward'] * 1e3:8.1f}ms {t['backward'] * 1e3:8.1f}ms "
            f"{t['jvp'] * 1e3:8.1f}ms {t['numpy'] * 1e3:8.1f}ms "
            f"{t['backward'] / t['forward']:8.2f} {t['jvp'] / t['forward']:8.2f} "
            f"{t['forward'] / t['numpy']:9.2f}"
        )


if __name__ == "__main__":
    main()
