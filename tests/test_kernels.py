"""Numba kernels of :mod:`capalloc.allocation.methods.kernels` against their plain-numpy twins.

Every kernel is compared on hypothesis-generated inputs with its twin (or with
the numpy form it fuses), the large-``n`` bracketed path is compared with one
plain sweep, and one solve runs in a subprocess under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import _reference
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capalloc import QuadraticProblem, kkt_residual, waterfill
from capalloc.allocation.methods import kernels as _kernels
from capalloc.allocation.methods.waterfill import convex_mu
from capalloc.allocation.result import smallest_threshold
from capalloc.quadratic import closed_form

# the plain-numpy twin divides by breakpoints at zero importance (harmless inf/nan)
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

# ---------------------------------------------------------------------------
# Strategies: convex inputs (K >= 3), with exact K = 3, zeros and ties on demand
# ---------------------------------------------------------------------------

_V_POOL = [0.25, 0.5, 1.0, 2.0, 3.0]


@st.composite
def convex_inputs(draw, max_n: int = 25, near3: bool = False, decades: float = 3.0):
    """``(v, K, budget)`` with ``0 < budget < #(v > 0)``.

    ``K`` is exactly 3 or at least 3.001; ``near3=True`` draws ``K - 3`` down to
    ``1e-15``, where running sums of :math:`1/(K-3)`-sized terms need compensation
    (the kernel has it; the plain-numpy twin does not, so twins are compared on
    the default inputs only).
    """
    n = draw(st.integers(1, max_n))
    v = np.array(
        draw(
            st.lists(
                st.one_of(
                    st.floats(10.0**-decades, 10.0**decades), st.sampled_from(_V_POOL), st.just(0.0)
                ),
                min_size=n,
                max_size=n,
            )
        )
    )
    gap = st.floats(1e-15, 1e-3).map(lambda x: 3.0 + x) if near3 else st.floats(3.001, 60.0)
    K = np.array(
        draw(
            st.lists(
                st.one_of(gap, st.just(3.0), st.sampled_from([4.0, 10.0])), min_size=n, max_size=n
            )
        )
    )
    npos = int(np.count_nonzero(v))
    if npos == 0:
        v[0], npos = 1.0, 1
    frac = draw(st.floats(0.01, 0.99))
    integer = draw(st.booleans())
    budget = float(max(1, round(frac * npos))) if integer and npos > 1 else frac * npos
    if budget >= npos:
        budget = npos - 0.5
    return v, K, budget


def direct_capacity(v, K, mu):
    """``sum_i C_i(mu)`` feature by feature (``K = 3`` at ``v == mu`` counts 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.clip(((K - 1) * v / mu - 2) / (K - 3), 0.0, 1.0)
    c = np.where(K == 3, (v > mu).astype(float), c)
    return float(np.sum(np.where(v > 0, c, 0.0)))


def same_share(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------


@settings(max_examples=80)
@given(convex_inputs())
def test_sweep_matches_numpy_twin(args):
    """Same allocation; same level wherever the root is unique.

    Where ``S`` is flat at the budget (no polysemantic feature at the root) every
    level of the flat stretch is a root: the kernel returns its top, the twin,
    whose running sums round differently, may return another point of it.
    ``nseg`` is not compared: the kernel counts distinct breakpoints, the twin
    counts events (they differ on ties).
    """
    v, K, budget = args
    mu, share, _ = _kernels.sweep(v, K, budget, 0.0, 0.0, 0.0, math.inf)
    mu2, share2, _ = _reference.sweep_numpy(v, K, budget, 0.0, 0.0, 0.0, math.inf)
    assert mu > 0 and mu2 > 0
    C = _kernels.convex_capacities(v, K, mu, share)
    C2 = closed_form.capacity_at(mu2, v, K, share2)
    # plain running sums (the twin's) can miss the budget by ~1e-9 where a feature with
    # K - 3 = 2**-9 carries terms a thousand times its capacity: agreement is asked to
    # that miss (the finishing pass, not tested here, restores the budget)
    slack = max(abs(math.fsum(C2) - budget), abs(math.fsum(C) - budget))
    assert slack <= 1e-6 * max(budget, 1)
    np.testing.assert_allclose(C, C2, rtol=0, atol=1e-9 + 2 * slack)
    poly = (C > 1e-9) & (C < 1 - 1e-9) & (K != 3)
    if poly.any():
        assert math.isclose(mu, mu2, rel_tol=1e-9 + 2 * slack)


@settings(max_examples=60)
@given(convex_inputs())
def test_sweep_solves_the_budget(args):
    """The level found gives ``S(mu) = budget`` (with the ``K = 3`` share)."""
    v, K, budget = args
    mu, share, _ = _kernels.sweep(v, K, budget, 0.0, 0.0, 0.0, math.inf)
    C = _kernels.convex_capacities(v, K, mu, share)
    assert abs(C.sum() - budget) <= 1e-9 * max(budget, 1.0)


@settings(max_examples=60)
@given(convex_inputs(near3=True))
def test_sweep_near_kurtosis_3(args):
    """``K - 3`` down to ``1e-15``: the level is still found; a feature with tiny
    ``K - 3`` moves by ``1/(K-3)`` per unit of ``1/mu``, so the budget is met to
    within that resolution, and the polish step restores it."""
    v, K, budget = args
    mu, share, _ = _kernels.sweep(v, K, budget, 0.0, 0.0, 0.0, math.inf)
    assert 0 < mu < math.inf
    C = _kernels.convex_capacities(v, K, mu, share)
    with np.errstate(divide="ignore"):
        steep = np.max(np.where((v > 0) & (K > 3), 1 / (K - 3), 0.0), initial=0.0)
    assert abs(C.sum() - budget) <= 1e-9 * max(budget, 1.0) + 64 * np.finfo(float).eps * steep


@pytest.mark.parametrize("seed", range(5))
def test_sweep_across_300_decades(seed):
    """Breakpoints 1e300 apart interleave: running sums must not carry the rounding
    residue of the large features (added, then removed) into the small ones."""
    rng = np.random.default_rng(seed)
    n = 60
    v = 10.0 ** rng.uniform(-150, 150, n)
    K = rng.uniform(3.5, 40.0, n)
    for d in range(1, n, 7):
        mu, share, _ = _kernels.sweep(v, K, float(d), 0.0, 0.0, 0.0, math.inf)
        C = _kernels.convex_capacities(v, K, mu, share)
        assert abs(C.sum() - d) <= 1e-9 * d, (d, C.sum())


def test_polish_keeps_one_water_level():
    """A feature with K - 3 = 1e-12 moves 1e12 times faster in 1/mu than its
    neighbours: restoring the budget must put the correction on it."""
    problem = QuadraticProblem([1.0, 0.9, 0.5, 0.3, 0.2], 2, [3 + 1e-12, 10, 10, 10, 10])
    res = waterfill(problem)
    assert abs(res.capacity.sum() - 2) <= 1e-12
    assert res.kkt_residual <= 1e-12
    assert kkt_residual(problem, res.capacity, res.threshold) <= 1e-12


@settings(max_examples=40)
@given(convex_inputs(), st.floats(0.05, 0.95))
def test_sweep_with_aggregate_matches_full_sweep(args, where):
    """Features whose state is fixed between the root and ``mu_top``, passed as the
    aggregate ``(m0, A0, B0)``, give the same level (the contract used by the
    bracketed path)."""
    v, K, budget = args
    mu, _, _ = _kernels.sweep(v, K, budget, 0.0, 0.0, 0.0, math.inf)
    top = mu * (1 + where)
    above = v > top
    poly = ~above & (K != 3) & (v < mu) & ((K - 1) * v / 2 > top)
    rest = ~above & ~poly
    with np.errstate(divide="ignore", invalid="ignore"):
        A0 = float(np.sum(((K - 1) * v / (K - 3))[poly]))
        B0 = float(np.sum((2 / (K - 3))[poly]))
    args2 = (v[rest], K[rest], budget, float(np.count_nonzero(above)), A0, B0, top)
    mu2, _, _ = _kernels.sweep(*args2)
    mu3, _, _ = _reference.sweep_numpy(*args2)
    assert math.isclose(mu, mu2, rel_tol=1e-10)
    assert math.isclose(mu2, mu3, rel_tol=1e-12)


# ---------------------------------------------------------------------------
# capacities, bracket pass, totals, certificate
# ---------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    convex_inputs(),
    st.floats(0.05, 20.0),
    st.one_of(st.just(math.nan), st.floats(0, 1)),
    st.booleans(),
)
def test_convex_capacities_match_numpy_twin(args, mu, share, at_tie):
    v, K, _ = args
    if at_tie:
        mu = float(v[np.argmax(v)])  # land exactly on a breakpoint
    C = _kernels.convex_capacities(v, K, mu, share)
    C2 = closed_form.capacity_at(mu, v, K, share)
    np.testing.assert_allclose(C, C2, rtol=1e-13, atol=1e-15)
    assert np.all((C >= 0) & (C <= 1))


@settings(max_examples=50)
@given(convex_inputs(), st.floats(0.02, 0.98), st.floats(1.05, 4.0))
def test_bracket_pass_matches_twin_and_direct_sums(args, f, ratio):
    v, K, _ = args
    vmax = float(v.max())
    mu_lo = f * vmax
    mu_hi = mu_lo * ratio
    m0, A0, B0, live, vl, npos, s_lo, s_hi = _kernels.bracket_pass(v, K, mu_lo, mu_hi)
    twin = _reference.bracket_pass_numpy(v, K, mu_lo, mu_hi)
    assert (m0, npos) == (twin[0], twin[5]) and npos == np.count_nonzero(v)
    for ours, theirs in zip(
        (A0, B0, s_lo, s_hi), (twin[1], twin[2], twin[6], twin[7]), strict=True
    ):
        assert math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-300)
    np.testing.assert_array_equal(live, twin[3])
    np.testing.assert_array_equal(vl, v[live])
    # S at both ends of the bracket from (aggregate + live features) equals the direct sum
    for mu, s_live in ((mu_lo, s_lo), (mu_hi, s_hi)):
        total = _kernels.total_capacity(v[live], K[live], mu, m0, A0, B0)
        assert math.isclose(total, direct_capacity(v, K, mu), rel_tol=1e-10, abs_tol=1e-10)
        assert math.isclose(m0 + A0 / mu - B0 + s_live, total, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=30)
