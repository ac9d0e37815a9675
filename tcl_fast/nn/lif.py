"""``LIFMultiStep``: a drop-in for SpikingJelly's ``LIFNode(step_mode="m")``."""
from __future__ import annotations

import math

import torch
from torch import nn

from tcl_fast.nn._spec import SpecAttributes
from tcl_fast.ops.lif import BACKENDS, NeuronSpec, lif_multistep, validate_decay


def check_channels(channels) -> int | None:
    """``channels`` of a per-channel learnt tau: None or a positive int."""
    if channels is None:
        return None
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int (one learnt tau per channel) or None, got {channels!r}")
    return channels


def learnt_decay(w: torch.Tensor, x: torch.Tensor, owner: str) -> torch.Tensor:
    """``sigmoid(w)`` for input ``x: [T, B, C, ...]``: 0-dim for one ``w``, and for
    ``w: [C]`` shaped ``[C, 1, ...]`` so it broadcasts over the neuron dims
    ``[B, C, ...]`` (the kernels then take one decay per neuron)."""
    if w.dim() == 0:
        return w.sigmoid()
    if x.dim() < 3 or x.shape[2] != w.shape[0]:
        raise ValueError(f"{owner} has one tau per channel (channels={w.shape[0]}) and takes x: "
                         f"[T, B, {w.shape[0]}, ...], got {tuple(x.shape)}")
    return w.sigmoid().view(-1, *([1] * (x.dim() - 3)))


class LIFMultiStep(SpecAttributes, nn.Module):
    """Leaky integrate-and-fire neurons over time-first input ``[T, B, ...]``.

    Stateless between calls (each forward starts from ``v_reset``), like a
    SpikingJelly node that is ``reset()`` every batch; pass ``v0`` and
    ``return_v=True`` to carry the membrane across chunks of time.
    ``learnable_tau`` is PLIF: ``1/tau = sigmoid(w)``, one ``w`` per layer, or
    with ``channels=C`` one per channel (``w: [C]``, x's dim 2 in
    ``[T, B, C, ...]``; the kernels take the decay per neuron).
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 decay_input: bool = True, detach_reset: bool = False, surrogate: str = "sigmoid",
                 alpha: float | None = None, learnable_tau: bool = False, backend: str = "auto",
                 channels: int | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        spec = NeuronSpec(v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)  # validates
        validate_decay(tau, decay_input=decay_input)  # fail at construction, not at the first forward
        if learnable_tau and tau <= 1:
            raise ValueError(f"learnable_tau needs tau > 1 (w = -log(tau - 1)), got {tau}")
        if learnable_tau and math.isinf(tau):
            raise ValueError("learnable_tau needs a finite tau (sigmoid(w) = 1/tau can't reach 0)")
        channels = check_channels(channels)
        if channels is not None and not learnable_tau:
            raise ValueError("channels= gives one learnt tau per channel: it needs learnable_tau=True")
        self.tau = float(tau)
        self.spec = spec
        self.learnable_tau = bool(learnable_tau)
        self.backend = backend
        if learnable_tau:
            self.w = nn.Parameter(torch.full(() if channels is None else (channels,), -math.log(tau - 1.0)))

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

    def decay(self, x: torch.Tensor | None = None) -> float | torch.Tensor:
        """k = 1/tau (a tensor carrying gradient when tau is learnable). Per
        channel it is ``[C]``, or, given the input ``x``, shaped to broadcast
        over its neuron dims."""
        if not self.learnable_tau:
            return 1.0 / self.tau
        return torch.sigmoid(self.w) if x is None else learnt_decay(self.w, x, type(self).__name__)

    def forward(self, x: torch.Tensor, v0: torch.Tensor | None = None, return_v: bool = False):
        return lif_multistep(x, v0, decay=self.decay(x), spec=self.spec, return_v=return_v,
                             backend=self.backend)

    def extra_repr(self) -> str:
        tau = f"tau={self.tau}" + (" (learnable)" if self.learnable_tau else "")
        if self.learnable_tau and self.w.dim() > 0:
            tau += f" per channel, channels={self.w.numel()}"
        reset = "soft" if self.v_reset is None else f"hard, v_reset={self.v_reset}"
        return (f"{tau}, v_threshold={self.v_threshold}, reset={reset}, decay_input={self.decay_input}, "
                f"detach_reset={self.detach_reset}, surrogate={self.surrogate}(alpha={self.alpha}), "
                f"backend={self.backend}")
