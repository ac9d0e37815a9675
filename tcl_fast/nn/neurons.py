"""SpikingJelly-compatible neurons on tcl_fast's fused kernels.

``LIFNode``, ``ParametricLIFNode`` and ``IFNode`` take SpikingJelly 2.x's
constructor arguments (same names, order and defaults, surrogate objects
included), so ``spiking_resnet18(spiking_neuron=tcl_fast.nn.LIFNode, ...)``
builds, and they follow SpikingJelly's module protocol without importing it:

* ``step_mode`` ``"s"`` (SpikingJelly's default: ``[B, ...]`` one step per call,
  ``v`` kept between calls) or ``"m"`` (``[T, B, ...]``, the fused kernel over
  all T steps); ``functional.set_step_mode`` sets it, ``reset()`` /
  ``functional.reset_net`` return to rest, ``detach()`` / ``functional.detach_net``
  cut the graph held by ``v``.
* ``v`` is the membrane after the last step (a float at rest, as in
  SpikingJelly), ``v_seq`` the membrane of every step with ``store_v_seq=True``;
  ``monitor.AttributeMonitor("v", False, net, tcl_fast.nn.LIFNode)`` records it.
* Multi-step calls are stateless unless ``stateful=True``: each starts at rest
  (as if ``reset()`` ran before it). ``stateful=True`` is SpikingJelly's
  behaviour: ``v`` carries into the next call until ``reset()`` (streaming,
  truncated BPTT with ``detach()``). ``convert_spikingjelly`` builds stateful
  nodes, so a converted net behaves exactly as the original.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from tcl_fast.nn.surrogate import resolve_surrogate, to_spikingjelly
from tcl_fast.nn._spec import SpecAttributes
from tcl_fast.nn.lif import check_channels, learnt_decay
from tcl_fast.ops.lif import BACKENDS, NeuronSpec, lif_multistep

STEP_MODES = ("s", "m")
# SpikingJelly's backend names with a tcl_fast equivalent: its pure-PyTorch
# "torch" is our reference, its fused GPU "cupy" our CUDA kernels.
_SJ_BACKENDS = {"cupy": "cuda"}


def _resolve_backend(backend: str) -> str:
    backend = _SJ_BACKENDS.get(backend, backend)
    if backend not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS} (SpikingJelly's 'cupy' maps to 'cuda'), got {backend!r}"
        )
    return backend


class BaseNode(SpecAttributes, nn.Module):
    """Shared state, step modes and kernel call of the SpikingJelly-style neurons.

    Subclasses provide ``_decay(x_seq)`` (k = 1/tau, a float or a tensor). The firing
    parameters live in ``self.spec`` (``NeuronSpec``; SpecAttributes).
    """

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate_function=None, detach_reset: bool = False, step_mode: str = "s",
                 store_v_seq: bool = False, backend: str = "auto", *, stateful: bool = False,
                 surrogate: str | None = None, alpha: float | None = None,
                 surrogate_beta: float | None = None, decay_input: bool = True):
        super().__init__()
        name, alpha, beta = resolve_surrogate(surrogate_function, surrogate, alpha, surrogate_beta)
        self.spec = NeuronSpec(v_threshold, v_reset, decay_input, detach_reset, name, alpha, beta)
        self.backend = _resolve_backend(backend)
        self.stateful = bool(stateful)
        self.step_mode = step_mode
        self.store_v_seq = bool(store_v_seq)
        self.reset()

    # ------------------------------------------------------------------ protocol
    def supported_step_mode(self) -> tuple[str, ...]:
        return STEP_MODES

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in STEP_MODES:
            raise ValueError(f"step_mode can only be {STEP_MODES}, but got {value!r}")
        self._step_mode = value
        self._step_ndim = None  # the dims a single step had, to catch [T, B, ...] fed in "s" mode

    @property
    def surrogate_function(self):
        """The surrogate as a SpikingJelly object (needs SpikingJelly)."""
        return to_spikingjelly(self.surrogate, self.alpha, self.surrogate_beta)

    @surrogate_function.setter
    def surrogate_function(self, value) -> None:
        name, alpha, beta = resolve_surrogate(value)
        self.spec = dataclasses.replace(self.spec, surrogate=name, alpha=alpha, beta=beta)

    def __setattr__(self, name: str, value) -> None:
        if name == "surrogate_function":  # nn.Module would store a Module value as a child instead
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def reset(self) -> None:
        """Back to rest: ``v`` is the float ``v_reset`` (0 for the soft reset), no ``v_seq``."""
        self.v = 0.0 if self.v_reset is None else self.v_reset
        self.v_seq = None

    def detach(self) -> None:
        """Cut the autograd graph that ``v`` (and ``v_seq``) hold (truncated BPTT)."""
        if isinstance(self.v, torch.Tensor):
            self.v = self.v.detach()
        if isinstance(self.v_seq, torch.Tensor):
            self.v_seq = self.v_seq.detach()

    # ------------------------------------------------------------------ forward
    def _decay(self, x_seq: torch.Tensor) -> float | torch.Tensor:
        """k = 1/tau for the sequence ``x_seq: [T, B, ...]`` (a step: T = 1)."""
        raise NotImplementedError

    def _kernel(self, x_seq: torch.Tensor, v0: torch.Tensor | None):
        return lif_multistep(x_seq, v0, decay=self._decay(x_seq), spec=self.spec, return_v=True,
                             backend=self.backend)

    def _v0(self, neuron_shape: torch.Size, what: str) -> torch.Tensor | None:
        v = self.v
        if not isinstance(v, torch.Tensor):
            return None
        if v.shape != neuron_shape:
            raise ValueError(
                f"{type(self).__name__}: the membrane v kept from the previous call has shape "
                f"{tuple(v.shape)}, but this {what} has shape {tuple(neuron_shape)}; call reset() "
                "(SpikingJelly: functional.reset_net(net)) between sequences"
            )
        return v

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"{type(self).__name__} in single-step mode takes x: [B, ...], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if self._step_ndim is not None and x.dim() != self._step_ndim:
            raise ValueError(
                f"{type(self).__name__} is in single-step mode (step_mode='s') and took "
                f"{self._step_ndim}-dim steps before, but got a {x.dim()}-dim input {tuple(x.shape)}. "
                "A [T, B, ...] sequence needs step_mode='m' (functional.set_step_mode(net, 'm'))"
            )
        v0 = self._v0(x.shape, "step")
        self._step_ndim = x.dim()
        spikes, v = self._kernel(x.unsqueeze(0), v0)
        self.v = v
        if self.store_v_seq:
            self.v_seq = v.unsqueeze(0) if self.v_seq is None else torch.cat((self.v_seq, v.unsqueeze(0)))
        return spikes[0]

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 2:
            raise ValueError(f"{type(self).__name__} in multi-step mode takes x_seq: [T, B, ...], got "
                             f"{getattr(x_seq, 'shape', type(x_seq).__name__)}")
        v0 = self._v0(x_seq.shape[1:], "sequence's step") if self.stateful else None
        if not self.store_v_seq:
            spikes, v = self._kernel(x_seq, v0)
        else:  # one T=1 call per step, feeding v back: the same arithmetic as the fused call
            spike_steps, v_steps, v = [], [], v0
            for x in x_seq:
                s, v = self._kernel(x.unsqueeze(0), v)
                spike_steps.append(s)
                v_steps.append(v)
            spikes = torch.cat(spike_steps)
            self.v_seq = torch.stack(v_steps)
        self.v = v
        return spikes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._step_mode == "m":
            return self.multi_step_forward(x)
        return self.single_step_forward(x)

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset}"
        beta = "" if self.surrogate_beta is None else f", beta={self.surrogate_beta}"
        return (f"v_threshold={self.v_threshold}, {reset}, detach_reset={self.detach_reset}, "
                f"step_mode={self.step_mode}, surrogate={self.surrogate}(alpha={self.alpha}{beta}), "
                f"backend={self.backend}" + (", stateful" if self.stateful else "")
                + (", store_v_seq" if self.store_v_seq else ""))


class LIFNode(BaseNode):
    """SpikingJelly's ``LIFNode`` (same arguments) on the fused kernels.

    Extra keyword-only arguments: ``stateful``, and ``surrogate``/``alpha``/
    ``surrogate_beta`` to name a kernel surrogate instead of passing
    ``surrogate_function``.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate_function=None, detach_reset: bool = False,
                 step_mode: str = "s", store_v_seq: bool = False, backend: str = "auto", **kwargs):
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"tau must be a float, got {type(tau).__name__}")
        if not (math.isfinite(tau) and tau >= 1):
            raise ValueError(f"tau must be finite and >= 1, got {tau} (IFNode has no leak)")
        self.tau = float(tau)
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, step_mode,
                         store_v_seq, backend, decay_input=decay_input, **kwargs)

    def _decay(self, x_seq: torch.Tensor) -> float:
        return 1.0 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class ParametricLIFNode(BaseNode):
    """SpikingJelly's ``ParametricLIFNode`` (PLIF): ``1/tau = sigmoid(w)``, ``w`` learnt.

    ``w`` is a 0-dim parameter named as in SpikingJelly, so its state dicts load.
    ``channels=C`` (tcl_fast only) learns one ``w`` per channel instead:
    ``w: [C]``, the input ``[B, C, ...]`` per step (``[T, B, C, ...]`` per
    sequence).
    """

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: float | None = 0.0, surrogate_function=None, detach_reset: bool = False,
                 step_mode: str = "s", store_v_seq: bool = False, backend: str = "auto", *,
                 channels: int | None = None, **kwargs):
        if isinstance(init_tau, bool) or not isinstance(init_tau, (int, float)):
            raise TypeError(f"init_tau must be a float, got {type(init_tau).__name__}")
        if not (math.isfinite(init_tau) and init_tau > 1):
            raise ValueError(f"init_tau must be finite and > 1 (w = -log(init_tau - 1)), got {init_tau}")
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, step_mode,
                         store_v_seq, backend, decay_input=decay_input, **kwargs)
        channels = check_channels(channels)
        self.w = nn.Parameter(torch.full(() if channels is None else (channels,), -math.log(init_tau - 1.0)))

    def _decay(self, x_seq: torch.Tensor) -> torch.Tensor:
        return learnt_decay(self.w, x_seq, type(self).__name__)

    def extra_repr(self) -> str:
        with torch.no_grad():
            taus = (1.0 / self.w.sigmoid()).tolist()
        tau = f"tau={taus}" if self.w.dim() == 0 else f"channels={len(taus)}, tau in [{min(taus):.4g}, {max(taus):.4g}]"
        return f"{tau}, decay_input={self.decay_input}, " + super().extra_repr()


class IFNode(BaseNode):
    """SpikingJelly's ``IFNode``: no leak, ``h = v + x``."""

    def __init__(self, v_threshold: float = 1.0, v_reset: float | None = 0.0,
                 surrogate_function=None, detach_reset: bool = False, step_mode: str = "s",
                 store_v_seq: bool = False, backend: str = "auto", **kwargs):
        super().__init__(v_threshold, v_reset, surrogate_function, detach_reset, step_mode,
                         store_v_seq, backend, decay_input=False, **kwargs)

    def _decay(self, x_seq: torch.Tensor) -> float:
        return 0.0