@given(convex_inputs(), st.floats(0.02, 0.98), st.floats(1.05, 4.0))
def test_bracket_pass_with_scalar_kurtosis(args, f, ratio):
    """A scalar ``K`` (compiled as a loop invariant) gives what the same ``K`` per feature gives."""
    v, K, _ = args
    mu_lo = f * float(v.max())
    ours = _kernels.bracket_pass(v, 7.5, mu_lo, mu_lo * ratio)
    full = _kernels.bracket_pass(v, np.full(v.size, 7.5), mu_lo, mu_lo * ratio)
    for a, b in zip(ours, full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)


@settings(max_examples=40)
@given(convex_inputs(), st.floats(0.05, 20.0))
def test_total_capacity_is_direct_sum(args, mu):
    v, K, _ = args
    total = _kernels.total_capacity(v, K, mu, 0.0, 0.0, 0.0)
    assert math.isclose(total, direct_capacity(v, K, mu), rel_tol=1e-12, abs_tol=1e-12)


@st.composite
def any_allocation(draw):
    """A quadratic problem of any curvature with arbitrary capacities in [0, 1]."""
    n = draw(st.integers(1, 12))
    v = np.array(
        draw(st.lists(st.one_of(st.floats(1e-3, 1e3), st.just(0.0)), min_size=n, max_size=n))
    )
    K = np.array(
        draw(
            st.lists(
                st.one_of(st.floats(1.0, 40.0), st.just(3.0), st.just(1.0)), min_size=n, max_size=n
            )
        )
    )
    C = np.array(
        draw(
            st.lists(
                st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0])), min_size=n, max_size=n
            )
        )
    )
    d = draw(st.integers(0, n + 1))
    return QuadraticProblem(v, d, K), C


