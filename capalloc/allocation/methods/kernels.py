r"""Numba kernels of the exact water-filling solver (their numpy twins live in tests/_reference.py).

Notation (quadratic model, features with :math:`K_i \ge 3` and :math:`v_i > 0`):
with :math:`T = 2\mu^2`, feature ``i`` has capacity

.. math::

    C_i(\mu) = \Pi_{[0,1]}\Big(\frac{(K_i-1) v_i/\mu - 2}{K_i - 3}\Big)
             = \Pi_{[0,1]}(a_i/\mu - b_i),\qquad
    a_i = \frac{(K_i-1) v_i}{K_i-3},\ b_i = \frac{2}{K_i-3},

ignored for :math:`\mu \ge (K_i-1)v_i/2`, monosemantic for :math:`\mu \le v_i`, and a
unit step at :math:`\mu = v_i` when :math:`K_i = 3`. Between breakpoints
:math:`S(\mu) = \sum_i C_i(\mu) = m + A/\mu - B`, so once the segment holding
:math:`S(\mu) = d` is found, :math:`\mu = A / (d - m + B)` exactly.

The kernels never see the other features: callers pass the aggregate
``(m0, A0, B0)`` of features whose state is fixed above ``mu_top``.
Plain-numpy twins of the kernels live with the tests (``tests/_reference.py``).
"""

from __future__ import annotations

import contextlib
import math
import os

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from capalloc._lib.threads import default_threads as free_threads
from capalloc.quadratic import closed_form

__all__ = [
    "capacity",
    "segment",
    "sweep",
    "sweep_sorted",
    "sweep_scalar",
    "sweep_descending",
    "convex_capacities",
    "bracket_pass",
    "total_capacity",
    "compact",
    "certify",
    "certificate",
    "finish",
    "finish_serial",
    "batch_certificate",
    "polish",
    "batch_waterfill",
    "dual_capacities",
    "dual_excess",
    "dual_segment",
]

ENTER, SATURATE, JUMP = 0, 1, 2

# Passes over all features may use reciprocals (a shared kurtosis and mu then leave the
# loop) and, where every term is non-negative so that nothing cancels, reassociate sums:
# they then vectorise, at a cost of an ulp per feature. Sweeps never do either.
_FAST = {"reassoc", "arcp"}

# The closed forms, compiled from their one definition (inlined into each kernel).
_inline = numba.njit(cache=True, inline="always")
capacity = _inline(closed_form.capacity_scalar)  # C(mu) of one feature
_h = _inline(closed_form.level_scalar)  # benefit level h(C)
_entry = _inline(closed_form.entry_scalar)  # (K - 1) v / 2
segment = _inline(closed_form.segment_scalar)  # (a, b) of C = a/mu - b


def _at(K, i):
    """``K[i]``; a scalar ``K`` is the kurtosis of every feature."""
    return K if np.ndim(K) == 0 else K[i]


@overload(_at, inline="always")
def _at_compiled(K, i):  # pragma: no cover - compile time
    """Compiled :func:`_at`: a scalar ``K`` becomes a loop invariant, so loops vectorise."""
    if isinstance(K, types.Number):
        return lambda K, i: K
    return lambda K, i: K[i]


def _row(KK, r):
    """Row ``r`` of a batch's kurtosis: a scalar, one row shared by all, or one per row."""
    return KK if np.ndim(KK) == 0 else KK[r % KK.shape[0]]


@overload(_row, inline="always")
def _row_compiled(KK, r):  # pragma: no cover - compile time
    if isinstance(KK, types.Number):
        return lambda KK, r: KK
    return lambda KK, r: KK[r % KK.shape[0]]


def compact(K):
    """The kurtosis as the kernels take it: a float when every feature shares one value,
    else the stored values, contiguous (a batch sharing one row keeps that row only).

    Examples
    --------
    >>> import numpy as np
    >>> compact(np.broadcast_to(5.0, (3, 4))), compact(np.broadcast_to([4.0, 5.0], (3, 2))).shape
    (5.0, (1, 2))
    """
    K = np.asarray(K, dtype=float)
    if K.size and not any(K.strides):
        return float(K.flat[0])
    if K.ndim == 2 and K.strides[0] == 0:
        return np.ascontiguousarray(K[:1])
    return np.ascontiguousarray(K)


@numba.njit(cache=True, inline="always")
def _add(total, comp, x):  # pragma: no cover - compiled
    """Neumaier-compensated ``total + x``: returns the new ``(total, comp)``."""
    t = total + x
    if abs(total) >= abs(x):
        comp += (total - t) + x
    else:
        comp += (x - t) + total
    return t, comp


#: Sweeps sum their polysemantic terms afresh whenever the level has fallen by this
#: factor since the last time: the running sums then never hold residue of terms much
#: larger than the live ones (their error stays relative to the live terms). The live
#: set is renewed between two refreshes, so refreshing costs O(1) per feature overall.
_REFRESH = 2.0**-20


