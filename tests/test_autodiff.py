"""capalloc.autodiff: gradients of the optimum against independent references.

References: ``torch.autograd.gradcheck`` (finite differences of the layer itself, float64),
central finite differences of the numpy solver (``capalloc.solve``), the numpy implicit-
function derivatives of :mod:`capalloc.allocation.sensitivity` (an independent
implementation), implicit differentiation of :func:`capalloc.autodiff.kkt_residual`, and
cvxpylayers on the convex problem (where installed).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import capalloc  # noqa: E402
from capalloc import autodiff  # noqa: E402
from capalloc.allocation.result import AllocationWarning, make_result  # noqa: E402
from capalloc.allocation.sensitivity import sensitivity  # noqa: E402

F64 = torch.float64


@pytest.fixture(params=["fused", "torch"])
def backward_path(request, monkeypatch):
    """Both reverse-mode paths: the fused CPU kernel and the torch one (other devices)."""
    monkeypatch.setattr(autodiff, "_FUSED", request.param == "fused")
    return request.param


def _convex(rng, n=10, d=3, kmin=4.0, kmax=12.0):
    """A convex problem whose features all sit well inside their regimes."""
    while True:
        v = rng.uniform(0.2, 2.0, n)
        K = rng.uniform(kmin, kmax, n)
        res = capalloc.solve(capalloc.QuadraticProblem(v, d, K))
        C = res.capacity
        mu = np.sqrt(res.threshold / 2)
        margin = np.minimum(np.abs(v - mu), np.abs((K - 1) * v / 2 - mu)) / mu
        poly = (C > 0) & (C < 1)
        if poly.sum() >= 2 and margin.min() > 0.02:
            return v, K, d


def _numpy(v, d, K):
    """``(C, mu, loss, norms)`` of the numpy solver."""
    res = capalloc.solve(capalloc.QuadraticProblem(v, d, K))
    return (
        np.asarray(res.capacity),
        np.sqrt(res.threshold / 2),
        float(np.sum(res.loss)),
        np.asarray(res.norms),
    )


def _fd(fun, x, j, rel=1e-6):
    """Central difference of ``fun`` along coordinate ``j`` of ``x``."""
    h = rel * max(abs(x[j]), 1.0)
    up, down = x.copy(), x.copy()
    up[j] += h
    down[j] -= h
    return [
        (np.asarray(a) - np.asarray(b)) / (2 * h) for a, b in zip(fun(up), fun(down), strict=True)
    ]


def _jacobians(v, K, d):
    """Autodiff Jacobians of (C, mu, loss) in v and K (reverse mode, row by row)."""

    def outputs(vt, Kt):
        r = autodiff.solve(vt, d, Kt)
        return r.capacity, r.level, r.loss

    vt, Kt = torch.tensor(v, dtype=F64), torch.tensor(K, dtype=F64)
    return torch.autograd.functional.jacobian(outputs, (vt, Kt))


# ----------------------------------------------------------------------------- gradcheck


def test_gradcheck_unbatched(backward_path, rng):
    v, K, d = _convex(rng)
    vt = torch.tensor(v, dtype=F64, requires_grad=True)
    Kt = torch.tensor(K, dtype=F64, requires_grad=True)

    def fun(a, b):
        r = autodiff.solve(a, d, b)
        return r.capacity, r.norms, r.loss, r.threshold, r.level

    assert torch.autograd.gradcheck(fun, (vt, Kt), eps=1e-7, atol=1e-7, rtol=1e-5)


def test_gradcheck_batched_with_shared_kurtosis(backward_path, rng):
    rows = [_convex(rng, n=8, d=2, kmin=6.0, kmax=6.0)[0] for _ in range(3)]
    vt = torch.tensor(np.stack(rows), dtype=F64, requires_grad=True)
    Kt = torch.tensor(6.0, dtype=F64, requires_grad=True)

    def fun(a, b):
        r = autodiff.solve(a, 2, b)
        return r.capacity, r.loss, r.threshold

    assert torch.autograd.gradcheck(fun, (vt, Kt), eps=1e-7, atol=1e-7, rtol=1e-5)


def test_forward_mode_passes_gradcheck(rng):
    v, K, d = _convex(rng, n=6, d=2)
    vt = torch.tensor(v, dtype=F64, requires_grad=True)
    Kt = torch.tensor(K, dtype=F64, requires_grad=True)

    def fun(a, b):
        r = autodiff.solve(a, d, b)
        return r.capacity, r.norms, r.loss, r.threshold, r.level

    assert torch.autograd.gradcheck(
        fun, (vt, Kt), eps=1e-7, atol=1e-7, rtol=1e-5, check_forward_ad=True
    )
    V = torch.tensor(np.stack([v, v[::-1].copy()]), requires_grad=True)
    assert torch.autograd.gradcheck(
        fun, (V, Kt), eps=1e-7, atol=1e-7, rtol=1e-5, check_forward_ad=True
    )


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", range(3))
def test_jacobians_match_finite_differences_of_the_numpy_solver(seed):
    rng = np.random.default_rng(seed)
    v, K, d = _convex(rng, n=9, d=3)
    (JC_v, JC_K), (Jmu_v, Jmu_K), (JL_v, JL_K) = _jacobians(v, K, d)
    worst = 0.0
    for j in range(v.size):
        dC, dmu, dL, _ = _fd(lambda x: _numpy(x, d, K), v, j)
        for got, want in ((JC_v[:, j], dC), (Jmu_v[j], dmu), (JL_v[j], dL)):
            err = np.max(np.abs(got.numpy() - want)) / max(np.max(np.abs(want)), 1e-3)
            worst = max(worst, err)
        dC, dmu, dL, _ = _fd(lambda x: _numpy(v, d, x), K, j)
        for got, want in ((JC_K[:, j], dC), (Jmu_K[j], dmu), (JL_K[j], dL)):
            err = np.max(np.abs(got.numpy() - want)) / max(np.max(np.abs(want)), 1e-3)
            worst = max(worst, err)
    assert worst < 1e-6, worst


@pytest.mark.parametrize("seed", range(5))
def test_jacobians_match_sensitivity(backward_path, seed):
    rng = np.random.default_rng(100 + seed)
    v, K, d = _convex(rng, n=12, d=4)
    s = sensitivity(capalloc.QuadraticProblem(v, d, K))
    (JC_v, JC_K), (Jmu_v, Jmu_K), (JL_v, JL_K) = _jacobians(v, K, d)
    pairs = [
        (JC_v, s.dC_dv),
        (JC_K, s.dC_dK),
        (Jmu_v, s.dmu_dv),
        (Jmu_K, s.dmu_dK),
        (JL_v, s.dloss_dv),
        (JL_K, s.dloss_dK),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_scalar_kurtosis_gradient_is_the_common_derivative(backward_path, rng):
    v, _, d = _convex(rng, n=10, d=3, kmin=7.0, kmax=7.0)
    s = sensitivity(capalloc.QuadraticProblem(v, d, 7.0))
    K = torch.tensor(7.0, dtype=F64, requires_grad=True)
    r = autodiff.solve(torch.tensor(v, dtype=F64), d, K)
    (gL,) = torch.autograd.grad(r.loss, K)
    assert float(gL) == pytest.approx(s.dloss_dK_common, rel=1e-11)
    (gC,) = torch.autograd.grad(autodiff.solve(torch.tensor(v), d, K).capacity[3], K)
    assert float(gC) == pytest.approx(s.dC_dK_common[3], rel=1e-10, abs=1e-13)


def test_forward_mode_equals_reverse_mode(rng):
    import torch.autograd.forward_ad as fwAD

    v, K, d = _convex(rng, n=10, d=3)
    (JC_v, JC_K), (Jmu_v, Jmu_K), _ = _jacobians(v, K, d)
    tv, tK = rng.normal(size=v.size), rng.normal(size=K.size)
    with fwAD.dual_level():
        vd = fwAD.make_dual(torch.tensor(v), torch.tensor(tv))
        Kd = fwAD.make_dual(torch.tensor(K), torch.tensor(tK))
        r = autodiff.solve(vd, d, Kd)
        dC = fwAD.unpack_dual(r.capacity).tangent.numpy()
        dmu = float(fwAD.unpack_dual(r.level).tangent)
    np.testing.assert_allclose(dC, JC_v.numpy() @ tv + JC_K.numpy() @ tK, atol=1e-12)
    assert dmu == pytest.approx(float(Jmu_v @ torch.tensor(tv) + Jmu_K @ torch.tensor(tK)))


def test_torch_func_transforms(rng):
    v, K, d = _convex(rng, n=7, d=2)
    vt = torch.tensor(v)
    s = sensitivity(capalloc.QuadraticProblem(v, d, K))
    J = torch.func.jacrev(lambda x: autodiff.solve(x, d, K).capacity)(vt)
    np.testing.assert_allclose(J.numpy(), s.dC_dv, rtol=1e-10, atol=1e-12)
    t = torch.tensor(rng.normal(size=v.size))
    _, dC = torch.func.jvp(lambda x: autodiff.solve(x, d, K).capacity, (vt,), (t,))
    np.testing.assert_allclose(dC.numpy(), s.dC_dv @ t.numpy(), atol=1e-12)


def test_implicit_differentiation_of_kkt_residual_gives_the_same_derivative(rng):
    v, K, d = _convex(rng, n=8, d=3)
    vt, Kt = torch.tensor(v), torch.tensor(K)
    r = autodiff.solve(vt, d, Kt)
    C, mu = r.capacity.detach(), r.level.detach()
    n = v.size

    def F_x(x):
        return autodiff.kkt_residual(x[:n], x[n], vt, d, Kt)

    def F_theta(theta):
        return autodiff.kkt_residual(C, mu, theta[:n], d, theta[n:])

    x = torch.cat([C, mu.reshape(1)])
    Jx = torch.autograd.functional.jacobian(F_x, x)
    Jt = torch.autograd.functional.jacobian(F_theta, torch.cat([vt, Kt]))
    dx = -torch.linalg.solve(Jx, Jt)  # (n + 1, 2n)
    (JC_v, JC_K), (Jmu_v, Jmu_K), _ = _jacobians(v, K, d)
    np.testing.assert_allclose(dx[:n, :n].numpy(), JC_v.numpy(), atol=1e-11)
    np.testing.assert_allclose(dx[:n, n:].numpy(), JC_K.numpy(), atol=1e-11)
    np.testing.assert_allclose(dx[n, :n].numpy(), Jmu_v.numpy(), atol=1e-11)
    np.testing.assert_allclose(dx[n, n:].numpy(), Jmu_K.numpy(), atol=1e-11)


def test_kkt_residual_vanishes_only_at_the_optimum(rng):
    v, K, d = _convex(rng, n=8, d=3)
    vt = torch.tensor(np.stack([v, v[::-1].copy()]))
    r = autodiff.solve(vt, d, 8.0)
    F = autodiff.kkt_residual(r.capacity, r.level, vt, d, 8.0)
    assert F.shape == (2, 9)
    assert float(F.abs().max()) < 1e-12
    bumped = r.capacity.clone()
    poly = int(np.flatnonzero((bumped[0] > 0) & (bumped[0] < 1))[0])
    bumped[0, poly] += 1e-3
    assert float(autodiff.kkt_residual(bumped, r.level, vt, d, 8.0)[0].abs().max()) > 1e-5
    assert float(autodiff.kkt_residual(r.capacity, r.level * 1.01, vt, d, 8.0).abs().max()) > 1e-4


def test_cvxpylayers_on_the_convex_problem():
    cp = pytest.importorskip("cvxpy")
    layers = pytest.importorskip("cvxpylayers.torch")
    n, d, K = 6, 2, 8.0
    v0 = np.array([1.9, 1.6, 1.2, 1.0, 0.8, 0.3])
    # l(C) = 2 (K-1) v^2 (1-C)/(2+(K-3)C) = p / (2 + (K-3) C) - const, p = 2 (K-1)^2 v^2/(K-3)
    C = cp.Variable(n)
    p = cp.Parameter(n, nonneg=True)
    objective = cp.Minimize(cp.sum(cp.multiply(p, cp.inv_pos(2 + (K - 3) * C))))
    problem = cp.Problem(objective, [C >= 0, C <= 1, cp.sum(C) <= d])
    layer = layers.CvxpyLayer(problem, parameters=[p], variables=[C])
    v = torch.tensor(v0, requires_grad=True)
    (sol,) = layer(2 * (K - 1) ** 2 * v**2 / (K - 3))
    mine = autodiff.solve(v, d, K)
    assert np.max(np.abs(sol.detach().numpy() - mine.capacity.detach().numpy())) < 1e-5
    g = torch.tensor([0.3, -1.0, 0.5, 2.0, -0.7, 1.1], dtype=F64)
    (theirs,) = torch.autograd.grad(sol, v, g)
    (ours,) = torch.autograd.grad(mine.capacity, v, g)
    assert float((theirs - ours).abs().max() / ours.abs().max()) < 1e-3


# ----------------------------------------------------------------------------- regimes


def test_concave_capacities_have_zero_gradient_and_the_level_its_feature(backward_path):
    v = np.array([3.0, 2.0, 1.5, 0.9, 0.5])  # ignored levels (K-1) v/2: 0.6, 0.54, 0.475
    K = np.array([2.0, 2.5, 1.8, 2.2, 2.9])
    vt = torch.tensor(v, requires_grad=True)
    Kt = torch.tensor(K, requires_grad=True)
    r = autodiff.solve(vt, 2, Kt)
    gv, gK = torch.autograd.grad(r.capacity.sum(), (vt, Kt), retain_graph=True)
    assert float(gv.abs().max()) == 0.0 and float(gK.abs().max()) == 0.0
    gv, gK = torch.autograd.grad(r.threshold, (vt, Kt))
    for j in range(v.size):  # the threshold (smallest valid) against the numpy solver
        want = _fd(lambda x: [2 * _numpy(x, 2, K)[1] ** 2], v, j)[0]
        assert float(gv[j]) == pytest.approx(float(want), rel=1e-6, abs=1e-9)
        want = _fd(lambda x: [2 * _numpy(v, 2, x)[1] ** 2], K, j)[0]
        assert float(gK[j]) == pytest.approx(float(want), rel=1e-6, abs=1e-9)


def test_no_polysemantic_feature_with_binding_budget(backward_path):
    v = np.array([3.0, 2.0, 0.1, 0.05])  # mu anywhere in [0.45, 2]: the smallest is reported
    K = np.full(4, 10.0)
    vt = torch.tensor(v, requires_grad=True)
    r = autodiff.solve(vt, 2, 10.0)
    assert float(r.level.detach()) == pytest.approx(0.45)
    (g,) = torch.autograd.grad(r.level, vt)
    assert g.tolist() == pytest.approx([0.0, 0.0, 4.5, 0.0])
    want = [_fd(lambda x: [_numpy(x, 2, K)[1]], v, j)[0] for j in range(4)]
    np.testing.assert_allclose(g.numpy(), np.ravel(want), atol=1e-6)


def test_slack_budget_has_zero_gradients(backward_path):
    vt = torch.tensor([1.0, 2.0, 0.5], dtype=F64, requires_grad=True)
    r = autodiff.solve(vt, 5, 6.0)
    assert r.capacity.tolist() == [1.0, 1.0, 1.0] and float(r.threshold) == 0.0
    (g,) = torch.autograd.grad(r.capacity.sum() + r.level, vt)
    assert g.tolist() == [0.0, 0.0, 0.0]
    (g,) = torch.autograd.grad(autodiff.solve(vt, 5, 6.0).loss, vt)
    assert g.tolist() == [0.0, 0.0, 0.0]  # l(1) = 0 whatever v


def test_mixed_curvature_fractional_concave_feature_matches_finite_differences(backward_path):
    v = np.array([1.19, 0.451, 1.969, 1.271, 0.311, 1.614])
    K = np.array([5.418, 7.105, 2.847, 1.601, 4.702, 2.542])
    C, *_ = _numpy(v, 2, K)
    assert 0 < C[5] < 1 and 0 < C[0] < 1 and 0 < C[1] < 1  # feature 5 is concave, fractional
    (JC_v, JC_K), (Jmu_v, _), (JL_v, _) = _jacobians(v, K, 2)
    for j in range(v.size):
        dC, dmu, dL, _ = _fd(lambda x: _numpy(x, 2, K), v, j, rel=1e-7)
        np.testing.assert_allclose(JC_v[:, j].numpy(), dC, atol=1e-6)
        assert float(Jmu_v[j]) == pytest.approx(float(dmu), abs=1e-6)
        assert float(JL_v[j]) == pytest.approx(float(dL), abs=1e-6)
        dC, *_ = _fd(lambda x: _numpy(v, 2, x), K, j, rel=1e-7)
        np.testing.assert_allclose(JC_K[:, j].numpy(), dC, atol=1e-6)


def test_mixed_curvature_concave_features_at_bounds_are_held():
    v = np.array([2.0, 1.5, 1.2, 1.0, 0.4])
    K = np.array([2.0, 8.0, 8.0, 2.5, 9.0])
    (JC_v, JC_K), _, _ = _jacobians(v, K, 2)
    C, *_ = _numpy(v, 2, K)
    held = (K < 3) & ((C == 0) | (C == 1))
    assert held.any()
    assert float(JC_v[held].abs().max()) == 0.0 and float(JC_K[held].abs().max()) == 0.0
    for j in range(v.size):
        dC, *_ = _fd(lambda x: _numpy(x, 2, K), v, j)
        np.testing.assert_allclose(JC_v[:, j].numpy(), dC, atol=1e-6)


# ----------------------------------------------------------------------------- interface


def test_batched_rows_equal_unbatched(backward_path, rng):
    rows = [_convex(rng, n=8, d=3)[0] for _ in range(4)]
    V = torch.tensor(np.stack(rows), requires_grad=True)
    r = autodiff.solve(V, 3, 7.0)
    assert r.capacity.shape == (4, 8) and r.loss.shape == (4,) and r.threshold.shape == (4,)
    weights = torch.tensor(rng.normal(size=(4, 8)))
    (G,) = torch.autograd.grad((r.capacity * weights).sum() + r.loss.sum(), V)
    for i, row in enumerate(rows):
        vi = torch.tensor(row, requires_grad=True)
        ri = autodiff.solve(vi, 3, 7.0)
        (gi,) = torch.autograd.grad((ri.capacity * weights[i]).sum() + ri.loss, vi)
        np.testing.assert_allclose(r.capacity[i].detach().numpy(), ri.capacity.detach().numpy())
        np.testing.assert_allclose(G[i].numpy(), gi.numpy(), rtol=1e-12, atol=1e-13)


def test_values_are_the_numpy_solver_s(rng):
    v, K, d = _convex(rng)
    res = capalloc.solve(capalloc.QuadraticProblem(v, d, K))
    r = autodiff.solve(torch.tensor(v), d, torch.tensor(K))
    np.testing.assert_array_equal(r.capacity.numpy(), res.capacity)
    np.testing.assert_allclose(r.norms.numpy(), res.norms, rtol=1e-14)
    assert float(r.loss) == pytest.approx(res.loss, rel=1e-13)
    assert float(r.threshold) == pytest.approx(res.threshold, rel=1e-13)
    assert r.status == 0 and r.success and r.labels.tolist() == res.labels.tolist()
    assert float(r.kkt_residual) == res.kkt_residual


def test_float32_keeps_its_dtype_and_agrees_with_float64(rng):
    v, K, d = _convex(rng)
    v32 = torch.tensor(v, dtype=torch.float32, requires_grad=True)
    K32 = torch.tensor(K, dtype=torch.float32, requires_grad=True)
    r = autodiff.solve(v32, d, K32)
    for t in (r.capacity, r.norms, r.loss, r.threshold, r.level):
        assert t.dtype == torch.float32
    g32 = torch.autograd.grad(r.loss + r.capacity[1], (v32, K32))
    assert g32[0].dtype == torch.float32 and g32[1].dtype == torch.float32
    v64 = torch.tensor(v32.detach().numpy().astype(float), requires_grad=True)
    K64 = torch.tensor(K32.detach().numpy().astype(float), requires_grad=True)
    r64 = autodiff.solve(v64, d, K64)
    g64 = torch.autograd.grad(r64.loss + r64.capacity[1], (v64, K64))
    for a, b in zip(g32, g64, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_allocation_layer_trains_its_kurtosis():
    layer = autodiff.AllocationLayer(d=2, kurtosis=torch.nn.Parameter(torch.tensor(6.0, dtype=F64)))
    assert [name for name, _ in layer.named_parameters()] == ["kurtosis"]
    v = torch.tensor([2.0, 1.5, 1.0, 0.8, 0.5], dtype=F64)
    target = autodiff.solve(v, 2, 9.0).capacity
    opt = torch.optim.LBFGS(
        layer.parameters(),
        max_iter=50,
        tolerance_grad=1e-30,
        tolerance_change=1e-30,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = ((layer(v).capacity - target) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert float(layer.kurtosis) == pytest.approx(9.0, rel=1e-6)
    assert "d=2" in repr(layer)


def test_not_certified_forward_warns_and_reports_status(monkeypatch):
    def uncertified(problem, method="auto", **options):
        C = np.array(capalloc.solve(problem).capacity)
        C[1] -= 1e-3  # no longer optimal: make_result downgrades the status
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AllocationWarning)
            return make_result(problem, C, 1.0, method="fake")

    monkeypatch.setattr(autodiff, "_solve_exact", uncertified)
    v = torch.tensor([4.0, 2.0, 1.0, 0.2], dtype=F64)
    with pytest.warns(AllocationWarning, match="not certified"):
        r = autodiff.solve(v, 2, 10.0)
    assert r.status == 1 and not r.success and "not certified" in r.message
    assert float(r.kkt_residual) > 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"importance": torch.tensor([1.0, -1.0])}, "importance must be >= 0"),
        ({"importance": torch.tensor([1.0, float("nan")])}, "importance must be finite"),
        ({"importance": torch.tensor([1, 2])}, "importance must be a float32 or float64"),
        ({"importance": torch.ones(2, 2, 2)}, "importance must have 1 or 2"),
        ({"d": -1}, "d must be a non-negative integer"),
        ({"d": 1.5}, "d must be a non-negative integer"),
        ({"kurtosis": 0.5}, "kurtosis must be >= 1"),
        ({"kurtosis": torch.tensor([5.0, 0.5], dtype=F64)}, "kurtosis must be >= 1"),
        ({"kurtosis": torch.ones(3, dtype=F64) * 5}, "does not broadcast"),
        ({"kurtosis": torch.tensor(5, dtype=torch.int64)}, "kurtosis must be a float32"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    args = {"importance": torch.tensor([1.0, 2.0], dtype=F64), "d": 1, "kurtosis": 5.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        autodiff.solve(args["importance"], args["d"], args["kurtosis"])


def test_array_like_importance_and_input_law():
    from capalloc.distributions import Sparse

    r = autodiff.solve([3.0, 2.0, 1.0], 1, Sparse(p=0.5))  # Gaussian at p = 0.5: K = 6
    assert r.capacity.dtype == F64
    want = capalloc.solve(capalloc.QuadraticProblem([3.0, 2.0, 1.0], 1, 6.0)).capacity
    np.testing.assert_array_equal(r.capacity.numpy(), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(rng):
    v, K, d = _convex(rng)
    grads = {}
    for device in ("cpu", "cuda"):
        for dtype in (torch.float32, F64):
            vt = torch.tensor(v, dtype=dtype, device=device, requires_grad=True)
            Kt = torch.tensor(K, dtype=dtype, device=device, requires_grad=True)
            r = autodiff.solve(vt, d, Kt)
            assert r.capacity.device.type == device and r.capacity.dtype == dtype
            g = torch.autograd.grad(r.loss + r.capacity[2] + r.threshold, (vt, Kt))
            grads[device, dtype] = [x.cpu().double().numpy() for x in g]
    for dtype, tol in ((torch.float32, 1e-5), (F64, 1e-12)):
        for a, b in zip(grads["cpu", dtype], grads["cuda", dtype], strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- fitting


def test_fit_allocation_recovers_kurtosis_with_known_importances():
    v = 0.85 ** np.arange(12)
    observed = capalloc.solve(capalloc.QuadraticProblem(v, 4, 6.5)).capacity
    fit = autodiff.fit_allocation(observed, 4, v, kurtosis=4.5, free="kurtosis")
    assert fit.status == 0 and fit.residual < 1e-9
    assert float(fit.kurtosis) == pytest.approx(6.5, rel=1e-7)


def test_fit_allocation_recovers_a_parametrised_profile():
    i = torch.arange(10.0, dtype=F64)

    def model(log_r, log_k):
        return torch.exp(log_r * i), 3 + torch.exp(log_k)

    observed = capalloc.solve(capalloc.QuadraticProblem(0.8 ** i.numpy(), 4, 7.5)).capacity
    fit = autodiff.fit_allocation(observed, 4, model=model, params=[np.log(0.7), np.log(2.0)])
    assert fit.residual < 1e-8
    assert float(np.exp(fit.params[0])) == pytest.approx(0.8, rel=1e-6)
    assert float(3 + np.exp(fit.params[1])) == pytest.approx(7.5, rel=1e-5)


def test_fit_allocation_free_importances_reproduce_capacities():
    v = np.array([2.0, 1.7, 1.4, 1.1, 0.9, 0.6, 0.2])
    observed = capalloc.solve(capalloc.QuadraticProblem(v, 3, 8.0)).capacity
    start = v * np.array([1.0, 1.05, 0.95, 1.1, 0.9, 1.0, 1.0])
    fit = autodiff.fit_allocation(observed, 3, start, kurtosis=8.0)
    assert fit.residual < 1e-9
    poly = (observed > 0) & (observed < 1)
    ratio = fit.importance[poly] / v[poly]  # identified up to one scale
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-7)


def test_fit_allocation_on_an_exactly_trained_model():
    v = 0.8 ** np.arange(10)
    problem = capalloc.QuadraticProblem(v, 4, 7.5)
    run = capalloc.train_quadratic(problem, method="exact", seed=0)
    from capalloc.training import effective_capacity

    observed = np.clip(effective_capacity(run.W), 0, 1)
    fit = autodiff.fit_allocation(observed, 4, v, kurtosis=5.0, free="kurtosis")
    assert fit.status == 0 and fit.residual < 1e-3
    assert float(fit.kurtosis) == pytest.approx(7.5, rel=0.02)


@pytest.mark.slow
def test_fit_allocation_on_a_model_trained_on_samples():
    from capalloc.training import TrainConfig
    from capalloc.training.torch_models import train_model

    v = 0.8 ** np.arange(10)
    run = train_model("quadratic", v, d=4, sparsity=0.6, config=TrainConfig(steps=3000, seed=0))
    observed = np.clip(np.asarray(run.capacity)[0], 0, 1)
    fit = autodiff.fit_allocation(observed, 4, v, kurtosis=5.0, free="kurtosis")
    assert fit.residual < 0.01
    assert float(fit.kurtosis) == pytest.approx(3 / 0.4, rel=0.05)


def test_fit_allocation_bad_input():
    with pytest.raises(ValueError, match="free must name"):
        autodiff.fit_allocation([0.5, 0.5], 1, [1.0, 1.0], free=["d"])
    with pytest.raises(ValueError, match="kurtosis must be > 3 where it is fitted"):
        autodiff.fit_allocation([0.5, 0.5], 1, [1.0, 1.0], kurtosis=2.0, free="kurtosis")
    with pytest.raises(ValueError, match="capacity must lie in"):
        autodiff.fit_allocation([1.5, 0.5], 1, [1.0, 1.0])
    with pytest.raises(ValueError, match="params must be given"):
        autodiff.fit_allocation([0.5, 0.5], 1, model=lambda a: (a, a))


def test_flat_kurtosis_features_have_zero_derivatives(backward_path):
    # K = 1: the loss vanishes identically, the feature is ignored and held
    vt = torch.tensor([2.0, 1.5, 1.0, 3.0], dtype=F64, requires_grad=True)
    Kt = torch.tensor([6.0, 6.0, 6.0, 1.0], dtype=F64, requires_grad=True)
    r = autodiff.solve(vt, 1, Kt)
    assert float(r.capacity[3]) == 0.0
    gv, gK = torch.autograd.grad(r.loss + r.norms.sum() + r.capacity[1], (vt, Kt))
    assert float(gv[3]) == 0.0 and float(gK[3]) == 0.0
    assert bool(torch.isfinite(gv).all()) and bool(torch.isfinite(gK).all())


def test_fused_and_torch_backward_agree(rng, monkeypatch):
    v, K, d = _convex(rng, n=30, d=8)
    V = torch.tensor(np.stack([v, rng.permutation(v)]))
    cot = [torch.tensor(rng.normal(size=V.shape)) for _ in range(2)]
    grads = []
    for fused in (True, False):
        monkeypatch.setattr(autodiff, "_FUSED", fused)
        vt = V.clone().requires_grad_(True)
        Kt = torch.tensor(K, requires_grad=True)
        r = autodiff.solve(vt, d, Kt)
        out = (r.capacity * cot[0]).sum() + (r.norms * cot[1]).sum() + r.loss.sum()
        grads.append(torch.autograd.grad(out + r.level.sum(), (vt, Kt)))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-13)