@settings(max_examples=50)
@given(any_allocation())
def test_certificate_kernels_match_numpy_forms(args):
    problem, C = args
    v, K = problem.importance, np.ascontiguousarray(problem.kurtosis)
    T, loss, res = _kernels.certify(v, K, C, float(problem.d))
    assert math.isclose(T, smallest_threshold(problem, C), rel_tol=1e-12, abs_tol=1e-300)
    expected = float(np.sum(problem.loss(C)))
    assert math.isclose(loss, expected, rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(res, kkt_residual(problem, C, T), rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=30)
@given(any_allocation())
def test_batch_certificate_is_row_by_row(args):
    problem, C = args
    V = np.stack([problem.importance, 2 * problem.importance])
    KK = np.ascontiguousarray(np.stack([problem.kurtosis] * 2))
    CC = np.stack([C, C[::-1]])
    T, loss, res = _kernels.certificate(V, KK, CC, problem.d)
    for r in range(2):
        T_r, loss_r, res_r = _kernels.certify(V[r], KK[r], CC[r], float(problem.d))
        assert T[r] == T_r and loss[r] == loss_r and res[r] == res_r


@settings(max_examples=40)
@given(convex_inputs())
def test_polish_restores_integer_budget(args):
    v, K, budget = args
    d = float(max(1, math.floor(budget)))
    mu, share, _ = _kernels.sweep(v, K, d, 0.0, 0.0, 0.0, math.inf)
    C = _kernels.convex_capacities(v, K, mu, share)
    before = C.copy()
    _kernels.polish(C, K, d)
    assert abs(C.sum() - d) <= 1e-12 * d or np.allclose(C, before)
    np.testing.assert_allclose(C, before, atol=1e-9)


@settings(max_examples=20)
@given(convex_inputs(max_n=10), st.integers(1, 4))
def test_batch_waterfill_is_row_by_row(args, m):
    v, K, budget = args
    d = max(1, math.floor(budget))
    rng = np.random.default_rng(len(v) + m)
    V = np.stack([v * rng.uniform(0.5, 2.0, v.size) for _ in range(m)])
    KK = np.stack([K] * m)
    C = np.empty(V.shape)
    _kernels.batch_waterfill(V, KK, d, C, np.empty((0, V.shape[1])))
    for r in range(m):
        row = waterfill(QuadraticProblem(V[r], d, KK[r]))
        np.testing.assert_allclose(C[r], row.capacity, rtol=0, atol=1e-13)
    # one shared kurtosis: rows sorted by numpy beforehand, or by the kernel, or alone
    k = float(K[0])
    Cs, Cu = np.empty(V.shape), np.empty(V.shape)
    _kernels.batch_waterfill(V, k, d, Cs, np.sort(V, axis=1))
    _kernels.batch_waterfill(V, k, d, Cu, np.empty((0, V.shape[1])))
    np.testing.assert_array_equal(Cs, Cu)
    for r in range(m):
        row = waterfill(QuadraticProblem(V[r], d, k))
        np.testing.assert_allclose(Cs[r], row.capacity, rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------
# Large n: the bracketed path equals one plain sweep
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["smooth", "ties_and_linear"])
@pytest.mark.parametrize("frac", [0.001, 0.3, 0.97])
def test_bracketed_path_equals_plain_sweep(kind, frac):
    rng = np.random.default_rng(11)
    n = 200_000
    v = 10 ** rng.uniform(-2, 2, n)
    K = 3 + 10 ** rng.uniform(-1, 1.5, n)
    if kind == "ties_and_linear":
        v = np.round(v, 1) + 0.1
        K = np.where(rng.random(n) < 0.3, 3.0, np.round(K, 0))
    d = float(int(frac * n))
    mu, share, nseg = convex_mu(v, K, d)
    mu0, share0, _ = _kernels.sweep(v, K, d, 0.0, 0.0, 0.0, math.inf)
    assert nseg >= 1
    assert math.isclose(mu, mu0, rel_tol=1e-12)
    assert same_share(share, share0)
    C = _kernels.convex_capacities(v, K, mu, share)
    C0 = _kernels.convex_capacities(v, K, mu0, share0)
    np.testing.assert_allclose(C, C0, atol=1e-9)
    assert abs(C.sum() - d) <= 1e-6


# ---------------------------------------------------------------------------
# Pure-python run of the kernels
# ---------------------------------------------------------------------------

_SCRIPT = """
import json, numpy as np
from capalloc import QuadraticProblem, waterfill
out = {}
for name, (v, d, K) in json.loads(SPEC).items():
    res = waterfill(QuadraticProblem(np.array(v), d, np.array(K)))
    out[name] = [res.capacity.tolist(), float(np.max(res.loss)), float(np.max(res.threshold))]
print(json.dumps(out))
"""

_CASES = {
    "convex": ([4.0, 2.0, 1.0, 0.2, 1.0], 2, [10.0, 10.0, 4.0, 3.0, 3.0]),
    "linear_ties": ([1.0, 1.0, 1.0, 0.5], 2, [3.0, 3.0, 3.0, 3.0]),
    "mixed": ([1.0, 0.6, 0.3, 2.0], 2, [2.5, 5.0, 12.0, 1.5]),
    "batched": ([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]], 1, [[5.0, 9.0, 3.0], [4.0, 4.0, 4.0]]),
}