@numba.njit(cache=True)
def _fresh_sum(s, i, j):  # pragma: no cover - compiled
    """Compensated ``sum(s[i:j])`` as ``(total, compensation)``."""
    total = 0.0
    comp = 0.0
    for k in range(i, j):
        total, comp = _add(total, comp, s[k])
    return total, comp


@numba.njit(cache=True, error_model="numpy")
def sweep_events(v, K, m0, A0, B0, mu_top):  # pragma: no cover - compiled
    """Breakpoints below ``mu_top`` for :func:`sweep`, and the state just below ``mu_top``.

    Returns ``(ev_mu, ev_idx, ev_kind, state)`` with ``state = (m, A, cA, B, cB, npoly)``.
    """
    n = v.size
    ev_mu = np.empty(2 * n)
    ev_idx = np.empty(2 * n, dtype=np.int64)
    ev_kind = np.empty(2 * n, dtype=np.int64)
    m = m0
    A = A0
    B = B0
    # A and B are sums of many terms added and later removed: keep Neumaier
    # compensations (cA, cB) so that no drift builds up over millions of events.
    cA = 0.0
    cB = 0.0
    npoly = 0  # features polysemantic right now (see sweep_scan)
    ne = 0
    for i in range(n):
        vi = v[i]
        Ki = _at(K, i)
        if vi > mu_top:
            m += 1.0
        elif Ki == 3.0:
            ev_mu[ne] = vi
            ev_idx[ne] = i
            ev_kind[ne] = JUMP
            ne += 1
        else:
            if _entry(vi, Ki) > mu_top:
                a, b = segment(vi, Ki)
                A, cA = _add(A, cA, a)
                B, cB = _add(B, cB, b)
                npoly += 1
            else:
                ev_mu[ne] = _entry(vi, Ki)
                ev_idx[ne] = i
                ev_kind[ne] = ENTER
                ne += 1
            ev_mu[ne] = vi
            ev_idx[ne] = i
            ev_kind[ne] = SATURATE
            ne += 1
    return ev_mu[:ne], ev_idx[:ne], ev_kind[:ne], (m, A, cA, B, cB, npoly)


@numba.njit(cache=True, error_model="numpy")
def _fresh_aggregate(v, K, mu_e, mu_top, A0, B0):  # pragma: no cover - compiled
    """``(A, cA, B, cB)`` of :func:`sweep_scan` just above the breakpoint ``mu_e``, summed
    afresh over the features polysemantic there (entered above ``mu_e``, saturating at
    or below it; the same expressions as :func:`sweep_events`)."""
    A, cA, B, cB = A0, 0.0, B0, 0.0
    for i in range(v.size):
        vi = v[i]
        Ki = _at(K, i)
        if Ki != 3.0 and vi <= mu_top and vi <= mu_e and _entry(vi, Ki) > mu_e:
            a, b = segment(vi, Ki)
            A, cA = _add(A, cA, a)
            B, cB = _add(B, cB, b)
    return A, cA, B, cB


@numba.njit(cache=True, error_model="numpy")
def sweep_scan(
    v, K, budget, ev_mu, ev_idx, ev_kind, order, state, A0, B0, mu_top
):  # pragma: no cover - compiled
    """Walk the breakpoints in decreasing order (``order`` sorts ``-ev_mu``) to the
    segment holding ``S(mu) = budget``; see :func:`sweep` for the result."""
    m, A, cA, B, cB, npoly = state
    ne = ev_mu.size
    prev = mu_top
    k = 0
    nseg = 0
    fresh = mu_top  # level at which A and B were last summed afresh
    while k < ne:
        mu_e = ev_mu[order[k]]
        nseg += 1
        if mu_e < fresh * _REFRESH and npoly > 0:  # see _REFRESH
            A, cA, B, cB = _fresh_aggregate(v, K, mu_e, mu_top, A0, B0)
            fresh = mu_e
        s_before = m + (A + cA) / mu_e - (B + cB)
        if s_before >= budget:
            denom = budget - m + (B + cB)
            mu = (A + cA) / denom if (A + cA > 0.0 and denom > 0.0) else mu_e
            mu = min(max(mu, mu_e), prev)
            return mu, np.nan, nseg
        jumps = 0.0
        while k < ne and ev_mu[order[k]] == mu_e:
            j = ev_idx[order[k]]
            kind = ev_kind[order[k]]
            if kind == JUMP:
                m += 1.0
                jumps += 1.0
            else:
                sign = 1.0 if kind == ENTER else -1.0
                Kj = _at(K, j)
                A, cA = _add(A, cA, sign * (Kj - 1.0) * v[j] / (Kj - 3.0))
                B, cB = _add(B, cB, sign * 2.0 / (Kj - 3.0))
                if kind == SATURATE:
                    m += 1.0
                    npoly -= 1
                else:
                    npoly += 1
            k += 1
        # When no feature is polysemantic, A and B are exactly the caller's aggregate
        # again: resetting them drops the rounding residue of terms added and removed
        # (which can be 1e300 times larger than later terms).
        if npoly == 0:
            A, cA, B, cB = A0, 0.0, B0, 0.0
        s_after = m + (A + cA) / mu_e - (B + cB)
        if s_after >= budget:
            share = (budget - (s_after - jumps)) / jumps if jumps > 0.0 else np.nan
            return mu_e, min(max(share, 0.0), 1.0), nseg
        prev = mu_e
    if A + cA > 0.0:  # features polysemantic on the whole range below the last breakpoint
        denom = budget - m + (B + cB)
        if denom > 0.0:
            return min((A + cA) / denom, prev), np.nan, nseg
    return 0.0, np.nan, nseg


