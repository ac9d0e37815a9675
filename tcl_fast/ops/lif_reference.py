"""Pure-PyTorch multi-step LIF: the oracle for every fused backend.

Written for clarity, not speed: a Python loop over time and plain autograd.
The only custom piece is the spike function, whose backward is the surrogate
gradient. It implements exactly the semantics documented in
``csrc/lif_math.h`` (SpikingJelly's multi-step LIF, time-first ``[T, ...]``).
"""
from __future__ import annotations

import math

import torch

# Kernel ids are the positions in this tuple (csrc/lif_math.h enum Surrogate).
SURROGATES = ("sigmoid", "atan", "triangle", "rectangle", "super_spike", "fast_sigmoid", "erf",
              "soft_sign", "piecewise_leaky_relu", "piecewise_exp")
# alpha's default per surrogate: SpikingJelly's class defaults (Sigmoid 4, ATan 2, SuperSpike 1,
# Erf 2, SoftSign 2, PiecewiseLeakyReLU w=1, PiecewiseExp 1), TET's triangle gamma 1, a
# rectangle of width 1, and snnTorch's fast_sigmoid slope 25.
DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0, "triangle": 1.0, "rectangle": 1.0, "super_spike": 1.0,
                 "fast_sigmoid": 25.0, "erf": 2.0, "soft_sign": 2.0, "piecewise_leaky_relu": 1.0,
                 "piecewise_exp": 1.0}
# The second parameter, used by piecewise_leaky_relu only: the slope c outside |u| < w.
DEFAULT_BETA = {"piecewise_leaky_relu": 0.01}


def surrogate_grad(u: torch.Tensor, surrogate: str, alpha: float, beta: float = 0.0) -> torch.Tensor:
    """ds/du of the named surrogate at u = h - v_threshold."""
    if surrogate == "sigmoid":
        sig = torch.sigmoid(alpha * u)
        return alpha * sig * (1 - sig)
    if surrogate == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * u) ** 2)
    if surrogate == "triangle":  # alpha is TET's gamma
        return (alpha - u.abs()).clamp(min=0) / (alpha * alpha)
    if surrogate == "rectangle":  # alpha is the window width
        return (u.abs() < alpha / 2).to(u.dtype) / alpha
    if surrogate == "super_spike":  # SpikingJelly's SuperSpike: alpha scales the peak
        return alpha / (1 + u.abs()) ** 2
    if surrogate == "fast_sigmoid":  # snnTorch's fast_sigmoid: alpha is the slope
        return 1 / (alpha * u.abs() + 1) ** 2
    if surrogate == "erf":
        return alpha / math.sqrt(math.pi) * torch.exp(-(alpha * u) ** 2)
    if surrogate == "soft_sign":
        return 1 / (2 * alpha * (1 / alpha + u.abs()) ** 2)
    if surrogate == "piecewise_leaky_relu":  # alpha = w, beta = c
        return torch.where(u.abs() < alpha, torch.full_like(u, 1 / (2 * alpha)), torch.full_like(u, beta))
    if surrogate == "piecewise_exp":
        return alpha / 2 * torch.exp(-alpha * u.abs())
    raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {SURROGATES}")


def surrogate_primitive(u: torch.Tensor, surrogate: str, alpha: float, beta: float = 0.0) -> torch.Tensor:
    """G(u) with G' = surrogate_grad: a smooth stand-in for the step (test mode)."""
    if surrogate == "sigmoid":
        return torch.sigmoid(alpha * u)
    if surrogate == "atan":
        return torch.atan(math.pi / 2 * alpha * u) / math.pi + 0.5
    if surrogate == "triangle":
        c = u.clamp(-alpha, alpha)
        g2 = 2 * alpha * alpha
        return torch.where(c < 0, (alpha + c) ** 2 / g2, 1 - (alpha - c) ** 2 / g2)
    if surrogate == "rectangle":
        return (u / alpha + 0.5).clamp(0, 1)
    if surrogate == "super_spike":
        return alpha * u / (1 + u.abs()) + 0.5
    if surrogate == "fast_sigmoid":
        return u / (1 + alpha * u.abs()) + 0.5
    if surrogate == "erf":
        return torch.erf(alpha * u) * 0.5 + 0.5
    if surrogate == "soft_sign":
        return (alpha * u / (1 + alpha * u.abs())) * 0.5 + 0.5
    if surrogate == "piecewise_leaky_relu":
        inside = u / (2 * alpha) + 0.5
        return torch.where(u.abs() < alpha, inside,
                           torch.where(u < 0, beta * (u + alpha), beta * (u - alpha) + 1))
    if surrogate == "piecewise_exp":
        return torch.where(u < 0, 0.5 * torch.exp(alpha * u), 1 - 0.5 * torch.exp(-alpha * u))
    raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {SURROGATES}")


class _HeavisideSurrogate(torch.autograd.Function):
    """s = (u >= 0); backward multiplies by the surrogate gradient."""

    @staticmethod
    def forward(ctx, u, surrogate, alpha, beta):
        ctx.save_for_backward(u)
        ctx.surrogate, ctx.alpha, ctx.beta = surrogate, alpha, beta
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        (u,) = ctx.saved_tensors
        return grad_s * surrogate_grad(u, ctx.surrogate, ctx.alpha, ctx.beta), None, None, None


def lif_multistep_reference(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    decay: float | torch.Tensor = 0.5,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    smooth: bool = False,
    beta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run LIF over ``x: [T, ...]``; return ``(spikes [T, ...], v_last [...])``.

    ``decay`` is k = 1/tau (a float, or a 0-dim tensor that may require grad).
    ``v_reset=None`` is a soft reset (subtract the threshold). ``smooth`` fires
    G(u) instead of the step so that gradcheck can verify the backward.
    ``beta`` is the surrogate's second parameter (piecewise_leaky_relu's c).
    """
    if alpha is None:
        alpha = DEFAULT_ALPHA[surrogate]
    if beta is None:
        beta = DEFAULT_BETA.get(surrogate, 0.0)
    hard_reset = v_reset is not None
    v_r = v_reset if hard_reset else 0.0
    v = torch.full_like(x[0], v_r) if v0 is None else v0
    spikes = []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - v_r)) * decay
        else:
            h = v - (v - v_r) * decay + x[t]
        u = h - v_threshold
        if smooth:
            s = surrogate_primitive(u, surrogate, alpha, beta)
        else:
            s = _HeavisideSurrogate.apply(u, surrogate, alpha, beta)
        s_reset = s.detach() if detach_reset else s
        if hard_reset:
            v = s_reset * v_r + (1 - s_reset) * h
        else:
            v = h - s_reset * v_threshold
        spikes.append(s)
    return torch.stack(spikes), v
