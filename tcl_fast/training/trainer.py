"""The training loop behind ``tcl-fast train`` / ``eval`` / ``compare``."""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from tcl_fast.models import SNNOutput, build_model
from tcl_fast.objectives import Objective, build_objective
from tcl_fast.training.checkpoint import (CHECKPOINT_NAME, load_checkpoint, resolve_checkpoint, rng_state,
                                          save_checkpoint, set_rng_state)
from tcl_fast.training.config import TrainConfig, UserError
from tcl_fast.training.evaluation import (evaluate_latency, format_table, latency_rows, plot_latency,
                                          to_time_first, write_json)

LOG_NAME, CSV_NAME, CONFIG_NAME = "log.jsonl", "metrics.csv", "config.json"
LATENCY_JSON, LATENCY_PNG = "latency.json", "latency.png"


@dataclass
class RunResult:
    out: str
    epochs_done: int
    history: list[dict]
    latency: dict | None
    interrupted: bool = False


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _amp_dtype(amp: str) -> torch.dtype | None:
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _seed_worker(worker_id: int) -> None:
    # Each worker's torch seed derives from the loader generator; give numpy/random the same.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_data(cfg: TrainConfig, *, augment: bool | None = None):
    from tcl_fast.data import build_datasets

    try:
        return build_datasets(cfg.dataset, cfg.data_root, two_views=cfg.loss == "stcl",
                              frames=cfg.frames or cfg.T, download=cfg.download,
                              augment=cfg.augment if augment is None else augment)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise UserError(str(exc)) from None


def build_for_config(cfg: TrainConfig, num_classes: int, in_channels: int) -> torch.nn.Module:
    try:
        return build_model(cfg.model, num_classes, in_channels, proj_dim=cfg.proj_dim,
                           lif_backend=cfg.backend)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    lr, wd = cfg.resolved_lr(), cfg.resolved_weight_decay()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