@numba.njit(cache=True, error_model="numpy")
def sweep(v, K, budget, m0, A0, B0, mu_top):  # pragma: no cover - compiled
    """Find ``mu`` with ``S(mu) = budget`` below ``mu_top``.

    Returns ``(mu, share, nseg)``; ``share`` is the capacity of each ``K = 3``
    feature with ``v == mu`` (NaN when ``mu`` is not a jump point), ``nseg`` the
    number of breakpoints visited. ``mu = 0`` means the budget is never reached.
    Callers outside numba use :func:`sweep_sorted`, which sorts with numpy.
    """
    ev_mu, ev_idx, ev_kind, state = sweep_events(v, K, m0, A0, B0, mu_top)
    order = np.argsort(-ev_mu)  # equal breakpoints are taken as one group: any order
    return sweep_scan(v, K, budget, ev_mu, ev_idx, ev_kind, order, state, A0, B0, mu_top)


@numba.njit(cache=True, error_model="numpy")
def sweep_scalar(v, K, budget):  # pragma: no cover - compiled
    """:func:`sweep` (no aggregate) for one kurtosis ``K >= 3`` shared by every feature.

    Sorting the importances alone orders both kinds of breakpoints, ``(K - 1) v / 2``
    (enter) and ``v`` (saturate or, for ``K = 3``, jump): the scan merges the two
    streams, so a row of ``n`` features costs a sort of ``n`` values instead of an
    argsort of ``2n`` events. ``B`` is exact (a count times ``2/(K - 3)``) and ``A`` a
    compensated sum of importances.
    """
    return sweep_descending(np.sort(v)[::-1], K, budget)


@numba.njit(cache=True, error_model="numpy")
def sweep_descending(s, K, budget):  # pragma: no cover - compiled
    """:func:`sweep_scalar` on importances already sorted in descending order (batches
    sort their rows with numpy's vectorised sort, several times faster than numba's)."""
    n = s.size
    linear = K == 3.0
    c = 1.0 if linear else (K - 1.0) / 2.0
    a = 0.0 if linear else (K - 1.0) / (K - 3.0)
    b = 0.0 if linear else 2.0 / (K - 3.0)
    m = 0.0
    sv = 0.0  # sum of importances of the polysemantic features, and its compensation
    cv = 0.0
    npoly = 0
    i = 0  # next saturation (or jump) s[i]
    j = n if linear else 0  # next entry c s[j]
    prev = np.inf
    nseg = 0
    fresh = np.inf  # level at which sv was last summed afresh
    while i < n:
        mu_e = max(s[i], c * s[j]) if j < n else s[i]
        nseg += 1
        if mu_e < fresh * _REFRESH:  # the terms added and removed since may dwarf sv
            sv, cv = _fresh_sum(s, i, j)
            fresh = mu_e
        A = a * (sv + cv)
        B = b * npoly
        if m + A / mu_e - B >= budget:
            denom = budget - m + B
            mu = A / denom if (A > 0.0 and denom > 0.0) else mu_e
            return min(max(mu, mu_e), prev), np.nan, nseg
        jumps = 0.0
        while j < n and c * s[j] == mu_e:
            sv, cv = _add(sv, cv, s[j])
            npoly += 1
            j += 1
        while i < n and s[i] == mu_e:
            if linear:
                jumps += 1.0
            else:
                sv, cv = _add(sv, cv, -s[i])
                npoly -= 1
            m += 1.0
            i += 1
        if npoly == 0:
            sv, cv = 0.0, 0.0
        A = a * (sv + cv)
        B = b * npoly
        s_after = m + A / mu_e - B
        if s_after >= budget:
            share = (budget - (s_after - jumps)) / jumps if jumps > 0.0 else np.nan
            return mu_e, min(max(share, 0.0), 1.0), nseg
        prev = mu_e
    return 0.0, np.nan, nseg


def _sweep_row(v, s, K, budget):
    """Row of a batch: :func:`sweep_descending` on ``s`` (the row sorted in ascending
    order, or empty: then :func:`sweep_scalar` sorts) for a scalar ``K``, else :func:`sweep`."""
    if np.ndim(K) == 0:
        return sweep_descending(s[::-1], K, budget) if s.size else sweep_scalar(v, K, budget)
    return sweep(v, K, budget, 0.0, 0.0, 0.0, np.inf)


