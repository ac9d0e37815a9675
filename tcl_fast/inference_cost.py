"""What inference costs at every T': firing rates, synaptic operations, MACs, energy.

Definitions (docs/deploy.md):

* **firing rate** of a neuron layer at T': its spikes over steps 1..T' divided
  by (T' x neurons x samples).
* **SOPs** (synaptic operations): each spike times its fan-out into the next
  layer, i.e. the synapses it drives before the next neuron layer (or the
  output). The fan-out is counted exactly on the model's NIR graph
  (tcl_fast.nir_exchange): every layer between two neuron layers (pooling,
  convolution, flatten, linear) is run with its weights set to one and no bias,
  so the count of each spike's paths is the number of accumulates it triggers,
  border effects of padded convolutions included. A pool followed by a
  convolution counts as the merged (pool-folded) synapses.
* **MACs** of the first layer: the layers from the input to the first neurons
  see real values, so they multiply-accumulate. Counted the same way on an
  all-ones input, once per step (hardware recomputes them each step; tcl_fast's
  models compute a static image's stem once and repeat it).
* **energy** = MACs x ``e_mac`` + SOPs x ``e_ac``, per sample; the defaults are
  the 45 nm figures of Horowitz (ISSCC 2014) most SNN papers use: 4.6 pJ per
  32-bit float multiply-accumulate (3.7 pJ multiply + 0.9 pJ add) and 0.9 pJ per
  accumulate. Memory access and neuron updates are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tcl_fast._plot import new_axes, save_figure
from tcl_fast.defaults import E_AC_PJ, E_MAC_PJ
from tcl_fast.models.layers import set_bn_fusion
from tcl_fast.nir_exchange import _nir, import_layer, to_nir

E_AC, E_MAC = E_AC_PJ * 1e-12, E_MAC_PJ * 1e-12  # joules (tcl_fast/defaults.py)


@dataclass(frozen=True)
class EnergyModel:
    """Joules per accumulate (``e_ac``) and per multiply-accumulate (``e_mac``)."""

    e_ac: float = E_AC
    e_mac: float = E_MAC

    def __post_init__(self):
        for name in ("e_ac", "e_mac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number of joules >= 0, got {v!r}")


def _ones_layer(nir, node) -> nn.Module:
    """``node``'s layer with unit weights and no bias: it counts paths instead of computing."""
    if isinstance(node, nir.Scale):
        return nn.Identity()
    layer = import_layer(nir, "", node)
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        nn.init.ones_(layer.weight)  # every synapse counts, zero-valued or not (as SpikingJelly's counters)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    elif isinstance(layer, nn.AvgPool2d):
        k = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
        pool = layer

        class _Sum(nn.Module):  # the average's 1/area is no operation: count each input once
            def forward(self, x):
                return pool(x) * (k[0] * k[1])

        return _Sum()
    return layer.double()


