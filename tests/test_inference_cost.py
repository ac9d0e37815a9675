"""Inference cost (tcl_fast.inference_cost): firing rates, SOPs, MACs and energy per T',
checked against hand counts and SpikingJelly's SynOpCounter / MACCounter."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from optional_deps import require

require("nir")

from tcl_fast.cli import main  # noqa: E402
from tcl_fast.inference_cost import CostCounter, EnergyModel  # noqa: E402
from tcl_fast.models.layers import SeqToANN  # noqa: E402
from tcl_fast.nn import LIFMultiStep  # noqa: E402

T = 4


def _count(model, x, input_shape, T=T, energy=None):
    counter = CostCounter(model.eval(), input_shape, energy)
    with counter.attached(model), torch.no_grad():
        model(x.unsqueeze(0).expand(T, *x.shape).contiguous())
    return counter.summary()


def test_hand_counted_linear_net():
    # Input [1, 0, 0, 0] into Linear(4, 3) gives the currents [4, 0, 1.5]. With tau = 2 (h = v + (x - v) / 2,
    # fire at 1, reset to 0): neuron 0 fires every step, neuron 1 never, neuron 2 at steps 2 and 4
    # (0.75, 1.125, 0.75, 1.125). Spikes per step: 1, 2, 1, 2; each drives 2 synapses of Linear(3, 2).
    fc1 = nn.Linear(4, 3)
    fc2 = nn.Linear(3, 2)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[4.0, 9, 9, 9], [0, 9, 9, 9], [1.5, 9, 9, 9]]))
        fc1.bias.zero_()
    model = nn.Sequential(SeqToANN(fc1), LIFMultiStep(tau=2.0), SeqToANN(fc2))
    cost = _count(model, torch.tensor([[1.0, 0, 0, 0]]), (4,))
    sops = {t: cost["per_T"][str(t)]["sops"] for t in range(1, T + 1)}
    assert sops == {1: 2.0, 2: 6.0, 3: 8.0, 4: 12.0}
    rates = [cost["per_T"][str(t)]["firing_rate"]["1"] for t in range(1, T + 1)]
    assert rates == pytest.approx([1 / 3, 3 / 6, 4 / 9, 6 / 12])
    assert cost["first_layer_macs_per_step"] == 12  # 4 inputs x 3 outputs, once per step
    c4 = cost["per_T"]["4"]
    assert c4["macs"] == 48
    assert c4["energy_uJ"] == pytest.approx((48 * 4.6 + 12 * 0.9) * 1e-6)


def test_hand_counted_conv_fan_out_with_borders():
    # Spikes at a corner and at the centre of a 5x5 map, every step; a 3x3 conv with padding 1 and 2
    # output channels gives a corner spike 2 x 4 synapses and a centre spike 2 x 9: 26 SOPs per step.
    stem = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(stem.weight)
    model = nn.Sequential(SeqToANN(stem), LIFMultiStep(tau=2.0), SeqToANN(nn.Conv2d(1, 2, 3, padding=1)))
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0] = x[0, 0, 2, 2] = 4.0
    cost = _count(model, x, (1, 5, 5))
    assert [cost["per_T"][str(t)]["sops"] for t in range(1, T + 1)] == [26.0, 52.0, 78.0, 104.0]
    assert cost["first_layer_macs_per_step"] == 25  # a 1x1 conv: one MAC per pixel
    assert cost["per_T"]["1"]["firing_rate"]["1"] == pytest.approx(2 / 25)


def test_pool_then_conv_counts_the_merged_synapses():
    # An average pool between the neurons and the next conv: each spike enters one pooled cell,
    # whose 3x3 conv (padding 1, 4 channels, on a 2x2 map) reaches 4 x 4 outputs: 16 synapses.
    stem = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(stem.weight)
    model = nn.Sequential(SeqToANN(stem), LIFMultiStep(tau=2.0),
                          SeqToANN(nn.AvgPool2d(2), nn.Conv2d(1, 4, 3, padding=1)))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 4.0
    cost = _count(model, x, (1, 4, 4), T=1)
    assert cost["per_T"]["1"]["sops"] == 16.0


def test_sops_and_macs_equal_spikingjelly_counters():
    op_counter = require("spikingjelly.activation_based.op_counter")
    torch.manual_seed(0)
    model = nn.Sequential(
        SeqToANN(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)), LIFMultiStep(tau=2.0, backend="torch"),
        SeqToANN(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)), LIFMultiStep(tau=2.0, backend="torch"),
        SeqToANN(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))).eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data *= 3
    x = torch.rand(3, 2, 8, 8) * 2
    xs = x.unsqueeze(0).expand(T, *x.shape).contiguous()
    counter = CostCounter(model, (2, 8, 8))
    with counter.attached(model), torch.no_grad():
        model(xs)
    ours = counter.summary()["per_T"][str(T)]
    synop, mac = op_counter.SynOpCounter(), op_counter.MACCounter()
    with op_counter.DispatchCounterMode([synop, mac]), torch.no_grad():
        model(xs)
    assert ours["sops"] * 3 > 0
    assert ours["sops"] * 3 == synop.get_total()  # ours is per sample; 3 samples ran
    # SpikingJelly's MACCounter counts the first conv as outputs x kernel taps, the zero padding
    # included (8x8 outputs x 9 taps x 2 x 8 channels); ours skips the taps on padding (22 valid
    # taps per axis: 2 + 3 x 6 + 2), as hardware that skips zeros does. docs/deploy.md says so.
    first_conv = 2 * 8 * 22 * 22
    assert ours["macs"] == T * first_conv
    conv_macs = sum(v for k, v in mac.get_counts()["Global"].items() if "convolution" in str(k))
    assert conv_macs == 3 * T * 2 * 8 * 8 * 8 * 9


def test_energy_constants_are_validated():
    with pytest.raises(ValueError, match="e_ac"):
        EnergyModel(e_ac=-1.0)
    with pytest.raises(ValueError, match="e_mac"):
        EnergyModel(e_mac=float("nan"))


QUICK = ["--limit-batches", "3", "--batch-size", "16", "--no-progress", "--backend", "torch"]


def test_eval_reports_cost_per_T_and_compare_plots_energy(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--out", run, "--epochs", "1", "--T", "3", *QUICK]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", run, "--e-ac", "0.5", "--e-mac", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "inference cost per sample (energy = MACs x 2 pJ + SOPs x 0.5 pJ" in out
    assert "rate body.0" in out and "eval_T3_energy.png" in out
    with open(os.path.join(run, "eval_T3.json")) as f:
        result = json.load(f)
    cost = result["cost"]
    assert set(cost["per_T"]) == {"1", "2", "3"}
    for t in ("1", "2", "3"):
        c = cost["per_T"][t]
        assert c["energy_uJ"] == pytest.approx((c["macs"] * 2.0 + c["sops"] * 0.5) * 1e-6)
        assert set(c["firing_rate"]) == {"body.0", "body.2", "body.4"}
    assert cost["per_T"]["3"]["sops"] >= cost["per_T"]["1"]["sops"] > 0  # cumulative, and it spiked
    assert os.path.getsize(os.path.join(run, "eval_T3_energy.png")) > 0
    plot = str(tmp_path / "cmp.png")
    assert main(["compare", run, "--out", plot]) == 0
    assert os.path.getsize(str(tmp_path / "cmp_energy.png")) > 0
    assert main(["eval", "--checkpoint", run, "--e-ac", "-1"]) == 2
    assert "--e-ac must be" in capsys.readouterr().err
    bare = str(tmp_path / "bare")
    assert main(["eval", "--checkpoint", run, "--no-cost", "--out", bare]) == 0
    assert "inference cost" not in capsys.readouterr().out
    with open(os.path.join(bare, "eval_T3.json")) as f:
        assert "cost" not in json.load(f)
    assert not os.path.exists(os.path.join(bare, "eval_T3_energy.png"))