@overload(_sweep_row)
def _sweep_row_compiled(v, s, K, budget):  # pragma: no cover - compile time
    if isinstance(K, types.Number):

        def scalar(v, s, K, budget):
            if s.size:
                return sweep_descending(s[::-1], K, budget)
            return sweep_scalar(v, K, budget)

        return scalar
    return lambda v, s, K, budget: sweep(v, K, budget, 0.0, 0.0, 0.0, np.inf)


def sweep_sorted(v, K, budgets, m0, A0, B0, mu_top):
    """:func:`sweep` for several budgets, sorting the breakpoints once with numpy's
    (vectorised) argsort; returns one ``(mu, share, nseg)`` per budget. One budget
    with a shared kurtosis and no aggregate takes :func:`sweep_scalar`, and other
    small inputs :func:`sweep`, all compiled: that costs less than the calls between."""
    if len(budgets) == 1 and np.ndim(K) == 0 and m0 == A0 == B0 == 0 and mu_top == np.inf:
        return [sweep_scalar(v, float(K), float(budgets[0]))]
    if v.size <= 256 and len(budgets) == 1:
        return [sweep(v, K, float(budgets[0]), m0, A0, B0, mu_top)]
    ev_mu, ev_idx, ev_kind, state = sweep_events(v, K, m0, A0, B0, mu_top)
    order = np.argsort(-ev_mu)
    return [
        sweep_scan(v, K, float(b), ev_mu, ev_idx, ev_kind, order, state, A0, B0, mu_top)
        for b in budgets
    ]


@numba.njit(cache=True, error_model="numpy")
def convex_capacities(v, K, mu, share):  # pragma: no cover - compiled
    """Capacities at ``mu`` (``share`` for ``K = 3`` features with ``v == mu``)."""
    C = np.empty(v.size)
    for i in range(v.size):
        C[i] = capacity(v[i], _at(K, i), mu, share)
    return C


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST)
def _bracket_sums(v, K, mu_lo, mu_hi, lo, hi, live):  # pragma: no cover - compiled
    """``(m0, A0, B0, npos)`` of :func:`bracket_pass` over ``[lo, hi)``, and in ``live``
    whether each feature has a breakpoint, ``v`` or ``(K - 1) v / 2``, inside
    ``[mu_lo, mu_hi]``. Selects and sums of positive terms only: it vectorises."""
    m0 = 0.0
    A0 = 0.0
    B0 = 0.0
    npos = 0.0
    for i in range(lo, hi):
        vi = v[i]
        Ki = _at(K, i)
        w = (Ki - 1.0) * vi
        poly = (vi < mu_lo) & (w > 2.0 * mu_hi)  # never for K = 3, where w = 2 v
        inv = 1.0 / (1.0 if Ki == 3.0 else Ki - 3.0)
        m0 += 1.0 if vi > mu_hi else 0.0
        A0 += w * inv if poly else 0.0
        B0 += 2.0 * inv if poly else 0.0
        npos += 1.0 if vi > 0.0 else 0.0
        live[i - lo] = ((vi >= mu_lo) & (vi <= mu_hi)) | ((w >= 2.0 * mu_lo) & (w <= 2.0 * mu_hi))
    return m0, A0, B0, npos


_SUB = 4096  # sub-block of the bracket pass: its mask stays in cache


@numba.njit(cache=True, error_model="numpy")
def _bracket_block(v, K, mu_lo, mu_hi, lo, hi, out, live, vals):  # pragma: no cover - compiled
    """:func:`bracket_pass` on ``[lo, hi)``: ``(m0, A0, B0, npos)`` go to ``out``, the
    live indices, less ``lo``, and importances to ``live[lo:]`` and ``vals[lo:]`` (a
    branch on the mask: rarely taken, so well predicted); returns their count."""
    mask = np.empty(_SUB, dtype=np.bool_)
    out[:] = 0.0
    count = 0
    for start in range(lo, hi, _SUB):
        stop = min(start + _SUB, hi)
        part = _bracket_sums(v, K, mu_lo, mu_hi, start, stop, mask)
        for k in range(4):
            out[k] += part[k]
        for i in range(start, stop):
            if mask[i - start]:
                live[lo + count] = i - lo
                vals[lo + count] = v[i]
                count += 1
    return count


