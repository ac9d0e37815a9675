"""Whole training step: activation memory held for backward, step time, largest batch.

Models: tcl_fast.models ResNet-19 (CIFAR, 3x32x32, static image repeated over
T) and VGGSNN (DVS, 2x48x48 frames per step), each as

* ``sj[impl]``   the same architecture with SpikingJelly's multi-step LIFNode
                 (impl: torch on CPU; on CUDA the one SpikingJelly picks per process,
                 set by env SJ_LIF_CUDA_IMPLEMENTATION=cuda|triton|torch)
* ``plain``      tcl_fast as it is
* ``pack``       under ``tcl_fast.pack_spikes()``
* ``pack+fuse``  ``pack_spikes`` and BN fused into LIF (``set_bn_fusion``)

and SpikingJelly's zoo ``spiking_resnet18`` (LIFNode, multi-step), original
(``sj-zoo``) and, when ``tcl_fast.convert_spikingjelly`` exists, converted
(``zoo-tcl``), converted under ``pack_spikes`` (``zoo-tcl+pack``) and, when
``tcl_fast.fuse_bn_lif`` exists, also with its BN -> neuron blocks fused
(``zoo-tcl+pack+fuse``).

Per row:
* ``saved_bytes``: the bytes of every tensor autograd holds for backward after
  one forward at ``--batch``, each storage once, parameters left out
  (tcl_fast.SavedTensorCounter; packed spikes count as their bits). Exact, the
  same on every run. On CUDA also ``max_allocated_bytes`` of a whole step.
* ``step_ms``: median over ``--repeats`` of forward + backward + SGD step at
  ``--time-batch`` (after one warm-up step), and ``images_per_s``.
* ``neuron_share``: for rows whose neurons can be swapped, 1 - the step time
  with every neuron replaced by identity (same run, same inputs) / step_ms.
* ``max_batch`` (CUDA only, ``--budget-gib``): the largest batch (doubling,
  then bisection) whose step peaks under the budget.

``--peak`` measures instead the peak of one whole step (forward, backward with
any recompute, SGD step), each row in a fresh process (``PEAK_CONFIGS``: SpikingJelly
as it is and with its ``memopt.optimize_memory`` level 1, tcl_fast plain, + pack,
+ fuse, + checkpoint (``tcl_fast.optimize_memory``), all of them): on CPU the
growth of the resident set over the step above the set before it (VmHWM after
``/proc/self/clear_refs`` = 5; glibc's mmap threshold pinned by
MALLOC_MMAP_THRESHOLD_ so freed tensors leave it), on CUDA
``max_memory_allocated`` above the allocation before it. Gradients of the first
step are compared with plain's (and checkpointed rows with the same row without
checkpointing): bit-identical or the largest difference. ``sj+memopt2`` and
``sj+memopt4`` (CUDA only: SpikingJelly measures CUDA peaks to choose) split
each checkpointed block into its children (``split_fn``); level 3 would chunk
blocks in time, which BN over T*B and a neuron reset per call make inexact
here, so it is not run. With ``--budget-mib`` each row also finds the largest
batch (doubling, then bisection, up to ``--budget-max-batch``) whose step peak,
measured the same way, stays within the budget: ``max_batch``.

CPU timings on a shared machine are noisy: medians, and say so. Results: a
table on stdout, JSON to --out (default benchmarks/results/local/train_step_<device>.json,
rewritten after every row, so an interrupted run keeps its rows).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import _common  # noqa: I001  (first: puts this checkout on sys.path)
import torch
from torch import nn

import tcl_fast  # noqa: E402
from tcl_fast.models import build_model, set_bn_fusion  # noqa: E402
from tcl_fast.nn import LIFMultiStep  # noqa: E402

MODELS = {  # name: (input shape per sample, static image?, num_classes)
    "resnet19": ((3, 32, 32), True, 10),
    "vggsnn": ((2, 48, 48), False, 10),
    "sj_resnet18": ((3, 32, 32), True, 10),
}
CONFIGS = ("sj", "plain", "pack", "pack+fuse")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_common.cpu_model()} ({torch.get_num_threads()} threads)"


# ------------------------------------------------------------- SpikingJelly ----
def _sj():
    try:
        from spikingjelly.activation_based import functional, neuron, surrogate
        return functional, neuron, surrogate
    except ImportError:
        return None


class SJLIF(nn.Module):
    """SpikingJelly's multi-step LIFNode with LIFMultiStep's defaults (tau 2, hard reset 0, sigmoid 4)."""

    def __init__(self):
        super().__init__()
        _, neuron, surrogate = _sj()
        self.node = neuron.LIFNode(tau=2.0, surrogate_function=surrogate.Sigmoid(alpha=4.0),
                                   detach_reset=False, step_mode="m")

    def forward(self, x):
        self.node.reset()
        return self.node(x)


def swap_neurons(model: nn.Module, make) -> nn.Module:
    """Replace every LIFMultiStep / SpikingJelly BaseNode (in place) with make()."""
    sj = _sj()
    kinds = (LIFMultiStep,) + ((sj[1].BaseNode,) if sj else ())
    for name, child in list(model.named_children()):
        if isinstance(child, kinds) or isinstance(child, SJLIF):
            setattr(model, name, make())
        else:
            swap_neurons(child, make)
    return model


def sj_impl(device) -> str:
    """SpikingJelly 2.x picks its LIF implementation once per process (on CUDA: env
    SJ_LIF_CUDA_IMPLEMENTATION, native cuda / triton / torch); rows name it."""
    if device.type != "cuda":
        return "torch"
    return os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION", "default")


def sj_zoo_resnet18(num_classes):
    functional, neuron, surrogate = _sj()
    from spikingjelly.activation_based.model import spiking_resnet
    net = spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode, num_classes=num_classes,
                                          surrogate_function=surrogate.Sigmoid(), detach_reset=False)
    functional.set_step_mode(net, "m")
    return net


# ------------------------------------------------------------------- steps ----
class Runner:
    """One model variant: how to run a forward and turn it into a loss."""

    def __init__(self, model, pack, static, T, zoo=False):
        self.model, self.pack, self.static, self.T, self.zoo = model, pack, static, T, zoo

    def forward(self, x):
        sj = _sj()
        if sj is not None:
            sj[0].reset_net(self.model)
        with tcl_fast.pack_spikes(self.pack):
            if self.zoo:
                xs = x.unsqueeze(0).expand(self.T, *x.shape) if self.static else x
                return self.model(xs).mean(0)
            out = self.model(x, T=self.T if self.static else None)
            return out.logits.mean(0) + 0 * out.features.sum()

    def loss(self, x, y):
        return nn.functional.cross_entropy(self.forward(x), y)


def make_input(name, batch, T, device, seed=0):
    shape, static, ncls = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    if static:
        x = torch.randn(batch, *shape, generator=g)
    else:
        x = (torch.rand(T, batch, *shape, generator=g) < 0.2).float()
    y = torch.randint(0, ncls, (batch,), generator=g)
    return x.to(device), y.to(device)


def saved_bytes(runner, x, y):
    params = list(runner.model.parameters())
    with tcl_fast.SavedTensorCounter(exclude=params) as c:
        loss = runner.loss(x, y)
    del loss
    return c.nbytes


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_times(runner, x, y, repeats, device):
    opt = torch.optim.SGD(runner.model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        runner.loss(x, y).backward()
        opt.step()
        _sync(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return times


def peak_step_bytes(runner, x, y, device):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    runner.model.zero_grad(set_to_none=True)
    runner.loss(x, y).backward()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def largest_fitting(fits, limit):
    """The largest batch b <= limit with fits(b) (0 if none), fits monotone: doubling, then
    bisection between the last batch that fitted and the first that did not."""
    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_batch(runner, name, T, device, budget_bytes, limit=4096):
    def fits(b):
        try:
            x, y = make_input(name, b, T, device)
            return peak_step_bytes(runner, x, y, device) <= budget_bytes
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            runner.model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    return largest_fitting(fits, limit)


def variants(name, T, device, configs):
    """(config, Runner, identity-neuron Runner or None) for one model and T."""
    shape, static, ncls = MODELS[name]
    sj = _sj()
    out = []
    if name == "sj_resnet18":
        if sj is None:
            print("# spikingjelly not installed: sj_resnet18 rows skipped")
            return out
        torch.manual_seed(0)
        base = sj_zoo_resnet18(ncls).to(device)
        ident = swap_neurons(copy.deepcopy(base), nn.Identity)
        out.append((f"sj-zoo[{sj_impl(device)}]", Runner(copy.deepcopy(base), False, static, T, zoo=True),
                    Runner(ident, False, static, T, zoo=True)))
        if hasattr(tcl_fast, "convert_spikingjelly"):
            for pack in (False, True):
                m = tcl_fast.convert_spikingjelly(copy.deepcopy(base), backend="auto")
                out.append(("zoo-tcl" + ("+pack" if pack else ""), Runner(m, pack, static, T, zoo=True),
                            None if pack else Runner(swap_neurons(copy.deepcopy(m), nn.Identity), False, static,
                                                     T, zoo=True)))
            if hasattr(tcl_fast, "fuse_bn_lif"):
                m = tcl_fast.fuse_bn_lif(tcl_fast.convert_spikingjelly(copy.deepcopy(base), backend="auto"))
                out.append(("zoo-tcl+pack+fuse", Runner(m, True, static, T, zoo=True), None))
            else:
                print("# tcl_fast.fuse_bn_lif not available: zoo-tcl+pack+fuse row skipped")
        else:
            print("# tcl_fast.convert_spikingjelly not available: converted-zoo rows (zoo-tcl, zoo-tcl+pack) skipped")
        return out
    torch.manual_seed(0)
    kw = {"final_hw": 3} if name == "vggsnn" else {}
    base = build_model(name, ncls, shape[0], **kw).to(device)
    for cfg in configs:
        if cfg == "sj":
            if sj is None:
                print("# spikingjelly not installed: sj rows skipped")
                continue
            m = swap_neurons(copy.deepcopy(base), SJLIF).to(device)
            out.append((f"sj[{sj_impl(device)}]", Runner(m, False, static, T), None))
            continue
        m = copy.deepcopy(base)
        set_bn_fusion(m, cfg == "pack+fuse")
        ident = swap_neurons(copy.deepcopy(base), nn.Identity) if cfg == "plain" else None
        out.append((cfg, Runner(m, cfg != "plain", static, T), ident and Runner(ident, False, static, T)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--T", type=int, nargs="+", default=[4, 6, 10])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--batch", type=int, default=8, help="batch for the memory count")
    ap.add_argument("--time-batch", type=int, default=None, help="batch for step times (default: CPU 2, CUDA --batch)")
    ap.add_argument("--time-T", type=int, nargs="*", default=None,
                    help="T values to time (default: CPU the first T, CUDA all); memory is counted at every T")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-neuron-share", action="store_true", help="skip the identity-neuron timing")
    ap.add_argument("--budget-gib", type=float, default=None, help="CUDA: find the largest batch under this budget")
    ap.add_argument("--budget-T", type=int, default=6)
    ap.add_argument("--hw", type=int, default=None, help="override the input height/width (tests: shrink)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/local/train_step_<device>.json)")
    ap.add_argument("--peak", action="store_true", help="whole-step peak per row, each in a fresh process")
    ap.add_argument("--peak-configs", nargs="+", default=list(PEAK_CONFIGS), choices=list(PEAK_CONFIGS))
    ap.add_argument("--threads", type=int, default=1, help="--peak: torch threads per row")
    ap.add_argument("--budget-mib", type=float, default=None,
                    help="--peak: also find each row's largest batch whose step peak fits this budget")
    ap.add_argument("--budget-max-batch", type=int, default=1024, help="--peak --budget-mib: search limit")
    ap.add_argument("--peak-row", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--peak-tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hw is not None:
        for k, (shape, static, ncls) in list(MODELS.items()):
            MODELS[k] = ((shape[0], args.hw, args.hw), static, ncls)
    if args.peak_row:
        return peak_child(args)
    if args.peak:
        return peak_main(args, argv)

    device = torch.device(args.device)
    out_path = _common.output_path(args.out, f"train_step_{device.type}.json")
    time_batch = args.time_batch or (2 if device.type == "cpu" else args.batch)
    time_T = args.time_T if args.time_T is not None else (args.T[:1] if device.type == "cpu" else args.T)
    name = device_name(device)
    print(f"# {name}, torch {torch.__version__}; memory at batch {args.batch}, times at batch {time_batch} "
          f"(median of {args.repeats} steps)")
    rows = []
    for model_name in args.models:
        for T in args.T:
            plain_bytes, sj_bytes = None, None
            for cfg, runner, ident in variants(model_name, T, device, args.configs):
                x, y = make_input(model_name, args.batch, T, device)
                row = dict(model=model_name, T=T, config=cfg, batch=args.batch,
                           saved_bytes=saved_bytes(runner, x, y))
                if cfg == "plain":
                    plain_bytes = row["saved_bytes"]
                if cfg.startswith("sj"):
                    sj_bytes = row["saved_bytes"]
                row["vs_plain"] = row["saved_bytes"] / plain_bytes if plain_bytes else None
                row["vs_sj"] = row["saved_bytes"] / sj_bytes if sj_bytes else None
                if device.type == "cuda":
                    row["max_allocated_bytes"] = peak_step_bytes(runner, x, y, device)
                del x, y
                if T in time_T:
                    x, y = make_input(model_name, time_batch, T, device, seed=1)
                    ts = step_times(runner, x, y, args.repeats, device)
                    row.update(time_batch=time_batch, step_ms=1e3 * statistics.median(ts),
                               step_ms_all=[1e3 * t for t in ts], images_per_s=time_batch / statistics.median(ts))
                    if ident is not None and not args.no_neuron_share:
                        ti = statistics.median(step_times(ident, x, y, args.repeats, device))
                        row["identity_step_ms"] = 1e3 * ti
                        row["neuron_share"] = max(0.0, 1 - ti / statistics.median(ts))
                if device.type == "cuda" and args.budget_gib and T == args.budget_T:
                    row["budget_gib"] = args.budget_gib
                    row["max_batch"] = max_batch(runner, model_name, T, device, args.budget_gib * 2**30)
                rows.append(row)
                # Rewritten after every row: a run stopped part-way keeps what it measured.
                _write(out_path, rows, name, device, argv, args, time_batch)
                _print_row(row)
    print(f"# wrote {out_path}")
    return 0


# -------------------------------------------------------- whole-step peak ----
PEAK_CONFIGS = ("sj", "sj+memopt1", "sj+memopt2", "sj+memopt4", "plain", "pack", "fuse", "ckpt", "all")
# SpikingJelly's memopt levels 2-4 measure CUDA peaks to decide: no CPU rows.
CUDA_ONLY = ("sj+memopt2", "sj+memopt4")
# Checkpointed rows are compared bit for bit with the same options without checkpointing.
_CKPT_REFERENCE = {"ckpt": "plain", "all": "fuse"}
MMAP_THRESHOLD = str(64 * 1024)


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _Pair(nn.Sequential):
    """conv(-BN) then neuron: the block SpikingJelly's memopt checkpoints in a VGG."""


