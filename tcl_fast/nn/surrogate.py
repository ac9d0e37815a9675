"""Surrogate gradients named the SpikingJelly way, mapped onto the kernels' names.

The kernels know each surrogate by a name and ``alpha`` (plus ``surrogate_beta``
for ``piecewise_leaky_relu``), see ``tcl_fast.ops.lif_reference.SURROGATES``.
SpikingJelly describes one by an object, e.g. ``surrogate.ATan(alpha=2.0)``.
``resolve_surrogate`` turns either into ``(name, alpha, beta)`` and refuses,
naming the reason, anything the kernels cannot compute exactly.
SpikingJelly is never imported here: its classes are recognised by module and
class name.
"""
from __future__ import annotations

import math

_SJ_MODULE = "spikingjelly.activation_based.surrogate"

# SpikingJelly class -> (kernel name, its parameters -> (alpha, beta)).
# PiecewiseQuadratic(alpha) is the triangle of half-width 1/alpha; Rect(alpha)
# the rectangle of width 1/alpha; PiecewiseLeakyReLU(w, c) is (alpha=w, beta=c).
_FROM_SJ = {
    "Sigmoid": ("sigmoid", lambda s: (s.alpha, None)),
    "ATan": ("atan", lambda s: (s.alpha, None)),
    "PiecewiseQuadratic": ("triangle", lambda s: (1.0 / s.alpha, None)),
    "Rect": ("rectangle", lambda s: (1.0 / s.alpha, None)),
    "SuperSpike": ("super_spike", lambda s: (s.alpha, None)),
    "Erf": ("erf", lambda s: (s.alpha, None)),
    "SoftSign": ("soft_sign", lambda s: (s.alpha, None)),
    "PiecewiseLeakyReLU": ("piecewise_leaky_relu", lambda s: (s.w, s.c)),
    "PiecewiseExp": ("piecewise_exp", lambda s: (s.alpha, None)),
}
# kernel name -> (SpikingJelly class, constructor keywords from (alpha, beta)).
_TO_SJ = {
    "sigmoid": ("Sigmoid", lambda a, b: {"alpha": a}),
    "atan": ("ATan", lambda a, b: {"alpha": a}),
    "triangle": ("PiecewiseQuadratic", lambda a, b: {"alpha": 1.0 / a}),
    "rectangle": ("Rect", lambda a, b: {"alpha": 1.0 / a}),
    "super_spike": ("SuperSpike", lambda a, b: {"alpha": a}),
    "erf": ("Erf", lambda a, b: {"alpha": a}),
    "soft_sign": ("SoftSign", lambda a, b: {"alpha": a}),
    "piecewise_leaky_relu": ("PiecewiseLeakyReLU", lambda a, b: {"w": a, "c": b}),
    "piecewise_exp": ("PiecewiseExp", lambda a, b: {"alpha": a}),
}
SPIKINGJELLY_SURROGATES = tuple(_FROM_SJ)


class UnsupportedSurrogateError(ValueError):
    """A surrogate object the fused kernels cannot compute exactly."""


def _number(value, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UnsupportedSurrogateError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise UnsupportedSurrogateError(f"{what} must be finite, got {value!r}")
    return out


def is_spikingjelly_surrogate(obj) -> bool:
    return any(c.__module__ == _SJ_MODULE for c in type(obj).__mro__)


def from_spikingjelly(obj) -> tuple[str, float, float | None]:
    """``(kernel name, alpha, beta)`` of a SpikingJelly surrogate object, or raise."""
    cls = type(obj)
    if cls.__module__ != _SJ_MODULE or cls.__name__ not in _FROM_SJ:
        if cls.__module__ != _SJ_MODULE and is_spikingjelly_surrogate(obj):  # may change the gradient
            raise UnsupportedSurrogateError(
                f"surrogate {cls.__module__}.{cls.__qualname__} subclasses a SpikingJelly surrogate; "
                f"only the classes themselves map exactly onto a kernel: {', '.join(_FROM_SJ)}"
            )
        raise UnsupportedSurrogateError(
            f"surrogate {cls.__module__}.{cls.__qualname__} has no fused kernel; "
            f"supported SpikingJelly surrogates: {', '.join(_FROM_SJ)}"
        )
    if not getattr(obj, "spiking", True):
        raise UnsupportedSurrogateError(
            f"surrogate {cls.__name__}(spiking=False) outputs its smooth primitive instead of "
            "spikes; the kernels always fire spikes"
        )
    name, params = _FROM_SJ[cls.__name__]
    alpha, beta = params(obj)
    alpha = _number(alpha, f"{cls.__name__}'s parameter")
    if not alpha > 0:
        raise UnsupportedSurrogateError(f"{cls.__name__}'s parameter must be positive, got {alpha}")
    beta = None if beta is None else _number(beta, f"{cls.__name__}'s c")
    return name, alpha, beta


def to_spikingjelly(name: str, alpha: float, beta: float | None):
    """The SpikingJelly surrogate object computing the kernel surrogate ``name``."""
    if name not in _TO_SJ:
        raise UnsupportedSurrogateError(
            f"surrogate {name!r} has no SpikingJelly counterpart "
            f"(SpikingJelly has: {', '.join(_TO_SJ)})"
        )
    from spikingjelly.activation_based import surrogate as sj_surrogate

    cls_name, kwargs = _TO_SJ[name]
    if beta is None and name == "piecewise_leaky_relu":
        beta = _default_beta()
    return getattr(sj_surrogate, cls_name)(**kwargs(alpha, beta))


def _default_beta() -> float:
    from tcl_fast.ops import lif_reference

    return getattr(lif_reference, "DEFAULT_BETA", {}).get("piecewise_leaky_relu", 0.01)


def resolve_surrogate(surrogate_function=None, surrogate: str | None = None,
                      alpha: float | None = None, surrogate_beta: float | None = None
                      ) -> tuple[str, float | None, float | None]:
    """One surrogate from SpikingJelly's object or tcl_fast's name (not both).

    Returns ``(name, alpha, beta)``; ``alpha``/``beta`` are None where the
    kernel's default applies. Nothing given is SpikingJelly's default,
    ``Sigmoid(alpha=4)``, which is also tcl_fast's.
    """
    if surrogate_function is not None:
        if surrogate is not None or alpha is not None or surrogate_beta is not None:
            raise ValueError("give surrogate_function (a SpikingJelly object) or "
                             "surrogate/alpha/surrogate_beta (tcl_fast's names), not both")
        if isinstance(surrogate_function, str):
            return surrogate_function, None, None
        return from_spikingjelly(surrogate_function)
    return ("sigmoid" if surrogate is None else surrogate), alpha, surrogate_beta
