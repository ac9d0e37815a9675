"""Cost of the trainer's per-step finiteness check (loss and every gradient) against a training step.

For each model it times, interleaved, a full training step (forward, backward,
optimizer step, as in tcl_fast/training/trainer.py) and the check alone
(``trainer.nonfinite_flag`` over the step's gradients, plus reading the flag,
which is what the CPU path does each step), and reports the check as a share
of the step. The target is <= 1%.

    python benchmarks/bench_nonfinite.py                  # digits default + ResNet-19, CPU
    python benchmarks/bench_nonfinite.py --models small --out /tmp/nf.json

Writes JSON to --out, or benchmarks/results/local/nonfinite_<device>.json (git
ignores it), and refuses to overwrite an existing file unless --force.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import _common  # first: puts this checkout's tcl_fast on the path
from bench_lif import device_name, write_results  # noqa: E402

import tcl_fast  # noqa: E402
from tcl_fast.training.objectives import build_objective  # noqa: E402
from tcl_fast.training import trainer  # noqa: E402
from tcl_fast.training.config import TrainConfig  # noqa: E402

# The digits default run (TrainConfig()) and ResNet-19 on CIFAR-sized input.
SETUPS = {
    "small": dict(in_channels=1, size=8, T=TrainConfig().T, batch=TrainConfig().batch_size),
    "resnet19": dict(in_channels=3, size=32, T=2, batch=8),
}


def _batch(name: str, B: int, in_channels: int, size: int):
    """The digits model gets a real batch of the training set (augmented, as
    the trainer's loader gives it); ResNet-19 random CIFAR-sized input."""
    if name == "small":
        from tcl_fast.data import build_datasets

        train = build_datasets("digits").train
        torch.manual_seed(0)
        items = [train[i] for i in range(B)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, in_channels, size, size, generator=g),
            torch.randint(0, 10, (B,), generator=g))


def _setup(name: str, device: torch.device, batch: int | None, T: int | None):
    s = SETUPS[name]
    cfg = TrainConfig(model=name)
    T = T or s["T"]
    B = batch or s["batch"]
    # As the trainer builds and runs them: its model builder (LIF backend
    # "auto", BN fusion per the config), its optimizer and spike packing.
    model = trainer.build_for_config(cfg, 10, s["in_channels"]).to(device)
    objective = build_objective(cfg.loss, lam=cfg.lam, temperature=cfg.temperature, ce_mode=cfg.ce_mode)
    opt = trainer._optimizer(cfg, model)
    x, y = (t.to(device) for t in _batch(name, B, s["in_channels"], s["size"]))
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step():
        with tcl_fast.pack_spikes(cfg.pack_spikes):
            loss, _, _ = trainer._forward(model, objective, x, y, T)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    loss = step()  # warm-up; leaves gradients for the check to read

    def check():
        return bool(trainer.nonfinite_flag(loss, [p.grad for p in params if p.grad is not None]))

    n_params = sum(p.numel() for p in params)
    return step, check, dict(T=T, batch=B, params=n_params)


def _time(fn, device, min_time: float) -> float:
    """Seconds per call: repeat for at least min_time, return the mean of that sample."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="override the batch size of every model")
    p.add_argument("--T", type=int, default=None, help="override T of every model")
    p.add_argument("--rounds", type=int, default=7, help="interleaved samples of step and check")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per sample")
    p.add_argument("--out", default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out = _common.output_path(args.out, f"nonfinite_{device.type}.json")
    if os.path.exists(out) and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it or --out elsewhere", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        step, check, info = _setup(name, device, args.batch, args.T)
        steps, checks = [], []
        for _ in range(args.rounds):
            steps.append(_time(step, device, args.min_time))
            checks.append(_time(check, device, args.min_time / 5))
        t_step, t_check = statistics.median(steps), statistics.median(checks)
        rows.append(dict(model=name, **info, step_ms=1e3 * t_step, check_ms=1e3 * t_check,
                         check_share_pct=100 * t_check / t_step))
    name = device_name(device)
    print(f"finiteness check vs training step on {name}")
    print("| model | T | batch | params | step (ms) | check (ms) | check / step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['T']} | {r['batch']} | {r['params']:,} | {r['step_ms']:.2f} | "
              f"{r['check_ms']:.3f} | {r['check_share_pct']:.2f}% |")
    write_results(out, "bench_nonfinite.py", argv, device, name, rounds=args.rounds, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
