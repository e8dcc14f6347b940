"""The torch code paths on a CUDA device, against the CPU references.

Skipped where torch has no CUDA device (CI); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import capalloc
from capalloc import distributions as D
from capalloc.training.train import train_quadratic

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_capacity_on_cuda_matches_numpy():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 32, 300))  # a batch of four (d, n) embeddings
    W[:, :, 7] = 0.0  # a zero column has capacity 0
    expected = capalloc.capacity(W)
    got = capalloc.capacity(torch.from_numpy(W).cuda())
    assert got.device.type == "cuda" and got.dtype == torch.float64
    np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=1e-12, atol=1e-14)
    Wt = torch.from_numpy(W[0]).cuda().requires_grad_()
    capalloc.capacity(Wt).sum().backward()
    assert Wt.grad is not None and torch.isfinite(Wt.grad).all()


def test_sampled_training_on_cuda_matches_solver():
    """Eight n = 12, d = 4 problems trained as one batched program on the GPU."""
    rng = np.random.default_rng(1)
    v = np.sort(rng.uniform(0.2, 1.0, (8, 12)), axis=1)[:, ::-1]
    problem = capalloc.QuadraticProblem(v, d=4, kurtosis=10.0)
    res = capalloc.solve(problem)
    out = train_quadratic(problem, "sampled", steps=4000, batch_size=8192, seed=0, device="cuda")
    assert out.device.startswith("cuda")
    assert np.abs(out.capacity - res.capacity).max() < 2e-2
    np.testing.assert_allclose(out.loss, res.loss, rtol=2e-3)


def test_sampled_sparse_inputs_on_cuda_match_solver():
    """Sparse Gaussian inputs (K = 3 / p) give the polysemantic allocation the solver predicts."""
    v = np.array([1.0, 0.9, 0.7, 0.6, 0.4, 0.3])
    problem = capalloc.QuadraticProblem(v, d=3, kurtosis=10.0)
    res = capalloc.solve(problem)
    out = train_quadratic(
        problem,
        "sampled",
        steps=4000,
        batch_size=8192,
        seed=2,
        law=D.Sparse(D.Gaussian(), 0.3),
        device="cuda",
    )
    assert np.abs(out.capacity - res.capacity).max() < 2e-2
    assert out.loss == pytest.approx(res.loss, rel=2e-3)
