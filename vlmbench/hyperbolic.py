"""The Poincaré ball of curvature −r (r > 0): the few operations hyperbolic fine-tuning needs.

The ball is ``D_r = {x ∈ R^D : ‖x‖ < 1/√r}``. Six functions, on the last dimension of their tensors
(leading dimensions broadcast):

* :func:`expmap0`: the exponential map at the origin, ``tanh(√r‖v‖) · v / (√r‖v‖)``: a tangent vector
  (a Euclidean embedding) to the ball; it keeps the direction, so cosine similarities are unchanged;
* :func:`mobius_add`: Möbius addition ``x ⊕_r y``;
* :func:`distance`: ``d_r(x, y) = (2/√r) · artanh(√r ‖(−x) ⊕_r y‖)``, and :func:`pairwise_distance`, the
  ``(N, M)`` matrix of it; both evaluate it in the equivalent form ``(1/√r) · arcosh(1 + z)``,
  ``z = 2r‖x − y‖² / ((1 − r‖x‖²)(1 − r‖y‖²))``, with ``z`` clamped (the "clamped artanh"): finite value
  and gradient everywhere in the ball, and no cancellation near its boundary;
* :func:`einstein_midpoint`: the weighted Einstein midpoint (Ungar's gyromidpoint), computed in the
  Klein model: ``k_i = 2x_i / (1 + r‖x_i‖²)``, Lorentz factors ``γ_i = (1 + r‖x_i‖²) / (1 − r‖x_i‖²)``,
  ``m_K = Σ w_i γ_i k_i / Σ w_i γ_i``, mapped back by ``m = m_K / (1 + √(1 − r‖m_K‖²))``. With
  ``γ_i k_i = λ_i x_i`` (``λ_i = 2 / (1 − r‖x_i‖²)``, the conformal factor) and ``γ_i = λ_i − 1``, this is
  also the Möbius gyromidpoint ``½ ⊗ (Σ w_i λ_i x_i / Σ w_i (λ_i − 1))``; for two points with equal
  weights it is their geodesic midpoint;
* :func:`project`: rescale points so that ``‖x‖ ≤ (1 − eps)/√r`` (every function returning points
  applies it, so that ``1 − r‖x‖²`` stays away from 0).

Precision: every function computes in float32, also when called under ``torch.autocast`` (float16 or
bfloat16 inputs are cast up and autocast is switched off inside): near the boundary ``1 − r‖x‖²`` is of
order ``eps`` and half precision would round it to 0. float64 inputs stay float64.

Written here (about a hundred lines) rather than taken from ``geoopt``: that would add a dependency
(and scipy with it) for six functions, and its float32 projection margin (``eps = 4e-3``) and dtype
handling would be outside vlmbench's control; these are checked against closed forms in
``tests/test_hierarchical.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

MIN_NORM = 1e-15
BOUNDARY_EPS = 1e-3

F = TypeVar("F", bound=Callable[..., torch.Tensor])


def _fp32(fn: F) -> F:
    """Run ``fn`` with autocast off and half-precision tensor arguments cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        def up(value):  # type: ignore[no-untyped-def]
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
                return value.float()
            return value

        args = tuple(up(a) for a in args)
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _norm(x: torch.Tensor) -> torch.Tensor:
    """``‖x‖`` over the last dimension, kept; its gradient is finite (0) at ``x = 0``."""
    return x.pow(2).sum(dim=-1, keepdim=True).clamp_min(MIN_NORM).sqrt()


@_fp32
def project(x: torch.Tensor, r: float, eps: float = BOUNDARY_EPS) -> torch.Tensor:
    """``x`` rescaled where needed so that ``‖x‖ ≤ (1 − eps)/√r``; points inside are unchanged."""
    limit = (1.0 - eps) / r**0.5
    return x * (limit / _norm(x)).clamp(max=1.0)


