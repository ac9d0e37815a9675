"""snnTorch parity: ``snntorch.Leaky(beta, reset_delay=False)`` is tcl_fast's LIF with
``decay = 1 - beta``, ``decay_input=False``, the threshold as ``v_threshold``, and
``reset_mechanism="zero"`` -> ``v_reset=0.0`` / ``"subtract"`` -> ``v_reset=None``
(docs/spikingjelly-snntorch.md). Exact up to rounding (beta*v vs v - (1-beta)*v)
and ties: snnTorch fires on ``mem > threshold``, tcl_fast on ``>=``. With
``"subtract"`` it holds only while the membrane after a reset stays below the
threshold (snnTorch subtracts the threshold again before the next fire test).
"""
from __future__ import annotations

import pytest
import torch

import tcl_fast

from optional_deps import require  # noqa: E402  (skips here when missing, fails under CI=true)

snntorch = require("snntorch")
from snntorch import surrogate as sn_surrogate  # noqa: E402

SURROGATES = {"atan": (sn_surrogate.atan, 2.0), "sigmoid": (sn_surrogate.sigmoid, 25.0),
              "fast_sigmoid": (sn_surrogate.fast_sigmoid, 25.0)}


def _snntorch_run(x, beta, thr, reset, spike_grad):
    lif = snntorch.Leaky(beta=beta, threshold=thr, spike_grad=spike_grad, reset_mechanism=reset,
                         reset_delay=False)
    mem = lif.init_leaky()
    spikes = []
    for x_t in x:
        spk, mem = lif(x_t, mem)
        spikes.append(spk)
    return torch.stack(spikes), mem


@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_leaky_without_reset_delay_matches(surrogate, reset):
    beta, thr = 0.8, 1.0
    make, slope = SURROGATES[surrogate]
    g = torch.Generator().manual_seed(0)
    # Inputs below 0.9 * threshold keep the post-reset membrane under the threshold
    # (the "subtract" condition above); the neurons still fire often.
    x = torch.rand(12, 4, 30, generator=g, dtype=torch.float64) * 0.9 * thr
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_sn, x_tf = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_sn, mem_sn = _snntorch_run(x_sn, beta, thr, reset, make(slope))
    s_tf, v_tf = tcl_fast.lif_multistep(
        x_tf, decay=1 - torch.tensor(beta).item(), decay_input=False, v_threshold=thr,
        v_reset=0.0 if reset == "zero" else None, surrogate=surrogate, alpha=slope, return_v=True)
    # (snnTorch keeps beta as a float32 tensor: decay is 1 - float32(beta).)
    assert torch.equal(s_tf.float(), s_sn)  # snnTorch's spikes are float32 whatever the input
    assert 0.05 < s_sn.mean() < 0.9
    torch.testing.assert_close(v_tf, mem_sn, rtol=0, atol=1e-12)
    s_sn.double().backward(grad)
    s_tf.backward(grad)
    torch.testing.assert_close(x_tf.grad, x_sn.grad, rtol=1e-6, atol=1e-6)


def test_subtract_differs_once_the_membrane_stays_above_threshold():
    """Documented limit: a step that drives h past 2 * threshold."""
    x = torch.tensor([[2.5], [0.0], [0.0]], dtype=torch.float64)
    s_sn, _ = _snntorch_run(x, 0.9, 1.0, "subtract", sn_surrogate.atan())
    s_tf = tcl_fast.lif_multistep(x, decay=0.1, decay_input=False, v_reset=None, surrogate="atan")
    assert s_tf.flatten().tolist() == [1.0, 1.0, 0.0]  # 2.5 -> 1.5 fires again, -> 0.45
    assert s_sn.flatten().tolist() != s_tf.flatten().tolist()