@numba.njit(inline="always")
def _bracket_impl(v, K, mu_lo, mu_hi):  # pragma: no cover - compiled
    """:func:`bracket_pass` without the end capacities: ``(m0, A0, B0, npos, live, vals)``.

    The scratch (indices as int32, relative to their block, and importances, copied
    while in cache) comes from numba's allocator, so only the pages written get mapped.
    """
    n = v.size
    nb = _blocks(n)
    stats = np.empty((nb, 4))
    counts = np.empty(nb, dtype=np.int64)
    scratch = np.empty(n, dtype=np.int32)  # blocks hold fewer than 2**31 features
    scratch_v = np.empty(n)
    for b in numba.prange(nb):
        counts[b] = _bracket_block(
            v, K, mu_lo, mu_hi, b * n // nb, (b + 1) * n // nb, stats[b], scratch, scratch_v
        )
    live = np.empty(counts.sum(), dtype=np.int64)
    vals = np.empty(live.size)
    k = 0
    for b in range(nb):
        lo = b * n // nb
        live[k : k + counts[b]] = scratch[lo : lo + counts[b]] + lo
        vals[k : k + counts[b]] = scratch_v[lo : lo + counts[b]]
        k += counts[b]
    tot = stats.sum(axis=0)
    return tot[0], tot[1], tot[2], tot[3], live, vals


# Two dispatchers of one function would share (and mix up) one cache index: two
# functions, one body, inlined (its prange is a parallel loop in the first only).
@numba.njit(cache=True, parallel=True, error_model="numpy")
def _bracket_pass(v, K, mu_lo, mu_hi):  # pragma: no cover - compiled
    return _bracket_impl(v, K, mu_lo, mu_hi)


@numba.njit(cache=True, error_model="numpy")
def _bracket_pass_serial(v, K, mu_lo, mu_hi):  # pragma: no cover - compiled
    return _bracket_impl(v, K, mu_lo, mu_hi)


#: Passes over fewer features run in one thread: a parallel region waits at its barrier
#: for every thread, and on a busy machine for one that the OS has preempted.
PARALLEL_MIN = 1 << 18


def default_threads():
    """Threads of the parallel passes when none are asked for: the cores no other
    process is running on at this instant (:func:`capalloc._lib.threads.default_threads`,
    at least one), so that an idle machine gets every core and a busy neighbour does not
    stall every pass at its barrier; the ``NUMBA_NUM_THREADS`` setting when it is given."""
    if "NUMBA_NUM_THREADS" in os.environ:
        return numba.config.NUMBA_NUM_THREADS
    return min(free_threads(), numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def threads(count, size=PARALLEL_MIN):
    """Context in which parallel loops use ``count`` threads, capped at numba's thread
    pool. ``None``: one thread for work of fewer than :data:`PARALLEL_MIN` entries
    ``size`` (the cores are not even looked at), else :func:`default_threads`."""
    if count is None:
        count = 1 if size < PARALLEL_MIN else default_threads()
    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(count), numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def bracket_pass(v, K, mu_lo, mu_hi):
    """One pass over the features for a bracket ``mu_lo < mu_hi`` (parallel over blocks
    from :data:`PARALLEL_MIN` features).

    Returns ``(m0, A0, B0, live, vlive, npos, s_lo, s_hi)``: the aggregate of features
    whose state is the same on the whole bracket (monosemantic count ``m0``;
    polysemantic sums ``A0 = sum a_i``, ``B0 = sum b_i``; ignored ones drop out), the
    indices and importances of the others, those with a breakpoint inside
    ``[mu_lo, mu_hi]``, the number of positive importances, and the capacity of the
    live features at ``mu_lo`` and at ``mu_hi``.
    """
    if v.size < PARALLEL_MIN:
        m0, A0, B0, npos, live, vals = _bracket_pass_serial(v, K, mu_lo, mu_hi)
    else:
        m0, A0, B0, npos, live, vals = _bracket_pass(v, K, mu_lo, mu_hi)
    Kl = K if np.ndim(K) == 0 else K[live]
    return (
        m0,
        A0,
        B0,
        live,
        vals,
        npos,
        total_capacity(vals, Kl, mu_lo, 0.0, 0.0, 0.0),
        total_capacity(vals, Kl, mu_hi, 0.0, 0.0, 0.0),
    )


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST)
def total_capacity(v, K, mu, m0, A0, B0):  # pragma: no cover - compiled
    """``S(mu)``: the aggregate ``m0 + A0/mu - B0`` plus the capacities of ``v``
    (a sum of terms in [0, 1], reassociated so that it vectorises)."""
    s = m0 + A0 / mu - B0
    for i in range(v.size):
        s += capacity(v[i], _at(K, i), mu, np.nan)
    return s


@numba.njit(cache=True)
def _blocks(n):  # pragma: no cover - compiled
    """Number of blocks a parallel pass over ``n`` features is cut into (fixed, so the
    result does not depend on the thread count, and blocks of at least 64Ki features)."""
    return min(max(n >> 16, 1), 64)


_CHUNK = 1024  # features per chunk of the certificate pass (its buffers stay in L1)
# Statistics of a block, in the order _fill writes them: sum C, loss, the level
# max h over C < 1 (T = 2 level^2), and min h over C > 0. Certificates compare levels
# h = sqrt(g/2), not benefits g: h spans the range of v, g its square (which underflows).
_TOTAL, _LOSS, _LEVEL, _HMIN = range(4)