class CostCounter:
    """Counts spikes and SOPs of a model's neuron layers during its forward passes.

    ``CostCounter(model, input_shape)`` exports the model's graph once (for the
    fan-outs); ``with counter.attached(model): model(x, T=T)`` records, per
    neuron layer and step, the spikes and the SOPs they trigger; ``summary()``
    gives the per-T' table. The model must run its neuron modules (BN-into-LIF
    fusion is switched off while attached: same results up to rounding).
    """

    def __init__(self, model: nn.Module, input_shape, energy: EnergyModel | None = None):
        nir = _nir()
        self.energy = energy or EnergyModel()
        was_training = model.training
        graph = to_nir(model.eval(), input_shape, dtype=np.float64)
        model.train(was_training)
        self.input_shape = tuple(int(s) for s in input_shape)
        succ: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for a, b in graph.edges:
            succ[a].append(b)
        is_neuron = {n: isinstance(v, (nir.LIF, nir.IF)) for n, v in graph.nodes.items()}
        ones = {n: _ones_layer(nir, v) for n, v in graph.nodes.items()
                if not is_neuron[n] and not isinstance(v, (nir.Input, nir.Output))}
        self._ones = nn.ModuleDict(ones)
        self._succ, self._is_neuron = succ, is_neuron

        self.layers: list[dict] = []  # one per neuron node, in graph order
        for name, node in graph.nodes.items():
            if is_neuron[name]:
                self.layers.append({"node": name, "module": node.metadata["module"],
                                    "neurons": int(np.prod(np.asarray(node.v_threshold).shape))})
        inp = next(n for n, v in graph.nodes.items() if isinstance(v, nir.Input))
        with torch.no_grad():
            self.first_layer_macs = int(self._fanout(inp, torch.ones(1, *self.input_shape, dtype=torch.float64)).item())
        self.reset()

    # -------------------------------------------------------------- counting
    def _fanout(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """Synaptic operations per row of ``v`` (the output of node ``name``) up to the next neurons."""
        total = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
        for nxt in self._succ[name]:
            if nxt not in self._ones:  # a neuron or the output: the path ends here
                total = total + v.flatten(1).sum(1)
            else:
                total = total + self._fanout(nxt, self._ones[nxt].to(v.device)(v))
        return total

    def reset(self) -> None:
        self.spikes: list[torch.Tensor | None] = [None] * len(self.layers)  # per layer: [T] summed over samples
        self.sops: list[torch.Tensor | None] = [None] * len(self.layers)
        self.samples = 0

    def _record(self, i: int, out) -> None:
        s = out[0] if isinstance(out, tuple) else out  # [T, B, ...]
        with torch.no_grad():
            T, B = s.shape[:2]
            s64 = s.detach().to(torch.float64)
            per_step = s64.flatten(2).sum((1, 2)).cpu()
            sops = self._fanout(self.layers[i]["node"], s64.flatten(0, 1)).view(T, B).sum(1).cpu()
        if i == 0:
            self.samples += B
        if self.spikes[i] is None:
            self.spikes[i], self.sops[i] = per_step, sops
        else:
            n = max(len(self.spikes[i]), T)
            self.spikes[i] = _pad(self.spikes[i], n) + _pad(per_step, n)
            self.sops[i] = _pad(self.sops[i], n) + _pad(sops, n)

    def attached(self, model: nn.Module):
        counter = self

        class _Attached:
            def __enter__(self):
                self.fusion = [(m, m.fuse_bn) for m in model.modules() if hasattr(type(m), "fuse_bn")]
                set_bn_fusion(model, False)
                self.hooks = []
                for i, layer in enumerate(counter.layers):
                    mod = model.get_submodule(layer["module"]) if layer["module"] else model
                    self.hooks.append(mod.register_forward_hook(lambda m, a, out, i=i: counter._record(i, out)))
                return counter

            def __exit__(self, *exc):
                for h in self.hooks:
                    h.remove()
                for m, fuse in self.fusion:
                    m.fuse_bn = fuse

        return _Attached()

    # -------------------------------------------------------------- the report
    def summary(self, layer_names: list[str] | None = None) -> dict:
        """Per T' = 1..T (T: the steps counted): firing rate per layer, SOPs, MACs and energy per sample."""
        if self.samples == 0 or any(s is None for s in self.spikes):
            raise ValueError("nothing counted: run the model while the counter is attached")
        T = len(self.spikes[0])
        names = layer_names or [layer["module"] for layer in self.layers]
        per_t = {}
        for t in range(1, T + 1):
            rates = {n: float(s[:t].sum()) / (t * layer["neurons"] * self.samples)
                     for n, s, layer in zip(names, self.spikes, self.layers)}
            sops = sum(float(s[:t].sum()) for s in self.sops) / self.samples
            macs = float(self.first_layer_macs * t)
            energy = macs * self.energy.e_mac + sops * self.energy.e_ac
            per_t[str(t)] = {"firing_rate": rates, "sops": sops, "macs": macs, "energy_uJ": energy * 1e6}
        return {
            "per_T": per_t,
            "layers": [{"name": n, "neurons": layer["neurons"]} for n, layer in zip(names, self.layers)],
            "first_layer_macs_per_step": self.first_layer_macs,
            "samples": self.samples,
            "energy_model": {"e_ac_pJ": self.energy.e_ac * 1e12, "e_mac_pJ": self.energy.e_mac * 1e12,
                             "source": "Horowitz, ISSCC 2014, 45 nm (32-bit float add / multiply-add)"},
            "units": "sops, macs and energy_uJ per sample, cumulative over steps 1..T'",
        }


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if len(x) == n else torch.cat([x, x.new_zeros(n - len(x))])


def format_cost_table(accuracy: dict[int, float], cost: dict) -> str:
    """Markdown table: one row per T' with accuracy, firing rate of each layer, SOPs, MACs and energy."""
    names = [layer["name"] for layer in cost["layers"]]
    head = ["T'", "acc %"] + [f"rate {n}" for n in names] + ["SOPs", "MACs", "energy uJ"]
    rows = []
    for t, c in sorted(((int(k), v) for k, v in cost["per_T"].items())):
        rows.append([str(t), f"{accuracy.get(t, float('nan')):.2f}"]
                    + [f"{c['firing_rate'][n]:.4f}" for n in names]
                    + [f"{c['sops']:.4g}", f"{c['macs']:.4g}", f"{c['energy_uJ']:.4g}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    e = cost["energy_model"]
    title = (f"inference cost per sample (energy = MACs x {e['e_mac_pJ']:g} pJ + SOPs x {e['e_ac_pJ']:g} pJ, "
             "45 nm, Horowitz 2014)")
    return "\n".join([title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def plot_accuracy_vs_energy(curves, path: str, title: str = "accuracy vs inference energy") -> str:
    """One line per run, one point per T' (labelled), energy per sample on a log x axis."""
    fig, ax = new_axes()
    for name, accuracy, cost in curves:
        ts = sorted(int(t) for t in cost["per_T"])
        xs = [cost["per_T"][str(t)]["energy_uJ"] for t in ts]
        ys = [accuracy[t] for t in ts]
        ax.plot(xs, ys, marker="o", label=name)
        for t, x, y in zip(ts, xs, ys):
            ax.annotate(f"T'={t}", (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("energy per sample (uJ, 45 nm estimate)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)