def test_kernels_without_jit_match_jitted():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    code = _SCRIPT.replace("SPEC", repr(json.dumps(_CASES)))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (v, d, K) in _CASES.items():
        res = waterfill(QuadraticProblem(np.array(v), d, np.array(K)))
        C, loss, T = plain[name]
        np.testing.assert_allclose(C, res.capacity, rtol=0, atol=1e-14)
        assert math.isclose(loss, float(np.max(res.loss)), rel_tol=1e-13)
        assert math.isclose(T, float(np.max(res.threshold)), rel_tol=1e-13)


# ---------------------------------------------------------------------------
# finish: capacities at the level, polish and certificate in one pass
# ---------------------------------------------------------------------------


@settings(max_examples=60)
@given(convex_inputs(), st.booleans())
def test_finish_matches_separate_kernels_and_numpy_certificate(args, scalar):
    """``finish`` equals capacities + polish, its threshold and loss equal the numpy
    forms, and its KKT residual bounds :func:`capalloc.kkt_residual` from above."""
    v, K, budget = args
    if scalar:
        K = 8.0
    d = float(max(1, math.floor(budget)))
    mu, share, _ = _kernels.sweep(v, K, d, 0.0, 0.0, 0.0, math.inf)
    C = np.empty(v.size)
    T, loss, kkt = _kernels.finish(v, K, mu, share, d, C)
    Kf = np.broadcast_to(np.asarray(K, float), v.shape)
    ref = _kernels.polish(_kernels.convex_capacities(v, Kf, mu, share), Kf, d)
    np.testing.assert_allclose(C, ref, rtol=0, atol=1e-12)
    problem = QuadraticProblem(v, int(d), Kf)
    assert math.isclose(T, smallest_threshold(problem, C), rel_tol=1e-12, abs_tol=1e-300)
    assert math.isclose(loss, float(np.sum(problem.loss(C))), rel_tol=1e-11, abs_tol=1e-300)
    exact = kkt_residual(problem, C, T)
    assert exact <= kkt + 1e-15
    assert kkt <= 1e-9