class _Cosine:
    """Closed-form per-epoch cosine factor; ``total`` may grow when a resumed run extends --epochs."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.total) / self.total))


def _scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, _Cosine(cfg.epochs))
    return None


def _forward(model, objective: Objective, x, y, T: int):
    """Run the model on a batch (one or two views) and return (loss, parts, logits of view a)."""
    if objective.two_views:
        xa, xb = x
        B = xa.shape[0]
        # One forward over both views: half the kernel launches; BN sees both views.
        out = model(to_time_first(torch.cat([xa, xb], 0)), T=T)
        a = SNNOutput(out.logits[:, :B], out.features[:, :B])
        b = SNNOutput(out.logits[:, B:], out.features[:, B:])
        loss, parts = objective((a, b), y)
        return loss, parts, a.logits
    out = model(to_time_first(x), T=T)
    loss, parts = objective(out, y)
    return loss, parts, out.logits


def _to_device(x, device):
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


def _write_logs(out: str, history: list[dict]) -> None:
    """(Re)write the JSON-lines log and CSV from the history (so a resume never duplicates rows)."""
    with open(os.path.join(out, LOG_NAME), "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    if history:
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(os.path.join(out, CSV_NAME), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for row in history:
                w.writerow(row)


def _append_logs(out: str, history: list[dict]) -> None:
    row = history[-1]
    with open(os.path.join(out, LOG_NAME), "a") as f:
        f.write(json.dumps(row) + "\n")
    csv_path = os.path.join(out, CSV_NAME)
    if len(history) == 1 or not os.path.exists(csv_path) or set(row) != set(history[0]):
        _write_logs(out, history)
        return
    with open(csv_path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(history[0])).writerow(row)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False) -> RunResult:
    """Train per ``cfg``; with ``resume`` (checkpoint or run folder) continue that run exactly.

    Writes under ``cfg.resolved_out()``: config.json, log.jsonl, metrics.csv,
    checkpoint.pt (every epoch, atomically), latency.json and latency.png.
    """
    cfg.validate()
    state = None
    if resume is not None:
        try:
            state = load_checkpoint(resume)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc)) from None
    out = cfg.resolved_out()
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    if state is None and os.path.exists(ckpt_path) and not overwrite:
        raise UserError(f"{out!r} already holds a run; pass --resume {out} to continue it, "
                        "--overwrite to replace it, or choose another --out")
    device = select_device(cfg.device)
    amp_dtype = _amp_dtype(cfg.amp)
    if cfg.amp == "fp16" and device.type == "cpu":
        raise UserError("--amp fp16 needs a GPU; use --amp bf16 on CPU")
    os.makedirs(out, exist_ok=True)

    seed_everything(cfg.seed)
    bundle = build_data(cfg)
    if bundle.time_steps is not None and bundle.time_steps < cfg.T:
        raise UserError(f"dataset {cfg.dataset!r} gives {bundle.time_steps} frames but T={cfg.T}")
    model = build_for_config(cfg, bundle.num_classes, bundle.in_channels).to(device)
    objective = build_objective(cfg.loss, lam=cfg.lam, temperature=cfg.temperature, ce_mode=cfg.ce_mode,
                                lambda_mse=cfg.lambda_mse, phi=cfg.phi)
    opt = _optimizer(cfg, model)
    sched = _scheduler(cfg, opt)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(bundle.train, batch_size=cfg.batch_size, shuffle=True, generator=loader_gen,
                              num_workers=cfg.workers, worker_init_fn=_seed_worker, pin_memory=pin)
    test_loader = DataLoader(bundle.test, batch_size=max(cfg.batch_size, 256), shuffle=False,
                             num_workers=cfg.workers, pin_memory=pin)

    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint does not fit this model/config: {exc}") from None
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
            sched.lr_lambdas[0].total = cfg.epochs  # extending --epochs stretches the cosine
            for g, base in zip(opt.param_groups, sched.base_lrs):
                g["lr"] = base * sched.lr_lambdas[0](sched.last_epoch)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
        _say(f"resuming {out} after epoch {start_epoch}")

    def snapshot(epoch: int) -> None:
        save_checkpoint({
            "format": 1, "epoch": epoch, "config": cfg.to_dict(), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
            "scaler": scaler.state_dict(), "rng": rng_state(), "history": history,
        }, ckpt_path)

    write_json(cfg.to_dict(), os.path.join(out, CONFIG_NAME))
    _write_logs(out, history)
    if state is None:
        snapshot(0)  # so Ctrl-C during the first epoch still leaves a resumable run

    from tqdm.auto import tqdm

    interrupted = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            # Reseed the shuffle per epoch so a resumed run sees the same order.
            loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
            model.train()
            sums: dict[str, torch.Tensor] = {}
            seen = 0
            correct = torch.zeros((), dtype=torch.long, device=device)
            n_batches = len(train_loader) if cfg.limit_batches is None else min(len(train_loader), cfg.limit_batches)
            bar = tqdm(itertools.islice(train_loader, n_batches), total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not cfg.progress, leave=False, dynamic_ncols=True, file=sys.stderr)
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(bar):
                x, y = _to_device(x, device), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, parts, logits = _forward(model, objective, x, y, cfg.T)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                # Accumulate on the device; sync (.item()) only every few steps, not every step.
                b = y.numel()
                seen += b
                correct += (logits.detach().float().mean(0).argmax(-1) == y).sum()
                for k, v in (("loss", loss.detach()), *parts.items()):
                    sums[k] = sums.get(k, 0.0) + v.float() * b
                if i % 10 == 0 or i == n_batches - 1:
                    mean_loss = sums["loss"].item() / seen
                    if not math.isfinite(mean_loss):
                        raise FloatingPointError(f"loss became {mean_loss} in epoch {epoch} (by step {i}); "
                                                 "try a lower --lr")
                    bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{100 * correct.item() / seen:.1f}",
                                    sps=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.close()
            train_time = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            ev = evaluate_latency(model, test_loader, cfg.T, device, amp_dtype)
            sums = {k: float(v) for k, v in sums.items()}
            row = {"epoch": epoch, "lr": lr, "train_loss": sums.get("loss", 0.0) / max(seen, 1),
                   "train_acc": 100 * correct.item() / max(seen, 1)}
            row.update({f"train_{k}": v / max(seen, 1) for k, v in sums.items() if k != "loss"})
            row.update({"test_loss": ev["loss"], "test_acc": ev["accuracy"][str(cfg.T)],
                        "train_time_s": train_time, "samples_per_s": seen / max(train_time, 1e-9)})
            history.append(row)
            snapshot(epoch)
            _append_logs(out, history)
            if cfg.progress:
                _say(f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_acc']:.2f}%"
                     f"  test acc {row['test_acc']:.2f}%  {row['samples_per_s']:.0f} samples/s")
    except KeyboardInterrupt:
        interrupted = True
        done = history[-1]["epoch"] if history else 0
        _say(f"\ninterrupted: checkpoint of epoch {done} is in {ckpt_path}; "
             f"continue with: tcl-fast train --resume {out}")
        return RunResult(out, done, history, None, interrupted=True)

    # The last epoch's evaluation is already the final model's table.
    latency = ev if epoch > start_epoch else evaluate_latency(model, test_loader, cfg.T, device, amp_dtype)
    latency.update({"label": cfg.label(), "config": cfg.to_dict(), "epochs_done": epoch})
    write_json(latency, os.path.join(out, LATENCY_JSON))
    curve = latency_rows(latency)
    plot_latency([(cfg.label(), curve)], os.path.join(out, LATENCY_PNG),
                 title=f"{cfg.dataset} / {cfg.model} / {cfg.loss}")
    print(format_table([(cfg.label(), curve)], cfg.T))
    return RunResult(out, epoch, history, latency, interrupted)


def evaluate_checkpoint(checkpoint: str, *, T: int | None = None, device: str = "auto",
                        out: str | None = None, batch_size: int | None = None,
                        data_root: str | None = None, backend: str | None = None) -> dict:
    """Test accuracy at T' = 1..T of a saved run; writes eval_T{T}.json/.png next to it (or in ``out``)."""
    try:
        path = resolve_checkpoint(checkpoint)
        state = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    cfg = TrainConfig.from_dict(state["config"])
    if data_root is not None:
        cfg.data_root = data_root
    if backend is not None:
        cfg.backend = backend
    if T is not None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise UserError(f"T must be an integer >= 1, got {T!r}")
    T = T or cfg.T
    if cfg.frames is not None and cfg.frames < T:
        cfg.frames = T
    elif cfg.frames is None:
        cfg.frames = T
    cfg.loss = "tcl" if cfg.loss == "stcl" else cfg.loss  # evaluation needs single views only
    dev = select_device(device)
    bundle = build_data(cfg, augment=False)
    if bundle.time_steps is not None and bundle.time_steps < T:
        raise UserError(f"dataset gives {bundle.time_steps} frames but T={T}")
    model = build_for_config(cfg, bundle.num_classes, bundle.in_channels).to(dev)
    model.load_state_dict(state["model"])
    loader = DataLoader(bundle.test, batch_size=batch_size or max(cfg.batch_size, 256), shuffle=False)
    result = evaluate_latency(model, loader, T, dev, _amp_dtype(cfg.amp))
    label = TrainConfig.from_dict(state["config"]).label()
    result.update({"label": label, "checkpoint": path, "epoch": int(state["epoch"]),
                   "config": state["config"]})
    out = out or os.path.dirname(path)
    os.makedirs(out, exist_ok=True)
    write_json(result, os.path.join(out, f"eval_T{T}.json"))
    plot_latency([(label, latency_rows(result))], os.path.join(out, f"eval_T{T}.png"))
    print(format_table([(label, latency_rows(result))], T))
    return result


