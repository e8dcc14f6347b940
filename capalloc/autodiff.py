r"""A differentiable allocation for torch: the certified optimum, and its exact derivatives.

:func:`solve` takes importances :math:`v` and kurtosis :math:`K` as torch tensors (one
problem ``(n,)`` or a batch ``(m, n)``, CPU or CUDA, float32 or float64) and returns the
optimal capacities, norms, loss and threshold as tensors that autograd differentiates in
``importance`` and ``kurtosis``. The forward pass is the exact, certified solver
(:func:`capalloc.solve` on a float64 numpy copy); the backward pass is the closed-form
vector-Jacobian product of the optimality conditions (no Jacobian formed, no unrolled
iterations, :math:`O(n)` per row), and forward mode (``torch.autograd.forward_ad``) is the
matching Jacobian-vector product.

The derivative
--------------
With water level :math:`\mu` (threshold :math:`T = 2\mu^2`) each feature of the
*differentiable set* :math:`P` (``0 < C_i < 1`` and :math:`K_i \ne 3`) sits where its
benefit level equals the water level, :math:`h_i(C_i) = \mu`, i.e.

.. math::

    C_i = \frac{a_i}{\mu} - b_i, \quad a_i = \frac{(K_i-1) v_i}{K_i-3},\ b_i = \frac{2}{K_i-3},
    \qquad \sum_{i \in P} C_i = d - \sum_{j \notin P} C_j,

so :math:`\mu = \sum_P a_i / (d - \sum_{j\notin P} C_j + \sum_P b_i)`. Differentiating,
with :math:`w_i = a_i/\mu = C_i + b_i`, :math:`D = \sum_P w_i` and
:math:`e_i = \frac{K_i-1}{K_i-3}\,\dot v_i + \frac{2(\mu - v_i)}{(K_i-3)^2}\,\dot K_i`,

.. math::

    \dot\mu = \frac{1}{D}\sum_{i\in P} e_i, \qquad
    \dot C_i = \frac{e_i - w_i\,\dot\mu}{\mu}\ (i \in P), \qquad \dot C_j = 0\ (j \notin P),

the JVP; its transpose, for cotangents :math:`(\bar C, \bar\mu)`, is the VJP

.. math::

    u = \frac{\mu\bar\mu - \sum_P \bar C_i w_i}{D}, \qquad
    \bar v_i = \frac{\bar C_i + u}{\mu}\,\frac{K_i-1}{K_i-3}, \qquad
    \bar K_i = \frac{\bar C_i + u}{\mu}\,\frac{2(\mu - v_i)}{(K_i-3)^2} \quad (i \in P).

Norms :math:`N_i = h_i(C_i)\,C_i` and the loss :math:`\sum_i 2 h_i v_i (1 - C_i)` are outputs
of the same function with their own closed-form products (the loss by the envelope theorem:
:math:`\partial\ell_i/\partial v_i`, :math:`\partial\ell_i/\partial K_i` at fixed capacities,
since :math:`\sum_P \dot C_i = 0`), and :math:`T = 2\mu^2`. On CPU the backward pass is one
fused numba kernel (two passes per row); elsewhere a few torch operations. See
``docs/autodiff.md``.

Conventions (the same one-sided derivatives as :mod:`capalloc.allocation.sensitivity`)
-------------------------------------------------------------------------------------
* **Regimes are held fixed.** Monosemantic (``C = 1``) and ignored (``C = 0``) features,
  classified with tolerance ``label_tol`` (``1e-9``, as ``result.labels``), do not move. On a
  regime boundary (``v_i = \mu`` counts monosemantic) the derivative is the one-sided one of
  the regime the solver reports.
* **No differentiable feature** (every row of ``P`` empty, e.g. :math:`K \le 3`, where the
  optimum is piecewise constant in ``v``): capacities have gradient 0, and the reported
  level, the smallest valid one :math:`\mu = \max_{C_i < 1} h_i(C_i)`, is differentiated
  through its maximising feature at fixed capacity
  (:math:`\partial h/\partial v = (K-1)/(2+(K-3)C)`,
  :math:`\partial h/\partial K = 2v(1-C)/(2+(K-3)C)^2`; 0 where ``K = 1``). With :math:`\mu = 0` (the budget
  does not bind) everything has gradient 0.
* **Mixed curvature** (some :math:`K_i < 3`): the optimum has at most one fractional
  concave feature; it belongs to :math:`P` with the same formula (its :math:`a, b < 0`), so
  the derivative is the implicit-function one of the solver's candidate (exact while that
  candidate stays optimal). Concave features at 0 or 1, and ``K = 3`` features (whose
  capacity is a step at :math:`v = \mu`, shared at a tie), are held fixed.
* Gradients flow to ``importance`` and ``kurtosis`` only (``d`` is an integer).

Certification: every forward solve is certified by its KKT residual. A solve that is not
certified is reported by ``result.status`` (1) and an
:class:`~capalloc.allocation.result.AllocationWarning`; its derivatives are those of the
conditions above at the returned point.

:func:`kkt_residual` is the optimality function :math:`F(x, \theta)` with
:math:`x = (C, \mu)` for implicit-differentiation libraries, and :func:`fit_allocation`
fits importances and kurtosis to observed capacities by least squares through
:func:`solve`. torch is imported on first use: ``import capalloc.autodiff`` does not need it.

References
----------
.. [1] A. Scherlis et al., "Polysemanticity and Capacity in Neural Networks",
   arXiv:2210.01892 (water-filling, regimes).
.. [2] A. Agrawal et al., "Differentiable Convex Optimization Layers", NeurIPS 2019
   (layers called on parameter tensors, batch dimension first).
.. [3] M. Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022
   (optimality functions).

Examples
--------
>>> import pytest
>>> torch = pytest.importorskip("torch")
>>> from capalloc import autodiff
>>> v = torch.tensor([4.0, 2.0, 1.0, 0.2], dtype=torch.float64, requires_grad=True)
>>> res = autodiff.solve(v, d=2, kurtosis=10.0)
>>> res.capacity.detach().numpy().round(4).tolist()
[1.0, 0.7619, 0.2381, 0.0]
>>> res.capacity[1].backward()
>>> v.grad.numpy().round(4).tolist()  # only the polysemantic pair moves
[0.0, 0.1746, -0.3492, 0.0]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from capalloc._lib.validation import (
    as_float_array,
    check_budget,
    check_capacity,
    check_importance,
    check_kurtosis,
    check_positive,
    short,
)
from capalloc.allocation.problems import QuadraticProblem
from capalloc.allocation.result import AllocationResult, AllocationWarning
from capalloc.allocation.solve import solve as _solve_exact
from capalloc.quadratic import closed_form

__all__ = [
    "AllocationFit",
    "AllocationLayer",  # noqa: F822 - defined on first access (needs torch)
    "DifferentiableAllocation",
    "fit_allocation",
    "kkt_residual",
    "solve",
]

#: capacities within this of 0 or 1 are held at the bound (``AllocationResult.label_tol``)
LABEL_TOL = 1e-9
_DTYPES = ("float32", "float64")


def _torch() -> Any:
    """The torch module (``ImportError`` naming the extra when it is missing)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError("capalloc.autodiff needs torch: pip install 'capalloc[torch]'") from exc
    return torch


