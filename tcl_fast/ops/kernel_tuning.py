"""Tuning knobs of the C++/CUDA LIF kernels, for benchmarks and tests.

They change how the kernels run (which CPU build, how neurons are grouped or
packed per thread), never what they compute. Each starts from an environment
variable read once, at the kernels' first use; a value the knob does not take
raises ``ValueError`` then, with the same message ``tuning()`` gives for it.
An empty variable counts as unset.

* ``cpu_isa`` (``TCL_FAST_CPU_ISA``): the widest CPU build to run, ``"avx512"``
  (default: whatever the CPU runs), ``"avx2"`` or ``"baseline"``.
* ``cpu_groups`` (``TCL_FAST_CPU_GROUPS``): ``"auto"`` (default: wide neuron
  groups for large N at T >= 8), ``"narrow"`` (128-neuron groups only) or
  ``"wide"`` (wide groups at T < 8 too).
* ``cuda_bwd_lanes`` (``TCL_FAST_CUDA_BWD_LANES``): the most neurons per CUDA
  backward thread, ``4`` (default), ``2`` or ``1``.
* ``cuda_packed`` (``TCL_FAST_CUDA_PACKED``): ``True`` (default; the variable
  ``1``) packs neighbouring neurons into one CUDA thread, ``False`` (``0``)
  runs one neuron per thread.

The knobs are process-wide, not thread-local: ``tuning()`` in one thread
changes what kernels running in every thread do.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from tcl_fast import _extension

# knob -> its Python type; the values each takes are csrc/lif_tuning.cpp's.
KNOBS = {"cpu_isa": str, "cpu_groups": str, "cuda_bwd_lanes": int, "cuda_packed": bool}


def _ops():
    if not _extension.has_cpp():
        raise RuntimeError(f"the tuning knobs are the C++ kernels', and tcl_fast._C failed to load: "
                           f"{_extension.load_error()}")
    return torch.ops.tcl_fast


def _check_names(names) -> None:
    unknown = [name for name in names if name not in KNOBS]
    if unknown:
        raise ValueError(f"unknown tuning knob(s) {', '.join(unknown)}; the knobs are {', '.join(KNOBS)}")


def _as_text(name: str, value) -> str:
    if KNOBS[name] is bool and isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _from_text(name: str, text: str):
    return text == "1" if KNOBS[name] is bool else KNOBS[name](text)


def get_tuning() -> dict:
    """The knobs' current values, e.g. ``{"cpu_isa": "avx512", "cpu_groups": "auto",
    "cuda_bwd_lanes": 4, "cuda_packed": True}``."""
    ops = _ops()
    return {name: _from_text(name, ops._get_tuning(name)) for name in KNOBS}


@contextlib.contextmanager
def tuning(**knobs) -> Iterator[None]:
    """Sets the given knobs for the ``with`` block, then restores their previous
    values (also when the block raises). A knob given ``None`` is left alone.

    >>> with tcl_fast.ops.tuning(cpu_groups="narrow", cuda_packed=False):
    ...     spikes = tcl_fast.lif_multistep(x)

    Raises ``ValueError`` for an unknown knob or a value it does not take.
    Process-wide, not thread-local (see the module docstring).
    """
    _check_names(knobs)
    ops = _ops()
    given = {name: value for name, value in knobs.items() if value is not None}
    previous = {name: ops._get_tuning(name) for name in given}
    try:
        for name, value in given.items():
            ops._set_tuning(name, _as_text(name, value))
        yield
    finally:
        for name, text in previous.items():
            ops._set_tuning(name, text)