@numba.njit(cache=True, error_model="numpy", fastmath={"arcp"})
def _fill_chunk(v, K, mu, share, C, lo, hi, from_mu, buf):  # pragma: no cover - compiled
    """Capacities of ``[lo, hi)`` (at ``mu`` when ``from_mu``, else read from ``C``);
    per-feature losses and benefit levels ``h`` (masked for :data:`_LEVEL` and :data:`_HMIN`)
    go to ``buf``. A loop without reductions: it vectorises (numba vectorises neither
    float max/min reductions nor, without reassociation, which could expand ``1 - C``
    and cancel, sums)."""
    for j in range(hi - lo):
        i = lo + j
        vi = v[i]
        Ki = _at(K, i)
        if from_mu:
            c = capacity(vi, Ki, mu, share)
            C[i] = c
        else:
            c = C[i]
        h = _h(vi, Ki, c)
        buf[0, j] = h if c < 1.0 else 0.0
        buf[1, j] = h if c > 0.0 else np.inf
        buf[2, j] = 2.0 * h * (vi * (1.0 - c))  # 0, not inf * 0, where c = 1


@numba.njit(cache=True, fastmath={"reassoc"})
def _sum(x):  # pragma: no cover - compiled
    """Sum of an array, reassociated into vector lanes."""
    s = 0.0
    for j in range(x.size):
        s += x[j]
    return s


@numba.njit(cache=True)
def _fill(v, K, mu, share, C, lo, hi, from_mu, out):  # pragma: no cover - compiled
    """:func:`_fill_chunk` over ``[lo, hi)``; the block's statistics go to ``out``.

    The levels are non-negative, so their extremes are taken on the bit
    patterns as integers, which vectorises.
    """
    buf = np.empty((3, _CHUNK))
    bits = buf.view(np.int64)
    ext = np.empty(2, dtype=np.int64)
    ext[0] = 0
    ext[1] = np.int64(0x7FF0000000000000)  # +inf
    total = 0.0
    loss = 0.0
    for start in range(lo, hi, _CHUNK):
        stop = min(start + _CHUNK, hi)
        _fill_chunk(v, K, mu, share, C, start, stop, from_mu, buf)
        m = stop - start
        total += _sum(C[start:stop])
        loss += _sum(buf[2, :m])
        ext[0] = max(ext[0], bits[0, :m].max())
        ext[1] = min(ext[1], bits[1, :m].min())
    out[_TOTAL] = total
    out[_LOSS] = loss
    out[_LEVEL:] = ext.view(np.float64)


@numba.njit(cache=True)
def _combine(stats):  # pragma: no cover - compiled
    """``(sum C, loss, level, min h over C > 0)`` of the blocks."""
    total = 0.0
    comp = 0.0
    for b in range(stats.shape[0]):
        total, comp = _add(total, comp, stats[b, _TOTAL])
    return total + comp, stats[:, _LOSS].sum(), stats[:, _LEVEL].max(), stats[:, _HMIN].min()


@numba.njit(cache=True, inline="always")
def _off_budget(total, d, ulps):  # pragma: no cover - compiled
    """Whether ``sum C`` misses ``d`` by more than ``ulps`` roundings of ``d`` (the
    serial finish asks for 4, within its own summation error; the parallel one for 64)."""
    return abs(total - d) > ulps * np.finfo(np.float64).eps * max(d, 1.0)


@numba.njit(cache=True, error_model="numpy")
def _polish_weight(C, K, lo, hi):  # pragma: no cover - compiled
    """``sum (C_i + 2/(K_i - 3))`` over the polysemantic features of ``[lo, hi)``."""
    weight = 0.0
    for i in range(lo, hi):
        Ki = _at(K, i)
        if 0.0 < C[i] < 1.0 and Ki != 3.0:
            weight += C[i] + 2.0 / (Ki - 3.0)
    return weight


@numba.njit(cache=True, error_model="numpy")
def _shift(C, K, shift, lo, hi):  # pragma: no cover - compiled
    """Move the polysemantic features of ``[lo, hi)`` by ``shift`` in ``1/mu`` (see :func:`polish`)."""
    for i in range(lo, hi):
        Ki = _at(K, i)
        if 0.0 < C[i] < 1.0 and Ki != 3.0:
            C[i] = min(max(C[i] - shift * (C[i] + 2.0 / (Ki - 3.0)), 0.0), 1.0)


@numba.njit(cache=True, error_model="numpy")
def _residual(v, K, C, level):  # pragma: no cover - compiled
    """Largest natural residual ``|C - Pi(C + (h - level)/max(h, level))|`` or bound
    violation: the per-feature terms of :func:`capalloc.kkt_residual`, on levels
    ``h = sqrt(g/2)`` against ``level = sqrt(T/2)``."""
    res = 0.0
    for i in range(v.size):
        c = C[i]
        h = _h(v[i], _at(K, i), c)
        gap = 1.0 - level / h if h > level else (h / level - 1.0 if h < level else 0.0)
        step = min(max(c + gap, 0.0), 1.0)
        res = max(res, abs(c - step), -c, c - 1.0)
    return res if res == res else np.inf