# ----------------------------------------------------------------------------- torch forms


def _partials(torch: Any, v: Any, K: Any, C: Any) -> tuple[Any, Any, Any, Any]:
    r"""``(den, hv, hK, t)`` at fixed capacity: :math:`2 + (K-3) C`,
    :math:`\partial h/\partial v = (K-1)/(2+(K-3)C)`,
    :math:`\partial h/\partial K = 2v(1-C)/(2+(K-3)C)^2` (both 0 where ``K = 1``: the loss
    and the minimum norm vanish identically there) and :math:`t = v (1 - C)`. ``K`` keeps its
    own (broadcasting) shape, so a shared kurtosis costs no per-feature work."""
    den = 2 + (K - 3) * C
    t = v * (1 - C)
    flat = K == 1
    if bool(flat.any()):  # K = 1 at C = 1 gives 0/0: held at 0
        keep = (~flat).to(v.dtype)
        den = torch.where(flat, torch.ones_like(den), den)
        return den, keep * (K - 1) / den, keep * 2 * t / (den * den), t
    return den, (K - 1) / den, 2 * t / (den * den), t


def _level(torch: Any, C: Any, v: Any, K: Any) -> Any:
    r"""Torch :math:`h = (K-1) v/(2 + (K-3) C)`, 0 where ``K = 1`` (differentiable)."""
    return _partials(torch, v, K, C)[1] * v


def _pieces(torch: Any, v: Any, K: Any, mu: Any, poly: Any) -> tuple[Any, Any, Any, Any]:
    """Per-feature factors of the JVP/VJP on ``P`` (0 elsewhere): ``(cp, kp, w, D)`` with
    ``cp = (K-1)/((K-3) mu)``, ``kp = 2 (mu - v)/((K-3)^2 mu)``, ``w = cp v = C + b`` and
    ``D = sum_P w`` (rows with ``mu = 0`` have no ``P``)."""
    m = mu.unsqueeze(-1)
    inv = torch.where(m > 0, 1 / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(m))
    km3 = K - 3
    if bool((km3 == 0).any()):  # K = 3 is never in P: keep its factors finite (then 0)
        km3 = torch.where(km3 == 0, torch.ones_like(km3), km3)
    mask = poly.to(v.dtype)
    cp = mask * ((K - 1) / km3 * inv)
    kp = mask * (m - v) * (2 * inv / (km3 * km3))
    w = cp * v
    return cp, kp, w, w.sum(-1)