def _split_children(block):
    """memopt's split_fn: the block's children that hold parameters or a neuron, in order."""
    sj = _sj()
    kinds = (SJLIF,) + ((sj[1].BaseNode,) if sj else ())
    return [c for c in block.children()
            if any(True for _ in c.parameters()) or any(isinstance(m, kinds) for m in c.modules())]


def _sj_memopt(model, targets, example, level=1):
    from spikingjelly.activation_based import memopt
    split = {"split_fn": _split_children} if level >= 2 else {}
    return memopt.optimize_memory(model, targets, example, level=level, **split)


def peak_variant(name, cfg, T, device, x):
    """The model for one --peak row, built from seed 0 (every row starts from the same weights)."""
    shape, static, ncls = MODELS[name]
    torch.manual_seed(0)
    if name == "sj_resnet18":
        from spikingjelly.activation_based.model import spiking_resnet
        base = sj_zoo_resnet18(ncls).to(device)
        if cfg.startswith("sj"):
            runner = Runner(base, False, static, T, zoo=True)
            if cfg.startswith("sj+memopt"):
                _sj_memopt(base, (spiking_resnet.BasicBlock,), lambda m: runner.forward(x), int(cfg[-1]))
            return runner
        m = tcl_fast.convert_spikingjelly(base, backend="auto")
    else:
        kw = {"final_hw": 3} if name == "vggsnn" else {}
        base = build_model(name, ncls, shape[0], **kw).to(device)
        if cfg.startswith("sj"):
            m = swap_neurons(base, SJLIF).to(device)
            runner = Runner(m, False, static, T)
            if cfg.startswith("sj+memopt"):
                from tcl_fast.models.resnet import BasicBlock
                if name == "vggsnn":  # pair each conv-BN with its neuron, as memopt's VGG example does
                    mods, grouped, i = list(m.body), [], 0
                    while i < len(mods):
                        if i + 1 < len(mods) and isinstance(mods[i + 1], SJLIF) and i > 0:
                            grouped.append(_Pair(mods[i], mods[i + 1]))
                            i += 2
                        else:
                            grouped.append(mods[i])
                            i += 1
                    m.body = nn.Sequential(*grouped)
                _sj_memopt(m, (BasicBlock, _Pair), lambda mm: runner.forward(x), int(cfg[-1]))
            return runner
        m = base
    zoo = name == "sj_resnet18"
    fuse = cfg in ("fuse", "all")
    if cfg == "ckpt":
        tcl_fast.optimize_memory(m, fuse_bn=False, pack=False)
    elif cfg == "all":
        tcl_fast.optimize_memory(m, fuse_bn="auto", pack=True)
    elif fuse and zoo:
        tcl_fast.fuse_bn_lif(m)
    elif fuse:
        set_bn_fusion(m, True)
    return Runner(m, cfg in ("pack", "all"), static, T, zoo=zoo)