@numba.njit(cache=True)
def _kkt(res, total, d, level, hmin):  # pragma: no cover - compiled
    """The relative KKT residual (:func:`capalloc.kkt_residual`): ``res``, the budget
    terms and, from ``hmin`` (the smallest level ``h`` with ``C > 0``), a bound on the
    stationarity terms of features with ``C > 0`` and ``h < level`` (see :func:`finish`)."""
    if not (res == res and total == total and level == level and hmin == hmin):
        return np.inf  # a NaN anywhere (max() would drop it) is never certified
    scale = max(d, 1.0)
    res = max(res, (total - d) / scale)
    if level > 0.0:
        res = max(res, (d - total) / scale, min(max(1.0 - hmin / level, 0.0), 1.0))
    return res


@numba.njit(cache=True, error_model="numpy")
def finish_serial(v, K, mu, share, d, C):  # pragma: no cover - compiled
    """:func:`finish` in one thread (small problems, and rows of a batch)."""
    n = v.size
    stats = np.empty((1, 4))
    _fill(v, K, mu, share, C, 0, n, True, stats[0])
    total, loss, level, hmin = _combine(stats)
    if _off_budget(total, d, 4.0):
        weight = _polish_weight(C, K, 0, n)
        if weight > 0.0:
            _shift(C, K, (total - d) / weight, 0, n)
            _fill(v, K, mu, share, C, 0, n, False, stats[0])
            total, loss, level, hmin = _combine(stats)
    return 2.0 * level * level, loss, _kkt(0.0, total, d, level, hmin)


