"""``LIFMultiStep``: a drop-in for SpikingJelly's ``LIFNode(step_mode="m")``."""
from __future__ import annotations

import math

import torch
from torch import nn

from tcl_fast.nn._spec import SpecAttributes
from tcl_fast.ops.lif import BACKENDS, NeuronSpec, lif_multistep, validate_decay


class LIFMultiStep(SpecAttributes, nn.Module):
    """Leaky integrate-and-fire neurons over time-first input ``[T, B, ...]``.

    Stateless between calls (each forward starts from ``v_reset``), like a
    SpikingJelly node that is ``reset()`` every batch; pass ``v0`` and
    ``return_v=True`` to carry the membrane across chunks of time.
    ``learnable_tau`` is PLIF: ``1/tau = sigmoid(w)``, one ``w`` per layer.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: float | None = None, learnable_tau: bool = False, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        spec = NeuronSpec(v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)  # validates
        validate_decay(tau, decay_input=decay_input)  # fail at construction, not at the first forward
        if learnable_tau and tau <= 1:
            raise ValueError(f"learnable_tau needs tau > 1 (w = -log(tau - 1)), got {tau}")
        if learnable_tau and math.isinf(tau):
            raise ValueError("learnable_tau needs a finite tau (sigmoid(w) = 1/tau can't reach 0)")
        self.tau = float(tau)
        self.spec = spec
        self.learnable_tau = bool(learnable_tau)
        self.backend = backend
        if learnable_tau:
            self.w = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))

    # SpikingJelly's module protocol (found by its functional.set_step_mode,
    # reset_net and detach_net through hasattr): multi-step only, no state.
    def supported_step_mode(self) -> tuple[str, ...]:
        return ("m",)

    @property
    def step_mode(self) -> str:
        return "m"

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value != "m":
            raise ValueError(
                f"LIFMultiStep runs multi-step only (x: [T, B, ...]), got step_mode={value!r}; "
                "use tcl_fast.nn.LIFNode, which has SpikingJelly's single-step mode 's'"
            )

    def reset(self) -> None:
        """Nothing to reset: each call starts at rest (pass ``v0`` to carry state)."""

    def detach(self) -> None:
        """Nothing to detach: the module keeps no state between calls."""

    def decay(self) -> float | torch.Tensor:
        """k = 1/tau (a tensor carrying gradient when tau is learnable)."""
        return torch.sigmoid(self.w) if self.learnable_tau else 1.0 / self.tau

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None = None, return_v: bool = False):
        return lif_multistep(x, v0, decay=self.decay(), spec=self.spec, return_v=return_v,
                             backend=self.backend)

    def extra_repr(self) -> str:
        tau = f"tau={self.tau}" + (" (learnable)" if self.learnable_tau else "")
        reset = "soft" if self.v_reset is None else f"hard, v_reset={self.v_reset}"
        return (f"{tau}, v_threshold={self.v_threshold}, reset={reset}, decay_input={self.decay_input}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate}(alpha={self.alpha}), "
                f"backend={self.backend}")