def _step_peak(runner, opt, x, y, device, after_backward=None):
    """(peak bytes above the step's start, seconds) of one forward + backward + SGD step."""
    import gc
    opt.zero_grad(set_to_none=True)
    gc.collect()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    runner.loss(x, y).backward()
    if after_backward is not None:
        after_backward()
    opt.step()
    _sync(device)
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else _status_kib("VmHWM") * 1024) - base
    return peak, dt


def max_batch_within(runner, opt, name, T, device, budget_bytes, limit):
    """The largest batch (doubling, then bisection, at most ``limit``) whose step peak is at most
    ``budget_bytes``; a CUDA out-of-memory counts as not fitting. Returns (batch, [(batch, peak)])."""
    probes = []

    def fits(b):
        x, y = make_input(name, b, T, device)
        try:
            peak, _ = _step_peak(runner, opt, x, y, device)
        except torch.cuda.OutOfMemoryError:
            peak = None
        finally:
            del x, y
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        probes.append((b, peak))
        return peak is not None and peak <= budget_bytes

    return largest_fitting(fits, limit), probes


def peak_child(args) -> int:
    """One --peak row in this (fresh) process: prints a JSON line, saves first-step gradients."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name, cfg = args.peak_row
    T = args.T[0]
    x, y = make_input(name, args.batch, T, device)
    runner = peak_variant(name, cfg, T, device, x)
    opt = torch.optim.SGD(runner.model.parameters(), lr=1e-3, momentum=0.9)
    peaks, times = [], []
    for i in range(args.repeats + 1):
        save = None
        if i == 0:  # the first step's gradients, before any update: compared across rows
            def save():
                torch.save([p.grad for p in runner.model.parameters()],
                           os.path.join(args.peak_tmp, f"{name}_{cfg}.pt"))
        peak, dt = _step_peak(runner, opt, x, y, device, save)
        if i:  # the first step creates the momentum buffers and warms up
            peaks.append(peak)
            times.append(dt)
    row = dict(peak_bytes=max(peaks), peak_bytes_all=peaks, step_ms=1e3 * statistics.median(times),
               step_ms_all=[1e3 * t for t in times])
    if args.budget_mib is not None:
        del x, y
        row["budget_mib"] = args.budget_mib
        row["max_batch"], row["budget_probes"] = max_batch_within(
            runner, opt, name, T, device, args.budget_mib * 2**20, args.budget_max_batch)
    print("PEAK_ROW " + json.dumps(row), flush=True)
    return 0


def _grad_diff(a_path, b_path):
    a, b = torch.load(a_path), torch.load(b_path)
    if len(a) != len(b) or any(u is None or v is None or u.shape != v.shape for u, v in zip(a, b)):
        return None, None
    equal = all(torch.equal(u, v) for u, v in zip(a, b))
    rel = max(((u - v).abs().max() / v.abs().max().clamp_min(1e-30)).item() for u, v in zip(a, b))
    return equal, rel


def peak_main(args, argv) -> int:
    import subprocess
    import tempfile
    device = torch.device(args.device)
    out_path = _common.output_path(args.out, f"train_step_peak_{device.type}.json")
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{_common.cpu_model()} ({args.threads} threads)")
    print(f"# {name}, torch {torch.__version__}; whole-step peak at batch {args.batch}, T {args.T[0]}, "
          f"max over {args.repeats} steps after one warm-up, each row a fresh process")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            by_cfg = {}
            for cfg in args.peak_configs:
                if cfg.startswith("sj") and _sj() is None:
                    print(f"# spikingjelly not installed: {model_name} {cfg} skipped")
                    continue
                if cfg in CUDA_ONLY and device.type != "cuda":
                    print(f"# {model_name} {cfg} skipped: SpikingJelly's memopt levels 2-4 need CUDA")
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--peak-row", model_name, cfg, "--device", args.device,
                       "--T", str(args.T[0]), "--batch", str(args.batch), "--repeats", str(args.repeats),
                       "--threads", str(args.threads), "--peak-tmp", tmp] + (["--hw", str(args.hw)] if args.hw else [])
                if args.budget_mib is not None:
                    cmd += ["--budget-mib", str(args.budget_mib), "--budget-max-batch", str(args.budget_max_batch)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_ROW ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"# {model_name} {cfg} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
                    continue
                row = dict(model=model_name, T=args.T[0], config=cfg, batch=args.batch, **json.loads(line[9:]))
                by_cfg[cfg] = row
                rows.append(row)
                _write_peak(out_path, rows, name, device, argv, args)  # a stopped run keeps its rows
                print(f"# {model_name} {cfg}: peak {row['peak_bytes'] / 2**20:.1f} MiB, step {row['step_ms']:.0f} ms"
                      + (f", max batch {row['max_batch']} within {args.budget_mib:g} MiB" if "max_batch" in row else ""),
                      flush=True)
            grads = lambda c: os.path.join(tmp, f"{model_name}_{c}.pt")  # noqa: E731
            for cfg, row in by_cfg.items():  # ratios and gradient checks once every row is in
                for ref_name, key in (("plain", "plain"), ("sj+memopt1", "memopt1")):
                    if ref_name in by_cfg:
                        row[f"peak_vs_{key}"] = row["peak_bytes"] / by_cfg[ref_name]["peak_bytes"]
                        row[f"time_vs_{key}"] = row["step_ms"] / by_cfg[ref_name]["step_ms"]
                        if by_cfg[ref_name].get("max_batch") and "max_batch" in row:
                            row[f"max_batch_vs_{key}"] = row["max_batch"] / by_cfg[ref_name]["max_batch"]
                if "plain" in by_cfg:
                    row["grads_equal_plain"], row["grads_max_rel_diff_plain"] = _grad_diff(grads(cfg), grads("plain"))
                ref = _CKPT_REFERENCE.get(cfg)
                if ref in by_cfg:
                    row["grads_reference"] = ref
                    row["grads_equal_reference"], _ = _grad_diff(grads(cfg), grads(ref))
                _print_peak_row(row)
            _write_peak(out_path, rows, name, device, argv, args)
    print(f"# wrote {out_path}")
    return 0


def _write_peak(out_path, rows, name, device, argv, args):
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(benchmark="train_step_peak", device=name, device_type=device.type, torch=torch.__version__,
                       date=_common.utc_now(), command=_common.command_line("bench_train_step.py", argv),
                       measure=("max_memory_allocated above the step's start" if device.type == "cuda" else
                                "VmHWM after clear_refs=5 minus VmRSS at the step's start, "
                                f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"),
                       threads=args.threads, hw=args.hw, batch=args.batch, repeats=args.repeats,
                       budget_mib=args.budget_mib, rows=rows), f, indent=1)
    os.replace(tmp, out_path)


def _print_peak_row(r):
    eq = r.get("grads_equal_reference", r.get("grads_equal_plain"))
    print(f"{r['model']:<12} T={r['T']:<3} {r['config']:<11} peak {r['peak_bytes'] / 2**20:8.1f} MiB"
          f"  x plain {_fmt(r.get('peak_vs_plain'), '.3f'):>6}  x memopt1 {_fmt(r.get('peak_vs_memopt1'), '.3f'):>6}"
          f"  step {r['step_ms']:7.0f} ms  x plain {_fmt(r.get('time_vs_plain'), '.2f'):>5}"
          f"  grads bit-equal {r.get('grads_reference', 'plain')}: {eq}"
          + (f"  max batch {r['max_batch']} within {r['budget_mib']:g} MiB" if "max_batch" in r else ""), flush=True)


def _write(out_path, rows, name, device, argv, args, time_batch):
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(benchmark="train_step", device=name, device_type=device.type, torch=torch.__version__,
                       date=_common.utc_now(), command=_common.command_line("bench_train_step.py", argv),
                       sj_lif_cuda_implementation=os.environ.get("SJ_LIF_CUDA_IMPLEMENTATION"),
                       hw=args.hw, batch=args.batch, time_batch=time_batch, repeats=args.repeats, rows=rows), f, indent=1)
    os.replace(tmp, out_path)


def _fmt(v, f):
    return "-" if v is None else format(v, f)


def _print_row(r):
    print(f"{r['model']:<12} T={r['T']:<3} {r['config']:<16} saved {r['saved_bytes'] / 2**20:9.1f} MiB"
          f"  x plain {_fmt(r['vs_plain'], '.3f'):>6}  x sj {_fmt(r['vs_sj'], '.3f'):>6}"
          f"  step {_fmt(r.get('step_ms'), '.0f'):>6} ms  {_fmt(r.get('images_per_s'), '.1f'):>6} img/s"
          f"  neurons {_fmt(r.get('neuron_share'), '.1%'):>6}"
          + (f"  peak {r['max_allocated_bytes'] / 2**20:.0f} MiB" if "max_allocated_bytes" in r else "")
          + (f"  max batch {r['max_batch']}" if "max_batch" in r else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