def test_finish_in_parallel_blocks_matches_one_block():
    """Above 64Ki features ``finish`` runs in blocks; the result is the serial one."""
    rng = np.random.default_rng(3)
    n = 300_000
    v = rng.pareto(1.5, n)
    K = rng.uniform(3.2, 20.0, n)
    d = n / 7
    mu, share, _ = _kernels.sweep(v, K, d, 0.0, 0.0, 0.0, math.inf)
    C = np.empty(n)
    T, loss, kkt = _kernels.finish(v, K, mu, share, d, C)
    C1 = np.empty(n)
    T1, loss1, kkt1 = _kernels.finish_serial(v, K, mu, share, d, C1)
    np.testing.assert_allclose(C, C1, rtol=0, atol=1e-15)
    assert T == T1 and math.isclose(loss, loss1, rel_tol=1e-12)
    assert max(kkt, kkt1) <= 1e-12
    assert abs(C.sum() - d) <= 1e-9


@settings(max_examples=80)
@given(
    convex_inputs(),
    st.one_of(st.just(3.0), st.floats(3.0 + 1e-9, 60.0), st.sampled_from([4.0, 10.0])),
)
def test_sweep_scalar_matches_sweep(args, K):
    """One shared kurtosis: the merged scan of sorted importances gives the level,
    share and capacities of the event sweep."""
    v, _, budget = args
    mu, share, _ = _kernels.sweep_scalar(v, K, budget)
    mu0, share0, _ = _kernels.sweep(v, np.full(v.size, K), budget, 0.0, 0.0, 0.0, math.inf)
    assert math.isclose(mu, mu0, rel_tol=1e-12)
    assert same_share(share, share0)
    C = _kernels.convex_capacities(v, K, mu, share)
    C0 = _kernels.convex_capacities(v, K, mu0, share0)
    steep = 1.0 if K == 3.0 else max(1.0, 1.0 / (K - 3.0))  # dC/d(1/mu) near K = 3
    np.testing.assert_allclose(C, C0, rtol=0, atol=1e-12 * steep)