def _pick(x: Any, idx: Any) -> Any:
    """``x[..., idx]`` per row (``idx`` of shape ``x.shape[:-1]``)."""
    return x.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def _level_np(C: np.ndarray, v: np.ndarray, K: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""Water level :math:`\max_{C_i<1} h_i(C_i)` of each row of 2-D arrays, and its argmax."""
    with np.errstate(all="ignore"):
        h = closed_form.benefit_level(C, v, K)
    score = np.where(C < 1.0, h, -np.inf)
    top = np.argmax(score, axis=-1) if C.shape[-1] else np.zeros(C.shape[0], dtype=np.int64)
    mu = np.max(np.where(C < 1.0, h, 0.0), axis=-1, initial=0.0)
    return mu, top


class _Solved:
    """What the forward solve leaves for the wrapper."""

    allocation: AllocationResult
    captured: list


def _forward_np(v_np: np.ndarray, K_np: np.ndarray, res: AllocationResult) -> tuple:
    """``(C, mu, norms, loss, poly, top)`` of a solve, as numpy arrays (2-D rows)."""
    n = v_np.shape[-1]
    C = np.array(res.capacity, dtype=float).reshape(-1, n)  # a writable copy for torch
    v2 = v_np.reshape(-1, n)
    K2 = K_np if K_np.ndim == 0 else np.broadcast_to(K_np, v_np.shape).reshape(-1, n)
    with np.errstate(all="ignore"):
        mu = np.sqrt(np.asarray(res.threshold, dtype=float).reshape(-1) / 2)
    # T = 2 mu^2 under- or overflows for extreme importances: those rows from the levels
    redo = ~np.isfinite(mu) | (mu == 0)
    top = np.full(C.shape[0], -1, dtype=np.int64)
    if redo.any():
        K_redo = K2 if np.ndim(K2) == 0 else K2[redo]
        mu[redo], _ = _level_np(C[redo], v2[redo], K_redo)
    poly = (C > LABEL_TOL) & (C < 1 - LABEL_TOL) & (mu > 0)[:, None]
    if np.ndim(K2) == 0:
        poly &= bool(K2 != 3)
    else:
        poly &= K2 != 3
    # rows with no differentiable feature: mu moves with its maximising feature
    lone = ~poly.any(axis=-1) & (mu > 0)
    if lone.any():
        K_lone = K2 if np.ndim(K2) == 0 else K2[lone]
        top[lone] = _level_np(C[lone], v2[lone], K_lone)[1]
    norms = np.array(res.norms, dtype=float).reshape(-1, n)
    loss = np.array(res.loss, dtype=float).reshape(-1)
    return C, mu, norms, loss, poly, top


_KERNEL: list = []


def _vjp_kernel() -> Any:
    """The fused CPU vector-Jacobian product (numba, compiled on first use and cached).

    Two passes per row, the same formulas as the torch path of ``backward`` (which runs on
    other devices): ``u`` from the sums over ``P``, then every feature's cotangents.
    """
    if _KERNEL:
        return _KERNEL[0]
    import numba

    @numba.njit(cache=True, error_model="numpy")
    def vjp(v, K, C, mu, poly, top, gC, gmu, gN, gL, gv, gK):  # noqa: ANN001, ANN202
        m, n = v.shape
        for r in range(m):
            mr = mu[r]
            inv = 1.0 / mr if mr > 0 else 0.0
            S = 0.0
            D = 0.0
            for i in range(n):
                if poly[r, i]:
                    k = K[r, i]
                    g = gC[r, i]
                    if gN.shape[0]:
                        den = 2.0 + (k - 3.0) * C[r, i]
                        g += gN[r, i] * 2.0 * (k - 1.0) * v[r, i] / (den * den)
                    w = (k - 1.0) / (k - 3.0) * inv * v[r, i]
                    D += w
                    S += g * w
            u = (mr * gmu[r] - S) / D if D != 0 else 0.0
            lr = gL[r] if gL.shape[0] else 0.0
            for i in range(n):
                k = K[r, i]
                c = C[r, i]
                vi = v[r, i]
                if k == 1.0:
                    den, hv, hK = 1.0, 0.0, 0.0
                else:
                    den = 2.0 + (k - 3.0) * c
                    hv = (k - 1.0) / den
                    hK = 2.0 * vi * (1.0 - c) / (den * den)
                a = gN[r, i] * c if gN.shape[0] else 0.0
                b = lr * 2.0 * vi * (1.0 - c)
                dv = (a + 2.0 * b) * hv
                dk = (a + b) * hK
                if poly[r, i]:
                    g = gC[r, i] + u
                    if gN.shape[0]:
                        g += gN[r, i] * 2.0 * hv * vi / den
                    km3 = k - 3.0
                    dv += g * (k - 1.0) / km3 * inv
                    dk += g * 2.0 * (mr - vi) / (km3 * km3) * inv
                if i == top[r]:
                    dv += gmu[r] * hv
                    dk += gmu[r] * hK
                gv[r, i] = dv
                gK[r, i] = dk

    _KERNEL.append(vjp)
    return vjp


def _vjp_cpu(torch: Any, saved: tuple, gC: Any, gmu: Any, gN: Any, gL: Any) -> tuple[Any, Any]:
    """``(gv, gK)`` on CPU by :func:`_vjp_kernel` (``gK`` in the shape of ``v``)."""
    v, K, C, mu, poly, top = saved
    n = v.shape[-1]
    as2 = lambda x: x.detach().reshape(-1, n).numpy()  # noqa: E731
    v2, C2, P2 = as2(v), as2(C), as2(poly)
    K2 = np.broadcast_to(K.detach().numpy(), v.shape).reshape(-1, n)
    rows = v2.shape[0]
    mu1 = mu.detach().reshape(-1).numpy()
    top1 = top.reshape(-1).numpy()
    gC2 = as2(gC) if gC is not None else np.zeros((rows, n))
    gmu1 = gmu.detach().reshape(-1).numpy() if gmu is not None else np.zeros(rows)
    gN2 = as2(gN) if gN is not None else np.zeros((0, 0))
    gL1 = gL.detach().reshape(-1).numpy() if gL is not None else np.zeros(0)
    gv, gK = np.empty((rows, n)), np.empty((rows, n))
    _vjp_kernel()(v2, K2, C2, mu1, P2, top1, gC2, gmu1, gN2, gL1, gv, gK)
    return torch.from_numpy(gv).reshape(v.shape), torch.from_numpy(gK).reshape(v.shape)


def _make_function() -> Any:
    torch = _torch()

    class _Allocate(torch.autograd.Function):  # type: ignore[name-defined]  # torch is imported lazily
        """``(v, K) -> (C, mu, N, L)`` by the exact solver, with closed-form VJP and JVP."""

        @staticmethod
        def forward(v, K, d, method, options, box):  # noqa: ANN001, ANN205
            v_np = v.detach().to("cpu", torch.float64).numpy()
            v_np = check_importance(v_np, "importance", ndim=(1, 2))
            K_np = check_kurtosis(K.detach().to("cpu", torch.float64).numpy(), "kurtosis")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = _solve_exact(QuadraticProblem(v_np, d, K_np), method, **options)
            box.allocation, box.captured = res, list(caught)
            shape = v_np.shape
            out = _forward_np(v_np, K_np, res)
            rows = shape[:-1]
            C, mu, N, L, poly, top = (
                torch.from_numpy(x.reshape(shape if x.ndim == 2 else rows)).to(v.device)
                for x in out
            )
            return C, mu, N, L, poly, top

        @staticmethod
        def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
            v, K = inputs[0], inputs[1]
            C, mu, _N, _L, poly, top = output
            ctx.mark_non_differentiable(poly, top)
            ctx.K_shape = K.shape  # K in its own shape: gradients are summed back to it
            ctx.save_for_backward(v, K, C, mu, poly, top)
            ctx.save_for_forward(v, K, C, mu, poly, top)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, gC, gmu, gN, gL, _gp, _gt):  # noqa: ANN001, ANN205
            v, K, C, mu, poly, top = ctx.saved_tensors
            if v.device.type == "cpu" and _FUSED:
                try:
                    gv, gK = _vjp_cpu(torch, ctx.saved_tensors, gC, gmu, gN, gL)
                except RuntimeError:  # cotangents without storage (torch.func's vmap)
                    pass
                else:
                    gK = gK.sum_to_size(ctx.K_shape) if ctx.needs_input_grad[1] else None
                    return gv, gK, None, None, None, None
            gmu = torch.zeros_like(mu) if gmu is None else gmu
            lone = top >= 0  # rows without P: the level moves with its maximising feature
            any_lone = bool(lone.any())
            need = gN is not None or gL is not None or any_lone
            if need:
                den, hv, hK, t = _partials(torch, v, K, C)
            g = torch.zeros_like(v) if gC is None else gC
            if gN is not None:
                g = g + gN * (2 * hv * v / den)  # dN/dC = 2 h/(2 + (K-3) C)
            cp, kp, w, D = _pieces(torch, v, K, mu, poly)
            u = (mu * gmu - (g * w).sum(-1)) / torch.where(D != 0, D, torch.ones_like(D))
            g = g + u.unsqueeze(-1)
            gv, gK = g * cp, g * kp  # 0 off P
            # direct terms at fixed capacity: N = h C, and the loss l = 2 h v (1 - C) by the
            # envelope theorem (its capacity term sums to 0 over P)
            if gN is not None or gL is not None:
                a = 0.0 if gN is None else gN * C
                b = 0.0 if gL is None else gL.unsqueeze(-1) * (2 * t)
                gv = gv + (a + 2 * b) * hv
                gK = gK + (a + b) * hK
            if any_lone:
                idx = top.clamp(min=0)
                add = torch.where(lone, gmu, torch.zeros_like(gmu)).unsqueeze(-1)
                Kx = K.expand(v.shape)
                gv = gv.scatter_add(
                    -1, idx.unsqueeze(-1), add * _pick(hv.expand(v.shape), idx).unsqueeze(-1)
                )
                gK = gK.expand(v.shape).scatter_add(
                    -1, idx.unsqueeze(-1), add * _pick(hK.expand(Kx.shape), idx).unsqueeze(-1)
                )
            gK = gK.expand(v.shape).sum_to_size(ctx.K_shape) if ctx.needs_input_grad[1] else None
            return gv, gK, None, None, None, None

        @staticmethod
        def jvp(ctx, dv, dK, _d, _m, _o, _b):  # noqa: ANN001, ANN205
            v, K, C, mu, poly, top = ctx.saved_tensors
            dv = torch.zeros_like(v) if dv is None else dv
            dK = torch.zeros_like(K) if dK is None else dK
            cp, kp, w, D = _pieces(torch, v, K, mu, poly)
            e = cp * dv + kp * dK  # (d mu-equation terms)/mu, 0 off P
            dmu_mu = e.sum(-1) / torch.where(D != 0, D, torch.ones_like(D))  # dmu / mu
            dC = e - w * dmu_mu.unsqueeze(-1)
            dmu = dmu_mu * mu
            den, hv, hK, t = _partials(torch, v, K, C)
            dh = hv * dv + hK * dK  # the level's change at fixed capacity
            lone = top >= 0
            if bool(lone.any()):
                dmu = torch.where(lone, _pick(dh.expand(v.shape), top.clamp(min=0)), dmu)
            dN = (2 * hv * v / den) * dC + C * dh
            dL = (2 * t * (dh + hv * dv)).sum(-1)
            return dC, dmu, dN, dL, None, None

    return _Allocate


_FUNCTION: list = []
#: the CPU backward by the fused numba kernel (False: the torch path, as on other devices)
_FUSED = True


def _function() -> Any:
    if not _FUNCTION:
        _FUNCTION.append(_make_function())
    return _FUNCTION[0]


# ----------------------------------------------------------------------------- inputs


def _importance(torch: Any, value: Any) -> Any:
    """``importance`` as a float32/float64 tensor (values are checked by the forward solve,
    on its numpy copy, so that ``torch.func`` transforms see no data access here)."""
    if not isinstance(value, torch.Tensor):
        return torch.as_tensor(check_importance(value, "importance", ndim=(1, 2)))
    name = str(value.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"importance must be a float32 or float64 tensor, got dtype {name}")
    if value.ndim not in (1, 2):
        raise ValueError(
            f"importance must have 1 or 2 dimension(s), got ndim={value.ndim} "
            f"(shape {tuple(value.shape)})"
        )
    return value


def _kurtosis(torch: Any, value: Any, v: Any) -> Any:
    """``kurtosis`` as a float64 tensor on ``v``'s device, in its own (broadcasting) shape."""
    if hasattr(value, "kurtosis") and not isinstance(value, torch.Tensor):  # an InputLaw
        value = value.kurtosis
    if isinstance(value, torch.Tensor):
        name = str(value.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"kurtosis must be a float32 or float64 tensor, got dtype {name}")
        if value.device != v.device and value.ndim:
            raise ValueError(
                f"kurtosis must be on the device of importance ({v.device}), got {value.device}"
            )
        K = value.to(v.device, torch.float64)
    else:
        K = torch.as_tensor(check_kurtosis(value, "kurtosis"), device=v.device)
    try:
        fits = np.broadcast_shapes(tuple(K.shape), tuple(v.shape)) == tuple(v.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"kurtosis of shape {tuple(K.shape)} does not broadcast to importance shape "
            f"{tuple(v.shape)}"
        )
    return K


# ----------------------------------------------------------------------------- solve


@dataclass(frozen=True, repr=False, eq=False)
class DifferentiableAllocation:
    r"""The optimum as torch tensors, differentiable in ``importance`` and ``kurtosis``.

    Attributes
    ----------
    capacity : (n,) or (m, n) Tensor
        Optimal capacities :math:`C_i`.
    norms : (n,) or (m, n) Tensor
        Optimal squared norms :math:`N_i = h_i(C_i)\, C_i`.
    loss : () or (m,) Tensor
        Optimal loss :math:`\sum_i 2 h_i v_i (1 - C_i)`.
    threshold : () or (m,) Tensor
        :math:`T = 2\mu^2`, the smallest valid Lagrange multiplier of :math:`\sum C \le d`.
    level : () or (m,) Tensor
        The water level :math:`\mu = \max_{C_i < 1} h_i(C_i)`.
    status : int
        0: every row certified optimal; 1: not certified (an ``AllocationWarning`` was
        issued; see ``message`` and ``kkt_residual``).
    message : str
    kkt_residual : () or (m,) Tensor
        The forward solve's relative KKT residual (not differentiable).
    allocation : AllocationResult
        The numpy result of the forward solve (labels, method, iterations).
    """

    capacity: Any
    norms: Any
    loss: Any
    threshold: Any
    level: Any
    status: int
    message: str
    kkt_residual: Any
    allocation: AllocationResult

    @property
    def success(self) -> bool:
        """Whether the forward solve was certified optimal (``status == 0``)."""
        return self.status == 0

    @property
    def labels(self) -> np.ndarray:
        """Per-feature labels of the forward solve (``allocation.labels``)."""
        return self.allocation.labels

    def __repr__(self) -> str:
        shape = tuple(self.capacity.shape)
        return (
            f"DifferentiableAllocation(shape={shape}, dtype={self.capacity.dtype}, "
            f"device={self.capacity.device}, status={self.status} ({self.message}))"
        )


def solve(
    importance: Any, d: int, kurtosis: Any = 3.0, *, method: str = "auto", **options: Any
) -> DifferentiableAllocation:
    r"""Optimal allocation of the quadratic model as a differentiable torch function.

    .. math::

        C^*(v, K) = \arg\min_C \sum_i \frac{2 (K_i-1) v_i^2 (1 - C_i)}{2 + (K_i-3) C_i}
        \quad\text{s.t.}\quad 0 \le C_i \le 1,\ \sum_i C_i \le d

    Forward: the exact solver on a float64 numpy copy (certified). Backward and forward
    mode: the closed-form products of the module docstring, :math:`O(n)` per row, on the
    device of ``importance``.

    Parameters
    ----------
    importance : (n,) or (m, n) Tensor or array_like
        Importances :math:`v_i \ge 0` (float32 or float64; a 2-D tensor is a batch of
        ``m`` problems, batch dimension first).
    d : int
        Budget (embedding dimension), ``d >= 0``.
    kurtosis : float, Tensor, array_like or InputLaw, default 3
        :math:`K_i \ge 1`, broadcasting to ``importance`` (a tensor that requires grad
        receives gradients, summed over broadcast dimensions).
    method : str, default "auto"
        The forward method (see :func:`capalloc.methods`); ``"auto"`` is ``waterfill``.
    **options
        Passed to the method.

    Returns
    -------
    DifferentiableAllocation
        Tensors in the dtype and on the device of ``importance``.

    Raises
    ------
    ValueError
        Importances negative or not finite, a dtype other than float32/float64, kurtosis
        below 1 or not broadcasting, a budget that is not a non-negative integer.

    Notes
    -----
    Derivatives hold the regimes fixed (one-sided on a boundary); for :math:`K \le 3`
    the capacities are piecewise constant (gradient 0) and only the level moves; see the
    module docstring for every convention, mixed curvature included. Tested against
    ``torch.autograd.gradcheck``, finite differences of the numpy solver and
    :func:`capalloc.allocation.sensitivity.sensitivity`.

    Examples
    --------
    >>> import pytest
    >>> torch = pytest.importorskip("torch")
    >>> from capalloc import autodiff
    >>> v = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    >>> K = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    >>> res = autodiff.solve(v, 1, K)
    >>> res.capacity.detach().numpy().round(4).tolist()
    [[0.7333, 0.2667, 0.0], [0.3333, 0.3333, 0.3333]]
    >>> res.loss.sum().backward()
    >>> round(float(K.grad), 4)
    2.8352
    """
    torch = _torch()
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {short(method)}")
    d = check_budget(d, "d")
    v = _importance(torch, importance)
    K = _kurtosis(torch, kurtosis, v)
    dtype = v.dtype
    box = _Solved()
    v64 = v.to(torch.float64)
    C, mu, norms, loss, _poly, _top = _function().apply(v64, K, d, method, options, box)
    res = box.allocation
    for w in box.captured:  # the solver's own warnings, other than the status (below)
        if not issubclass(w.category, AllocationWarning):
            warnings.warn(w.message, w.category, stacklevel=2)
    if res.status != 0:
        warnings.warn(
            f"capalloc.autodiff.solve: the forward solve is not certified optimal "
            f"({res.message}); its derivatives are those of the optimality conditions at the "
            f"returned point",
            AllocationWarning,
            stacklevel=2,
        )
    kkt = torch.as_tensor(np.array(res.kkt_residual, dtype=float), device=v.device)
    return DifferentiableAllocation(
        capacity=C.to(dtype),
        norms=norms.to(dtype),
        loss=loss.to(dtype),
        threshold=(2 * mu * mu).to(dtype),
        level=mu.to(dtype),
        status=int(res.status),
        message=res.message,
        kkt_residual=kkt,
        allocation=res,
    )


def _make_layer() -> type:
    torch = _torch()

    class AllocationLayer(torch.nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        r"""The differentiable allocation as an ``nn.Module``: ``layer(importance)``.

        .. math::

            (v, K) \mapsto C^*(v, K), \quad \text{budget } d

        Called on parameter tensors like a differentiable-optimisation layer (batch
        dimension first), it returns :func:`solve`'s :class:`DifferentiableAllocation`.

        Parameters
        ----------
        d : int
            Budget.
        kurtosis : float, Tensor or InputLaw, default 3
            Default kurtosis; an ``nn.Parameter`` is registered (and so trained).
        method : str, default "auto"
            Forward method; ``**options`` go to it.

        Examples
        --------
        >>> import pytest
        >>> torch = pytest.importorskip("torch")
        >>> from capalloc.autodiff import AllocationLayer
        >>> layer = AllocationLayer(d=1, kurtosis=6.0)
        >>> layer
        AllocationLayer(d=1, method='auto')
        >>> layer(torch.tensor([3.0, 2.0, 1.0])).capacity.numpy().round(4).tolist()
        [0.7333, 0.2667, 0.0]
        """

        def __init__(
            self, d: int, kurtosis: Any = 3.0, *, method: str = "auto", **options: Any
        ) -> None:
            super().__init__()
            self.d = check_budget(d, "d")
            self.kurtosis = kurtosis
            self.method = method
            self.options = options

        def forward(self, importance: Any, kurtosis: Any = None) -> DifferentiableAllocation:
            """:func:`solve` of ``importance`` (and ``kurtosis``, default the layer's)."""
            K = self.kurtosis if kurtosis is None else kurtosis
            return solve(importance, self.d, K, method=self.method, **self.options)

        def extra_repr(self) -> str:
            return f"d={self.d}, method={self.method!r}"

    AllocationLayer.__module__ = __name__
    return AllocationLayer


def __getattr__(name: str) -> Any:
    if name == "AllocationLayer":  # an nn.Module subclass: defined when torch is first needed
        cls = _make_layer()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- optimality


def kkt_residual(capacity: Any, level: Any, importance: Any, d: int, kurtosis: Any = 3.0) -> Any:
    r"""The optimality conditions as a root-finding residual :math:`F(x, \theta) = 0`.

    With :math:`x = (C, \mu)` and :math:`\theta = (v, K)`,

    .. math::

        F_i = C_i - \Pi_{[0,1]}\Big(C_i + \frac{h_i(C_i) - \mu}{h_i(C_i) + \mu}\Big),
        \qquad
        F_{n} = \mu - \max\Big(\mu + \bar v\,\frac{\sum_i C_i - d}{\max(d, 1)},\ 0\Big),

    :math:`h_i(C) = (K_i-1) v_i/(2 + (K_i-3) C)`, :math:`\bar v = \max_i v_i` (a scale: both
    rows are in units of :math:`v`); a relative gap of :math:`-1` is used where
    :math:`h_i + \mu = 0`. :math:`F = 0` exactly at the KKT points (each feature's level
    equals the water level when polysemantic, is above it when monosemantic and below it
    when ignored; the budget binds when :math:`\mu > 0`). At an optimum with every
    polysemantic feature strictly inside its band, :math:`F` is smooth in a
    neighbourhood and :math:`\partial F/\partial x` is invertible when some feature is
    polysemantic, so the implicit-function theorem
    :math:`\dot x = -(\partial_x F)^{-1}\partial_\theta F\,\dot\theta` gives
    :func:`solve`'s derivatives: the form an implicit-differentiation library
    (an ``optimality_fun``) takes. Unlike :func:`capalloc.kkt_residual` (a scalar
    certificate), this is a vector with a root.

    Parameters
    ----------
    capacity : (n,) or (m, n) Tensor
    level : () or (m,) Tensor
        :math:`\mu` (``DifferentiableAllocation.level``).
    importance : (n,) or (m, n) Tensor
    d : int
    kurtosis : float or Tensor, default 3

    Returns
    -------
    (n + 1,) or (m, n + 1) Tensor
        ``[F_1, ..., F_n, F_mu]``.

    Examples
    --------
    >>> import pytest
    >>> torch = pytest.importorskip("torch")
    >>> from capalloc import autodiff
    >>> v = torch.tensor([4.0, 2.0, 1.0, 0.2], dtype=torch.float64)
    >>> res = autodiff.solve(v, 2, 10.0)
    >>> float(autodiff.kkt_residual(res.capacity, res.level, v, 2, 10.0).abs().max()) < 1e-12
    True
    """
    torch = _torch()
    d = check_budget(d, "d")
    v = importance if isinstance(importance, torch.Tensor) else torch.as_tensor(importance)
    C = capacity if isinstance(capacity, torch.Tensor) else torch.as_tensor(capacity)
    mu = level if isinstance(level, torch.Tensor) else torch.as_tensor(level)
    K = kurtosis if isinstance(kurtosis, torch.Tensor) else torch.as_tensor(kurtosis)
    dtype = torch.promote_types(torch.promote_types(v.dtype, C.dtype), mu.dtype)
    v, C, mu = v.to(dtype), C.to(dtype), mu.to(dtype)
    K = K.to(device=v.device, dtype=dtype).expand(v.shape)
    if C.shape != v.shape:
        raise ValueError(
            f"capacity must have the shape of importance {tuple(v.shape)}, got {tuple(C.shape)}"
        )
    if mu.shape != v.shape[:-1]:
        raise ValueError(f"level must have shape {tuple(v.shape[:-1])}, got {tuple(mu.shape)}")
    h = _level(torch, C, v, K)
    m = mu.unsqueeze(-1)
    s = h + m
    positive = s > 0
    gap = torch.where(positive, (h - m) / torch.where(positive, s, torch.ones_like(s)), -1.0)
    F_C = C - torch.clamp(C + gap, 0.0, 1.0)
    scale = v.amax(-1) if v.shape[-1] else torch.ones_like(mu)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    F_mu = mu - torch.relu(mu + scale * (C.sum(-1) - d) / max(d, 1))
    return torch.cat([F_C, F_mu.unsqueeze(-1)], dim=-1)


# ----------------------------------------------------------------------------- fitting


@dataclass(frozen=True, repr=False, eq=False)
class AllocationFit:
    r"""A least-squares fit of the allocation to observed capacities (:func:`fit_allocation`).

    Attributes
    ----------
    importance, kurtosis : ndarray
        The fitted :math:`v` and :math:`K` (``kurtosis`` in the shape it was given).
    params : list of ndarray
        The fitted parameters (those of ``model`` when one was given).
    capacity : ndarray
        The optimal capacities of the fitted parameters.
    residual : float
        Root-mean-square of ``capacity - observed`` (weighted when ``weights`` were given).
    max_residual : float
        Largest ``|capacity - observed|``.
    nit : int
        Objective evaluations.
    status : int
        0: converged with certified forward solves; 1: a forward solve was not certified
        or the objective did not settle.
    message : str
    """

    importance: np.ndarray
    kurtosis: np.ndarray
    params: list
    capacity: np.ndarray
    residual: float
    max_residual: float
    nit: int
    status: int
    message: str

    def __repr__(self) -> str:
        return (
            f"AllocationFit(n={self.capacity.shape[-1]}, residual={self.residual:.3g}, "
            f"max_residual={self.max_residual:.3g}, nit={self.nit}, status={self.status} "
            f"({self.message}))"
        )


_FREE = ("importance", "kurtosis")


def fit_allocation(
    capacity: Any,
    d: int,
    importance: Any = None,
    kurtosis: Any = 4.0,
    *,
    free: Any = ("importance",),
    model: Any = None,
    params: Any = None,
    weights: Any = None,
    steps: int = 200,
    method: str = "auto",
) -> AllocationFit:
    r"""Fit importances and kurtosis to observed capacities by least squares.

    .. math::

        \min_\theta \sum_i w_i \big(C_i^*(v(\theta), K(\theta)) - C^{\text{obs}}_i\big)^2

    with :math:`C^*` from :func:`solve` (exact forward, closed-form gradient) and L-BFGS
    (strong-Wolfe line search). Without ``model``, the free quantities are parametrised
    as :math:`v = e^{\theta_v}` per feature and :math:`K = 3 + e^{\theta_K}` (the shape of
    ``kurtosis``: a scalar is shared by every feature), so importances stay positive and
    the problem convex.

    Parameters
    ----------
    capacity : (n,) or (m, n) array_like
        Observed capacities (a trained model's, e.g.
        :func:`capalloc.training.effective_capacity`).
    d : int
        Budget.
    importance : (n,) or (m, n) array_like, optional
        Starting (or, when not free, known) importances; default
        :func:`capalloc.allocation.inverse.fit_importance` of the observed capacities at
        ``kurtosis``, which starts every feature in its observed regime.
    kurtosis : float or array_like, default 4
        Starting (or known) kurtosis; must be > 3 where free.
    free : sequence of {"importance", "kurtosis"}, default ("importance",)
        What to fit.
    model : callable, optional
        ``model(*params) -> (importance, kurtosis)`` as torch tensors: a parametrisation of
        your own (a profile :math:`v_i = r^i`, a sparsity); ``free`` is then ignored.
    params : sequence of array_like, optional
        The starting parameters of ``model``.
    weights : array_like, optional
        Per-feature weights :math:`w_i \ge 0` (default 1).
    steps : int, default 200
        Largest number of objective evaluations.
    method : str, default "auto"
        Forward method.

    Returns
    -------
    AllocationFit
        With the fitted parameters and the residual.

    Notes
    -----
    Capacities are invariant under :math:`v \to s v`, so importances are determined up
    to scale at best. With importances free per feature, kurtosis is not identifiable from
    capacities alone (any :math:`K` is matched by :func:`~capalloc.allocation.inverse.fit_importance`);
    fit it with known importances or with a parametrised ``model``. Features outside the
    polysemantic set have gradient 0 (their regime is held): start in the right regime.

    Examples
    --------
    >>> import pytest
    >>> torch = pytest.importorskip("torch")
    >>> import capalloc
    >>> from capalloc.autodiff import fit_allocation
    >>> v = 0.8 ** torch.arange(8.0, dtype=torch.float64)
    >>> observed = capalloc.solve(capalloc.QuadraticProblem(v.numpy(), 3, 7.0)).capacity
    >>> fit = fit_allocation(observed, 3, v, kurtosis=5.0, free=["kurtosis"])
    >>> round(float(fit.kurtosis), 6), fit.residual < 1e-9
    (7.0, True)
    """
    torch = _torch()
    d = check_budget(d, "d")
    obs_np = check_capacity(capacity, "capacity")
    if obs_np.ndim not in (1, 2):
        raise ValueError(f"capacity must have 1 or 2 dimensions, got shape {obs_np.shape}")
    steps = check_positive(steps, "steps", integer=True)
    obs = torch.tensor(obs_np, dtype=torch.float64)
    wts = torch.ones_like(obs)
    if weights is not None:
        w_np = np.broadcast_to(check_importance(weights, "weights", ndim=None), obs_np.shape)
        wts = torch.as_tensor(np.array(w_np), dtype=torch.float64)
    if model is None:
        model, theta = _free_model(torch, obs_np, d, importance, kurtosis, free)
    else:
        if not callable(model):
            raise ValueError(f"model must be callable, got {short(model)}")
        if params is None:
            raise ValueError("params must be given with model")
        theta = [
            torch.tensor(as_float_array(p, f"params[{i}]"), dtype=torch.float64)
            for i, p in enumerate(params)
        ]
    for t in theta:
        t.requires_grad_(True)
    opt = torch.optim.LBFGS(
        theta,
        lr=1.0,
        max_iter=steps,
        max_eval=steps,
        tolerance_grad=1e-30,  # run until no progress: the residual is what is reported
        tolerance_change=1e-30,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    state = {"nit": 0, "uncertified": False}
    total = float(wts.sum()) or 1.0

    def objective() -> Any:
        opt.zero_grad()
        v, K = model(*theta)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AllocationWarning)
            res = solve(v, d, K, method=method)
        state["uncertified"] |= res.status != 0 or bool(caught)
        state["nit"] += 1
        value = (wts * (res.capacity - obs) ** 2).sum() / total
        value.backward()
        return value

    opt.step(objective)
    with torch.no_grad():
        v, K = model(*theta)
        final = solve(v, d, K, method=method)
    C = final.capacity.detach().cpu().numpy()
    diff = C - obs_np
    residual = float(np.sqrt(np.sum(wts.numpy() * diff**2) / total))
    status = int(state["uncertified"] or final.status != 0)
    message = "forward solve not certified" if status else "converged"
    return AllocationFit(
        importance=np.array(v.detach().cpu().numpy()),
        kurtosis=np.array(torch.as_tensor(K).detach().cpu().numpy()),
        params=[np.array(t.detach().cpu().numpy()) for t in theta],
        capacity=C,
        residual=residual,
        max_residual=float(np.max(np.abs(diff), initial=0.0)),
        nit=state["nit"],
        status=status,
        message=message,
    )


def _free_model(
    torch: Any, obs: np.ndarray, d: int, importance: Any, kurtosis: Any, free: Any
) -> tuple[Any, list]:
    """The default parametrisation of :func:`fit_allocation`: ``(model, theta0)``."""
    free = (free,) if isinstance(free, str) else tuple(free)
    bad = [f for f in free if f not in _FREE]
    if bad or not free:
        raise ValueError(f"free must name some of {list(_FREE)}, got {short(free)}")
    K0 = check_kurtosis(
        kurtosis.detach().cpu().numpy() if isinstance(kurtosis, torch.Tensor) else kurtosis,
        "kurtosis",
    )
    if "kurtosis" in free and K0.size and K0.min() <= 3:
        raise ValueError(
            f"kurtosis must be > 3 where it is fitted (capacities are piecewise constant "
            f"for K <= 3), got min {float(K0.min())!r}"
        )
    if importance is None:
        from capalloc.allocation.inverse import fit_importance

        with warnings.catch_warnings():  # a start: noisy capacities need not be reproduced
            warnings.simplefilter("ignore", AllocationWarning)
            v0 = fit_importance(obs, d, np.broadcast_to(K0, obs.shape)).importance
    else:
        v0 = (
            importance.detach().cpu().numpy()
            if isinstance(importance, torch.Tensor)
            else importance
        )
        v0 = check_importance(v0, "importance", ndim=(1, 2))
    if v0.shape != obs.shape:
        raise ValueError(f"importance must have the shape of capacity {obs.shape}, got {v0.shape}")
    # the log needs positive importances: zeros start far below the others (ignored)
    positive = v0[v0 > 0]
    floor = (positive.min() if positive.size else 1.0) * 1e-6
    theta_v = torch.tensor(np.log(np.maximum(v0, floor)), dtype=torch.float64)
    v_fixed = torch.tensor(v0, dtype=torch.float64)
    K_fixed = torch.tensor(K0, dtype=torch.float64)
    theta_K = torch.tensor(np.log(np.maximum(K0 - 3, 1e-300)), dtype=torch.float64)
    fit_v, fit_K = "importance" in free, "kurtosis" in free
    theta = [t for t, on in ((theta_v, fit_v), (theta_K, fit_K)) if on]

    def model(*p: Any) -> tuple[Any, Any]:
        it = iter(p)
        v = torch.exp(next(it)) if fit_v else v_fixed
        K = 3 + torch.exp(next(it)) if fit_K else K_fixed
        return v, K

    return model, theta
