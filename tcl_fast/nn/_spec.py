"""Neuron attributes that live in the module's ``NeuronSpec``.

``v_threshold``, ``v_reset``, ``decay_input``, ``detach_reset``, ``surrogate``,
``alpha`` and ``surrogate_beta`` read ``self.spec``; assigning one builds a new
spec, so a bad value raises at the assignment and every forward hands the
kernel a spec validated once.
"""
from __future__ import annotations

import dataclasses

from tcl_fast.ops.lif import NeuronSpec


def _spec_field(name: str, doc: str) -> property:
    def get(self):
        return getattr(self.spec, name)

    def set(self, value):
        self.spec = dataclasses.replace(self.spec, **{name: value})

    return property(get, set, doc=doc)


class SpecAttributes:
    """Mixin for neuron modules holding ``self.spec: NeuronSpec``."""

    spec: NeuronSpec
    v_threshold = _spec_field("v_threshold", "firing threshold")
    v_reset = _spec_field("v_reset", "hard-reset value; None: soft reset")
    decay_input = _spec_field("decay_input", "whether the input is scaled by 1/tau")
    detach_reset = _spec_field("detach_reset", "whether the reset is a constant in backward")
    surrogate = _spec_field("surrogate", "the surrogate gradient's kernel name")
    alpha = _spec_field("alpha", "the surrogate's parameter")

    surrogate_beta = _spec_field("beta", "the surrogate's second parameter (piecewise_leaky_relu's c), "
                                         "None for the others")