@numba.njit(cache=True, error_model="numpy")
def certify(v, K, C, d):  # pragma: no cover - compiled
    """Certificate of any capacities ``C``: ``(T, loss, kkt_residual)``.

    ``T = 2 level^2`` is the smallest valid threshold (``level = max h`` over ``C < 1``);
    the fused form of :func:`capalloc.allocation.result.smallest_threshold`, ``problem.loss`` and
    :func:`capalloc.kkt_residual`, on levels (their numpy forms are the twins).
    """
    n = v.size
    stats = np.empty((1, 4))
    _fill(v, K, 0.0, np.nan, C, 0, n, False, stats[0])
    total, loss, level, _ = _combine(stats)
    return 2.0 * level * level, loss, _kkt(_residual(v, K, C, level), total, d, level, np.inf)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def finish(v, K, mu, share, d, C):  # pragma: no cover - compiled
    """Capacities at level ``mu``, polished to the budget ``d``, with their certificate.

    Fills ``C`` (allocated by the caller: numpy asks the kernel for huge pages, which
    makes first touch several times cheaper than numba's allocator) and returns ``(T, loss, kkt_residual)``, in one pass over the features
    (parallel over blocks) and a second only where rounding missed the budget.
    Every ``C_i`` lies in [0, 1] by construction and the level is the largest ``h_i``
    with ``C_i < 1``, so of the per-feature terms of :func:`capalloc.kkt_residual` only
    features with ``C_i > 0`` and ``h_i < level`` can contribute, by at most
    ``1 - h_i/level``: the smallest such ``h_i`` bounds them all, and the value
    returned is an upper bound of the residual.
    """
    n = v.size
    nb = _blocks(n)
    stats = np.empty((nb, 4))
    for b in numba.prange(nb):
        _fill(v, K, mu, share, C, b * n // nb, (b + 1) * n // nb, True, stats[b])
    total, loss, level, hmin = _combine(stats)
    if _off_budget(total, d, 64.0):
        weights = np.empty(nb)
        for b in numba.prange(nb):
            weights[b] = _polish_weight(C, K, b * n // nb, (b + 1) * n // nb)
        weight = weights.sum()
        if weight > 0.0:
            for b in numba.prange(nb):
                lo, hi = b * n // nb, (b + 1) * n // nb
                _shift(C, K, (total - d) / weight, lo, hi)
                _fill(v, K, mu, share, C, lo, hi, False, stats[b])
            total, loss, level, hmin = _combine(stats)
    return 2.0 * level * level, loss, _kkt(0.0, total, d, level, hmin)


@numba.njit(cache=True, error_model="numpy")
def polish(C, K, d):  # pragma: no cover - compiled
    r"""Spread the rounding error of ``sum(C) - d`` over polysemantic features (in place).

    Near ``K = 3`` the capacity formula divides a cancelled difference by
    ``K - 3``; restoring the exact budget keeps the allocation feasible and
    exact ties equal. The error is removed by one step in ``1/mu``: feature
    ``i`` moves in proportion to :math:`dC_i/d(1/\mu) \propto C_i + 2/(K_i-3)`,
    so all features stay on one water level (steep features near ``K = 3``
    absorb almost all of it) and the KKT residual stays at rounding level.
    """
    total = 0.0
    comp = 0.0
    for i in range(C.size):
        total, comp = _add(total, comp, C[i])
    weight = _polish_weight(C, K, 0, C.size)
    if weight > 0.0:
        _shift(C, K, (total + comp - d) / weight, 0, C.size)
    return C


@numba.njit(cache=True, parallel=True, error_model="numpy")
def batch_certificate(V, KK, C, d):  # pragma: no cover - compiled
    """Row-wise :func:`certify`: ``(T, loss, kkt)``, batched."""
    m, n = V.shape
    T = np.empty(m)
    loss = np.empty(m)
    kkt = np.empty(m)
    for r in numba.prange(m):
        T[r], loss[r], kkt[r] = certify(V[r], _row(KK, r), C[r], d)
    return T, loss, kkt


@numba.njit(cache=True, parallel=True, error_model="numpy")
def batch_waterfill(V, KK, d, C, S):  # pragma: no cover - compiled
    """Water-filling and certificate for a batch of convex problems (rows), in parallel,
    into ``C`` (see :func:`finish` on why the caller allocates it). ``S``: the rows of
    ``V`` sorted in ascending order where ``KK`` is one number (an empty ``(0, n)``
    array otherwise, or to sort here).

    Returns ``(T, loss, kkt, mu, nseg)`` with ``mu = -1`` for rows where the budget
    covers every feature of positive importance.
    """
    m, n = V.shape
    T = np.empty(m)
    loss = np.empty(m)
    kkt = np.empty(m)
    MU = np.empty(m)
    NSEG = np.zeros(m, dtype=np.int64)
    for r in numba.prange(m):
        v = V[r]
        K = _row(KK, r)
        npos = 0
        for i in range(n):
            if v[i] > 0.0:
                npos += 1
        if d >= npos or d == 0:
            for i in range(n):
                C[r, i] = 1.0 if v[i] > 0.0 and d > 0 else 0.0
            MU[r] = -1.0 if d > 0 else np.inf
            T[r], loss[r], kkt[r] = certify(v, K, C[r], d)
        else:
            s = S[r] if S.shape[0] == m else v[:0]
            mu, share, NSEG[r] = _sweep_row(v, s, K, float(d))
            MU[r] = mu
            T[r], loss[r], kkt[r] = finish_serial(v, K, mu, share, d, C[r])
    return T, loss, kkt, MU, NSEG


def certificate(v, K, C, d):
    """:func:`certify` or :func:`batch_certificate` by shape: ``(T, loss, kkt)``.

    Takes the kurtosis in any broadcast form (see :func:`compact`).
    """
    v = np.ascontiguousarray(v, dtype=float)
    C = np.ascontiguousarray(C, dtype=float)
    if C.ndim == 2:
        return batch_certificate(v, compact(K), C, float(d))
    return certify(v, compact(K), C, float(d))


# ---------------------------------------------------------------------------
# Dual root finding (method "scipy", an algorithm independent of the sweeps above)
# ---------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def dual_excess(log_mu, v, K, d):  # pragma: no cover - compiled
    """``sum_i C_i(mu) - d`` for features with ``K >= 3`` (``K = 3``: a unit step at ``v``)."""
    mu = math.exp(log_mu)
    s = 0.0
    for i in range(v.size):
        s += capacity(v[i], K[i], mu, 0.0)
    return s - d


@numba.njit(cache=True, error_model="numpy")
def dual_segment(v, K, mu):  # pragma: no cover - compiled
    """The segment holding ``mu``: ``(m, npoly, A, B)`` with ``S = m + A/mu - B`` on it.

    ``m`` counts monosemantic features, ``npoly`` polysemantic ones, whose
    segment coefficients ``a_i``, ``b_i`` sum (compensated) to ``A``, ``B``.
    """
    m = 0
    npoly = 0
    A, cA, B, cB = 0.0, 0.0, 0.0, 0.0
    for i in range(v.size):
        vi, Ki = v[i], K[i]
        if vi <= 0.0:
            continue
        if Ki == 3.0:
            if vi > mu:
                m += 1
        elif vi >= mu:
            m += 1
        elif (Ki - 1.0) * vi > 2.0 * mu:
            npoly += 1
            a, b = segment(vi, Ki)
            A, cA = _add(A, cA, a)
            B, cB = _add(B, cB, b)
    return m, npoly, A + cA, B + cB


@numba.njit(cache=True, error_model="numpy")
def dual_capacities(v, K, mu):  # pragma: no cover - compiled
    """Capacities ``C_i(mu)`` of features with ``K >= 3`` (0 at a ``K = 3`` tie)."""
    C = np.empty(v.size)
    for i in range(v.size):
        C[i] = capacity(v[i], K[i], mu, 0.0)
    return C