def load_run(run_dir: str) -> tuple[str, dict]:
    """Label and latency result of a finished run folder (or an eval JSON file)."""
    if os.path.isfile(run_dir) and run_dir.endswith(".json"):
        path = run_dir
    else:
        path = os.path.join(run_dir, LATENCY_JSON)
    if not os.path.isfile(path):
        raise UserError(f"{run_dir!r} has no {LATENCY_JSON} (is it a finished tcl-fast run?)")
    with open(path) as f:
        result = json.load(f)
    if "accuracy" not in result:
        raise UserError(f"{path!r} is not a tcl-fast latency result")
    label = result.get("label") or os.path.basename(os.path.normpath(run_dir))
    return label, result


def compare_runs(run_dirs: list[str], *, out: str = "comparison.png", json_out: str | None = None) -> str:
    """One table and one plot of accuracy vs T' across finished runs."""
    if not run_dirs:
        raise UserError("compare needs at least one run folder")
    loaded = [(d, *load_run(d)) for d in run_dirs]
    counts: dict[str, int] = {}
    for _, label, _ in loaded:
        counts[label] = counts.get(label, 0) + 1
    rows: list[tuple[str, dict[int, float]]] = []
    for d, label, result in loaded:
        if counts[label] > 1:  # same settings (e.g. several seeds): tell them apart
            seed = (result.get("config") or {}).get("seed")
            label = f"{label} [seed {seed}, {os.path.basename(os.path.normpath(d))}]"
        rows.append((label, latency_rows(result)))
    T = max(max(r) for _, r in rows)
    table = format_table(rows, T)
    print(table)
    plot_latency(rows, out)
    if json_out:
        write_json({label: {str(t): a for t, a in r.items()} for label, r in rows}, json_out)
    print(f"plot: {out}", file=sys.stderr)
    return table