@_fp32
def expmap0(v: torch.Tensor, r: float) -> torch.Tensor:
    """The exponential map at 0: tangent vectors ``v (…, D)`` to points of the ball (same direction,
    norm ``tanh(√r‖v‖)/√r``), projected."""
    sqrt_r = r**0.5
    n = _norm(v)
    return project(torch.tanh(sqrt_r * n) * v / (sqrt_r * n), r)


@_fp32
def mobius_add(x: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """Möbius addition ``x ⊕_r y`` of points ``(…, D)`` (not commutative), projected."""
    xy = (x * y).sum(dim=-1, keepdim=True)
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    numerator = (1 + 2 * r * xy + r * y2) * x + (1 - r * x2) * y
    return project(numerator / (1 + 2 * r * xy + r**2 * x2 * y2).clamp_min(MIN_NORM), r)


def _distance(diff2: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, r: float) -> torch.Tensor:
    """``d_r`` from ``‖x − y‖²``, ``‖x‖²``, ``‖y‖²`` (broadcast), as ``(1/√r) · arcosh(1 + z)`` with
    ``z = 2r‖x − y‖² / ((1 − r‖x‖²)(1 − r‖y‖²))``: equal to ``(2/√r) · artanh(√r‖(−x) ⊕_r y‖)`` but free of
    the cancellation in ``1 − √r‖(−x) ⊕_r y‖`` near the boundary. ``z`` is clamped to ``≥ 1e-15``:
    value and gradient stay finite (the gradient is 0 at ``x = y``)."""
    z = (2 * r * diff2 / ((1 - r * x2) * (1 - r * y2)).clamp_min(MIN_NORM)).clamp_min(MIN_NORM)
    return torch.log1p(z + (z * (z + 2)).sqrt()) / r**0.5


@_fp32
def distance(x: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """Geodesic distance ``d_r(x, y) = (2/√r) · artanh(√r ‖(−x) ⊕_r y‖)`` of points ``(…, D)``, shape ``(…)``
    (evaluated in the equivalent arcosh form, see :func:`_distance`)."""
    return _distance((x - y).pow(2).sum(dim=-1), x.pow(2).sum(dim=-1), y.pow(2).sum(dim=-1), r)


@_fp32
def pairwise_distance(x: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """``(N, M)`` matrix of :func:`distance` between the rows of ``x (N, D)`` and ``y (M, D)``.

    ``‖x − y‖²`` comes from ``‖x‖² + ‖y‖² − 2⟨x,y⟩`` (one matrix product, no ``(N, M, D)`` intermediate),
    formed in float64 so that its cancellation for nearby points costs no accuracy; the result has the
    inputs' dtype."""
    x64, y64 = x.double(), y.double()
    x2, y2 = x64.pow(2).sum(dim=-1)[:, None], y64.pow(2).sum(dim=-1)[None, :]
    diff2 = (x2 + y2 - 2 * x64 @ y64.T).clamp_min(0.0)
    return _distance(diff2, x2, y2, r).to(x.dtype)


@_fp32
def einstein_midpoint(points: torch.Tensor, weights: torch.Tensor | None, r: float) -> torch.Tensor:
    """Weighted Einstein midpoints of ``points (N, D)`` (via the Klein model, see the module docstring).

    Args:
        points: points of the ball, ``(N, D)``.
        weights: non-negative weights ``(N,)`` for one midpoint ``(D,)``, or ``(M, N)`` for ``M``
            midpoints ``(M, D)`` at once (row ``m`` averages the points it weights); ``None``: equal.
            Every row needs a positive weight.
        r: the curvature magnitude.
    """
    if weights is None:
        weights = torch.ones(points.shape[0], dtype=points.dtype, device=points.device)
    x2 = r * points.pow(2).sum(dim=-1, keepdim=True)
    boost = 2 * points / (1 - x2)  # γ_i k_i = λ_i x_i
    gamma = (1 + x2) / (1 - x2)  # γ_i = λ_i − 1
    klein = (weights @ boost) / (weights @ gamma).clamp_min(MIN_NORM)
    k2 = (r * klein.pow(2).sum(dim=-1, keepdim=True)).clamp(max=1.0)
    return project(klein / (1 + (1 - k2).sqrt()), r)
