"""The training loop behind ``tcl-fast train`` / ``eval`` / ``compare``."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

import tcl_fast
from tcl_fast.models import SNNOutput, build_model
from tcl_fast.training.objectives import Objective, build_objective
from tcl_fast.training.checkpoint import (CHECKPOINT_NAME, RunFolderBusy, RunLock, first_nonfinite,
                                          load_checkpoint, remove_stale_temp_files, resolve_checkpoint,
                                          rng_state, save_checkpoint, set_rng_state)
from tcl_fast.training.config import LIF_BACKENDS, TrainConfig, UserError
from tcl_fast.training.evaluation import (evaluate_latency, format_table, latency_rows, plot_latency,
                                          to_time_first, write_json)

LOG_NAME, CSV_NAME, CONFIG_NAME = "log.jsonl", "metrics.csv", "config.json"
# The per-epoch columns of log.jsonl and metrics.csv, in order; the loss's parts add
# train_<part> columns (train_ce, train_tcl, ...) after train_acc.
LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "skipped_steps",
               "train_time_s", "samples_per_s", "images_per_s")
LATENCY_JSON, LATENCY_PNG = "latency.json", "latency.png"


@dataclass
class RunResult:
    out: str
    epochs_done: int
    history: list[dict]
    latency: dict | None
    interrupted: bool = False


def select_device(name: str) -> torch.device:
    """The torch.device for --device; UserError unless it names a device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {name!r} requested but MPS (Apple GPU) is not available here")
    elif dev.type != "cpu":
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def check_backend(backend: str, device: torch.device, what: str = "--backend") -> None:
    """UserError if the LIF ``backend`` cannot run on ``device`` here (checked before anything is written)."""
    if backend == "auto":
        return
    from tcl_fast.ops.lif import resolve_backend

    try:
        resolve_backend(backend, device)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{what} {backend}: {exc}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _amp_dtype(amp: str) -> torch.dtype | None:
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one training sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class SeededSamples(torch.utils.data.Dataset):
    """Draw each sample's augmentation from a seed of (seed, epoch, index).

    The transforms draw from torch's global RNG, whose state would otherwise
    depend on which process loads a sample and in what order: --workers would
    change the augmentations, and a resume with another worker count would not
    match the uninterrupted run. The caller's RNG state is left untouched.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:  # before the epoch's iterator (and workers) start
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)  # the transforms draw from torch only (tcl_fast/data/transforms.py)
            return self.dataset[index]


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
        model = build_model(cfg.model, num_classes, in_channels, proj_dim=cfg.proj_dim,
                            lif_backend=cfg.backend, fuse_bn=cfg.fuse_bn)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if cfg.optimize_memory:
        from tcl_fast.memory import optimize_memory
        # fusion and packing stay as --fuse-bn / --no-pack-spikes set them
        optimize_memory(model, fuse_bn=False, pack=False)
    return model


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


def nonfinite_flag(loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool device tensor: is the loss or any gradient NaN/inf?

    On CUDA one fused foreach max-abs over all gradients, then one reduction;
    nothing waits for the device. On CPU a plain sum per gradient (NaN and inf
    survive a sum; it overflows only past 3e38), which measured several times
    faster there than the max-abs (benchmarks/bench_nonfinite.py).
    """
    loss = loss.detach().float().abs().reshape(1)
    if not grads:
        return ~torch.isfinite(loss[0])
    if loss.device.type == "cuda":
        peaks = torch.stack([m.float() for m in torch._foreach_norm(grads, math.inf)])
        return ~torch.isfinite(torch.cat([loss, peaks]).amax())  # amax propagates NaN
    return ~torch.isfinite(loss[0] + torch.stack([g.sum().float() for g in grads]).sum())


def _nonfinite_message(loss: float, epoch: int, step: int) -> str:
    what = f"loss became {loss}" if not math.isfinite(loss) else "a gradient became NaN/inf (the loss was finite)"
    return (f"{what} in epoch {epoch}, step {step}; try a lower --lr or check the inputs and weights, "
            "or pass --skip-nonfinite to skip such steps")


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


def load_checkpoint_and_config(checkpoint: str) -> tuple[str, dict, TrainConfig]:
    """A run's checkpoint (a run folder or a checkpoint file): its path, its saved
    state and its config; a missing or unreadable one is the user's error."""
    try:
        path = resolve_checkpoint(checkpoint)
        state = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--checkpoint: {exc}") from None
    return path, state, TrainConfig.from_dict(state["config"])


def check_model_state(model: torch.nn.Module, state_dict, what: str) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s, before anything is loaded."""
    if not isinstance(state_dict, dict):
        raise UserError(f"{what} holds no model weights (got {type(state_dict).__name__})")
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(state_dict[k].shape) if isinstance(state_dict[k], torch.Tensor) else '?'}"
             f" != {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and (not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != v.shape)]
    if missing or unexpected or wrong:
        def few(xs):
            return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")
        problems = [f"{name}: {few(xs)}" for name, xs in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if xs]
        raise UserError(f"{what} is from another model and does not fit this one ("
                        + "; ".join(problems) + "); nothing was loaded")


def _init_context(cfg: TrainConfig):
    """Single process, or this process's place in a torchrun job (checks that need the world size first)."""
    from tcl_fast.training import distributed as tdist

    raw = os.environ.get("WORLD_SIZE", "1") or "1"
    try:
        world = int(raw)
    except ValueError:
        raise UserError(f"environment variable WORLD_SIZE must be an integer (set by torchrun), got {raw!r}") from None
    if world > 1 and cfg.batch_size % world:
        raise UserError(f"batch-size ({cfg.batch_size}) must be divisible by the number of processes "
                        f"({world}): each process trains on batch-size / {world} samples")
    if world <= 1:
        device = select_device(cfg.device)
        ctx = tdist.DistContext(device=device)
    else:
        try:
            ctx = tdist.init_distributed(cfg.device)
        except ValueError as exc:
            raise UserError(f"--device / torchrun environment: {exc}") from None
    if cfg.sync_bn and ctx.device.type != "cuda":
        raise UserError("--sync-bn needs CUDA (SyncBatchNorm is GPU-only); drop it on CPU")
    if cfg.amp == "fp16" and ctx.device.type != "cuda":
        raise UserError("--amp fp16 needs a GPU; use --amp bf16 on CPU")
    return ctx


def _broadcast_buffers(model: torch.nn.Module, ctx) -> None:
    # BN running statistics drift apart per rank; evaluate (and save) rank 0's everywhere.
    if ctx.distributed:
        import torch.distributed as dist

        for b in model.buffers():
            dist.broadcast(b, 0)


def train(cfg: TrainConfig, *, resume: str | None = None, overwrite: bool = False) -> RunResult:
    """Train per ``cfg``; with ``resume`` (checkpoint or run folder) continue that run exactly.

    Writes under ``cfg.resolved_out()``: config.json, log.jsonl, metrics.csv (one row
    per epoch with the ``LOG_COLUMNS`` and the loss's parts), checkpoint.pt (every
    epoch, atomically), latency.json and latency.png.
    Under torchrun (WORLD_SIZE > 1) it trains with DDP; only rank 0 writes files.
    """
    cfg = cfg.validate().resolved()  # config.json records the lr and folder actually used
    state = None
    if resume is not None:
        try:
            state = load_checkpoint(resume)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"--resume: {exc}") from None
        check_resumable(state, f"--resume checkpoint {resume!r}")
    out = cfg.resolved_out()
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out!r} is a file, not a run folder; choose another --out")
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    ctx = _init_context(cfg)
    try:
        check_backend(cfg.backend, ctx.device)
        lock = _lock_run_folder(out, ctx)
        try:
            # Checked under the lock: a concurrent run can't slip in between check and write.
            if state is None and os.path.exists(ckpt_path) and not overwrite:
                raise UserError(f"{out!r} already holds a run; pass --resume {out} to continue it, "
                                "--overwrite to replace it, or choose another --out")
            return _train(cfg, ctx, state, out, ckpt_path, resume)
        finally:
            if lock is not None:
                lock.release()
    finally:
        ctx.cleanup()


def check_resumable(state: dict, what: str) -> None:
    """Refuse a checkpoint that lacks what a resume needs, or whose weights or optimizer state
    hold NaN/inf (a resumed run would train on garbage without ever failing)."""
    missing = [k for k in ("optimizer", "rng") if not isinstance(state.get(k), dict)]
    if missing:
        raise UserError(f"{what} has no {' or '.join(missing)} entry; it is not a resumable tcl_fast checkpoint")
    bad = first_nonfinite(state["model"], "model") or first_nonfinite(state["optimizer"], "optimizer")
    if bad is not None:
        raise UserError(f"{what} holds NaN/inf values in {bad}; nothing was loaded "
                        "(resume from an earlier copy or start a new run)")


def _lock_run_folder(out: str, ctx) -> RunLock | None:
    """Rank 0 takes the run folder's lock and clears temp files that killed saves left;
    every rank learns whether it got the lock (so none waits for a rank that quit)."""
    lock, error = None, None
    if ctx.is_main:
        try:
            lock = RunLock(out).acquire()
            remove_stale_temp_files(out)
        except RunFolderBusy as exc:
            error = str(exc)
    if ctx.distributed:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise UserError(error)
    return lock


def _train(cfg: TrainConfig, ctx, state: dict | None, out: str, ckpt_path: str, resume: str | None) -> RunResult:
    from torch.utils.data import Subset

    from tcl_fast.training import distributed as tdist

    device = ctx.device
    main = ctx.is_main
    amp_dtype = _amp_dtype(cfg.amp)

    seed_everything(cfg.seed)
    bundle = build_data(cfg)
    if bundle.time_steps is not None and bundle.time_steps < cfg.T:
        raise UserError(f"dataset {cfg.dataset!r} gives {bundle.time_steps} frames but T={cfg.T}")
    model = build_for_config(cfg, bundle.num_classes, bundle.in_channels).to(device)
    if state is not None:  # validate before anything is loaded or wrapped
        check_model_state(model, state["model"], f"--resume checkpoint {resume!r}")
    objective = build_objective(cfg.loss, lam=cfg.lam, temperature=cfg.temperature, ce_mode=cfg.ce_mode,
                                lambda_mse=cfg.lambda_mse, phi=cfg.phi,
                                gather=tdist.gather_for_contrast if cfg.contrast == "global" else None)
    if ctx.distributed:
        # Same initial weights (seeded above), different augmentation draws per rank.
        seed_everything((cfg.seed + 7919 * ctx.rank) % 2**32)
    opt = _optimizer(cfg, model)
    sched = _scheduler(cfg, opt)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    per_rank = cfg.batch_size // ctx.world_size
    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    train_set = SeededSamples(bundle.train, cfg.seed)
    sampler = tdist.build_sampler(train_set, ctx, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train_set, batch_size=per_rank, shuffle=sampler is None, sampler=sampler,
                              generator=loader_gen, num_workers=cfg.workers, pin_memory=pin)
    # Evaluation is sharded too (strided, no padding: every test sample counted exactly once).
    test_set = bundle.test if not ctx.distributed else Subset(
        bundle.test, range(ctx.rank, len(bundle.test), ctx.world_size))
    test_loader = DataLoader(test_set, batch_size=max(per_rank, 256), shuffle=False,
                             num_workers=cfg.workers, pin_memory=pin)

    history: list[dict] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        try:
            opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"checkpoint optimizer state does not fit this run: {exc}") from None
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
            sched.lr_lambdas[0].total = cfg.epochs  # extending --epochs stretches the cosine
            for g, base in zip(opt.param_groups, sched.base_lrs):
                g["lr"] = base * sched.lr_lambdas[0](sched.last_epoch)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ranks_rng = state.get("rng_ranks") or [state["rng"]]
        if len(ranks_rng) == ctx.world_size:
            set_rng_state(ranks_rng[ctx.rank])
        elif main:  # another world size: the data order follows, but augmentation draws can't
            _say(f"note: the run was saved by {len(ranks_rng)} process(es), resumed by {ctx.world_size}; "
                 "random augmentation will differ from an uninterrupted run")
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
        if main:
            _say(f"resuming {out} after epoch {start_epoch}")

    # ce/tet never use the projection head, whose parameters then get no gradient: DDP must know.
    extra = {"find_unused_parameters": True} if ctx.distributed and cfg.loss in ("ce", "tet") else {}
    net = tdist.wrap_model(model, ctx, sync_bn=cfg.sync_bn, **extra)
    bare = tdist.unwrap(net)
    params = [p for p in net.parameters() if p.requires_grad]
    buffers = list(net.buffers())
    # On a GPU, deciding per step would sync the host every step: when stopping (not skipping),
    # the flag stays on the device and is read once per epoch, before anything is saved.
    defer_check = device.type == "cuda" and not cfg.skip_nonfinite

    def snapshot(epoch: int) -> None:
        rng = rng_state()
        ranks_rng = [rng]
        if ctx.distributed:  # every rank's RNG (augmentation draws), so a resume is exact per rank
            ranks_rng = [None] * ctx.world_size
            torch.distributed.all_gather_object(ranks_rng, rng)
        if main:
            save_checkpoint({
                "format": 1, "epoch": epoch, "config": cfg.to_dict(), "model": bare.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                "scaler": scaler.state_dict(), "rng": rng, "rng_ranks": ranks_rng, "history": history,
            }, ckpt_path)

    ctx.barrier()  # every rank has checked --out before rank 0 writes there
    if main:
        os.makedirs(out, exist_ok=True)
        write_json(cfg.to_dict(), os.path.join(out, CONFIG_NAME))
        _write_logs(out, history)
    if state is None:
        snapshot(0)  # so Ctrl-C during the first epoch still leaves a resumable run

    from tqdm.auto import tqdm

    def evaluate():
        _broadcast_buffers(bare, ctx)
        return evaluate_latency(bare, test_loader, cfg.T, device, amp_dtype, ctx=ctx)

    progress = cfg.progress and main
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            # Reseed the shuffle per epoch so a resumed run sees the same order.
            loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
            train_set.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            sums: dict[str, torch.Tensor] = {}
            seen = skipped = 0
            correct = torch.zeros((), dtype=torch.long, device=device)
            n_batches = len(train_loader) if cfg.limit_batches is None else min(len(train_loader), cfg.limit_batches)
            bar = tqdm(itertools.islice(train_loader, n_batches), total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not progress, leave=False, dynamic_ncols=True, file=sys.stderr)
            first_bad = torch.zeros((), dtype=torch.long, device=device)  # deferred check: first bad step
            first_bad_loss = torch.zeros((), device=device)
            t0 = time.perf_counter()
            for i, (x, y) in enumerate(bar):
                x, y = _to_device(x, device), y.to(device, non_blocking=True)
                if cfg.skip_nonfinite:  # a skipped step must not leave NaN in BN's running statistics either
                    saved_buffers = [b.detach().clone() for b in buffers]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None), \
                        tcl_fast.pack_spikes(cfg.pack_spikes):
                    loss, parts, logits = _forward(net, objective, x, y, cfg.T)
                opt.zero_grad(set_to_none=True)
                # Backward even for a non-finite loss: DDP expects one after every forward.
                scaler.scale(loss).backward()
                # With fp16 the scaler already skips steps whose (scaled) gradients overflowed.
                bad = nonfinite_flag(loss, [] if scaler.is_enabled() else
                                     [p.grad for p in params if p.grad is not None])
                if ctx.distributed:  # every rank must take the same decision, or DDP's collectives hang
                    bad = bad.to(torch.int32)
                    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
                    bad = bad.bool()
                if defer_check:
                    hit = bad & (first_bad == 0)
                    first_bad = torch.where(hit, i + 1, first_bad)
                    first_bad_loss = torch.where(hit, loss.detach().float(), first_bad_loss)
                elif bool(bad):
                    if not cfg.skip_nonfinite:
                        raise FloatingPointError(_nonfinite_message(loss.item(), epoch, i + 1))
                    opt.zero_grad(set_to_none=True)
                    torch._foreach_copy_(buffers, saved_buffers)
                    skipped += 1
                    continue
                scaler.step(opt)
                scaler.update()
                # Accumulate on the device (the finiteness check above is the one sync per step on CPU).
                b = y.numel()
                seen += b
                correct += (logits.detach().float().mean(0).argmax(-1) == y).sum()
                for k, v in (("loss", loss.detach()), *parts.items()):
                    sums[k] = sums.get(k, 0.0) + v.float() * b
                if progress and (i % 10 == 0 or i == n_batches - 1):
                    bar.set_postfix(loss=f"{sums['loss'].item() / seen:.3f}",
                                    acc=f"{100 * correct.item() / seen:.1f}",
                                    sps=f"{seen / (time.perf_counter() - t0):.0f}")
            bar.close()
            if defer_check and int(first_bad):  # before the epoch's weights are logged or saved
                raise FloatingPointError(_nonfinite_message(first_bad_loss.item(), epoch, int(first_bad)))
            train_time = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step()
            ev = evaluate()
            totals = tdist.reduce_metrics({"seen": seen, "skipped": skipped, "correct": correct,
                                           **{f"sum_{k}": v for k, v in sums.items()}}, ctx)
            n = max(totals["seen"], 1)
            sums = {k[4:]: float(v) for k, v in totals.items() if k.startswith("sum_")}
            row = {"epoch": epoch, "lr": lr, "train_loss": sums.get("loss", 0.0) / n,
                   "train_acc": 100 * totals["correct"] / n}
            row.update({f"train_{k}": v / n for k, v in sums.items() if k != "loss"})
            row.update({"test_loss": ev["loss"], "test_acc": ev["accuracy"][str(cfg.T)],
                        # ranks skip together, so each skipped step is counted world_size times
                        "skipped_steps": totals["skipped"] // ctx.world_size,
                        "train_time_s": train_time,
                        "samples_per_s": totals["seen"] / max(train_time, 1e-9),
                        # images through the network per second (two views: two per sample), the
                        # quantity bench_train_step.py reports as images_per_s
                        "images_per_s": totals["seen"] * (2 if objective.two_views else 1) / max(train_time, 1e-9)})
            history.append(row)
            snapshot(epoch)
            if main:
                _append_logs(out, history)
            if progress:
                _say(f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_acc']:.2f}%"
                     f"  test acc {row['test_acc']:.2f}%  {row['samples_per_s']:.0f} samples/s"
                     f"  {row['images_per_s']:.0f} images/s"
                     + (f"  skipped {skipped} non-finite steps" if skipped else ""))
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else 0
        if main:
            _say(f"\ninterrupted: checkpoint of epoch {done} is in {ckpt_path}; "
                 f"continue with: tcl-fast train --resume {out}")
        return RunResult(out, done, history, None, interrupted=True)

    # The last epoch's evaluation is already the final model's table.
    latency = ev if epoch > start_epoch else evaluate()
    latency.update({"label": cfg.label(), "config": cfg.to_dict(), "epochs_done": epoch,
                    "chance_accuracy": 100.0 / bundle.num_classes})
    if main:
        write_json(latency, os.path.join(out, LATENCY_JSON))
        curve = latency_rows(latency)
        plot_latency([(cfg.label(), curve)], os.path.join(out, LATENCY_PNG),
                     title=f"{cfg.dataset} / {cfg.model} / {cfg.loss}", chance=latency["chance_accuracy"])
        print(format_table([(cfg.label(), curve)], cfg.T))
        print(f"wrote {out}{os.sep}: {CONFIG_NAME}, {LOG_NAME}, {CSV_NAME}, {CHECKPOINT_NAME}, "
              f"{LATENCY_JSON}, {LATENCY_PNG}")
    ctx.barrier()
    return RunResult(out, epoch, history, latency, False)


def evaluate_checkpoint(checkpoint: str, *, T: int | None = None, device: str = "auto",
                        out: str | None = None, batch_size: int | None = None,
                        data_root: str | None = None, backend: str | None = None,
                        e_ac_pj: float | None = None, e_mac_pj: float | None = None,
                        cost: bool = True) -> dict:
    """Test accuracy at T' = 1..T of a saved run; writes eval_T{T}.json/.png next to it (or in ``out``).

    With ``cost`` (default) also the inference cost per T' (tcl_fast.inference_cost: firing rate
    per neuron layer, SOPs, first-layer MACs, energy with ``e_ac_pj``/``e_mac_pj`` picojoules per
    operation), in the JSON, a printed table and eval_T{T}_energy.png (accuracy vs energy).
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise UserError(f"batch-size must be an integer >= 1, got {batch_size!r}")
    path, state, cfg = load_checkpoint_and_config(checkpoint)
    if data_root is not None:
        cfg.data_root = data_root
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
    if backend is not None:
        check_backend(backend, dev)
        cfg.backend = backend
    elif cfg.backend not in LIF_BACKENDS:
        raise UserError(f"--checkpoint {path!r}: its config names an unknown backend {cfg.backend!r}")
    else:
        try:
            check_backend(cfg.backend, dev)
        except UserError:  # trained on a GPU backend, evaluated where it can't run: the maths is the same
            _say(f"note: the run used --backend {cfg.backend}, which cannot run on {dev.type} here; "
                 "evaluating with --backend auto")
            cfg.backend = "auto"
    bundle = build_data(cfg, augment=False)
    if bundle.time_steps is not None and bundle.time_steps < T:
        raise UserError(f"dataset gives {bundle.time_steps} frames but T={T}")
    model = build_for_config(cfg, bundle.num_classes, bundle.in_channels).to(dev)
    check_model_state(model, state["model"], f"--checkpoint {path!r}")
    bad = first_nonfinite(state["model"], "model")
    if bad is not None:
        raise UserError(f"--checkpoint {path!r} holds NaN/inf values in {bad}; its accuracy would mean nothing")
    model.load_state_dict(state["model"])
    loader = DataLoader(bundle.test, batch_size=batch_size or max(cfg.batch_size, 256), shuffle=False)
    counter = None
    if cost:
        counter = _cost_counter(model, (bundle.in_channels, bundle.image_size, bundle.image_size), e_ac_pj, e_mac_pj)
    result = evaluate_latency(model, loader, T, dev, _amp_dtype(cfg.amp), counter=counter)
    label = TrainConfig.from_dict(state["config"]).label()
    result.update({"label": label, "checkpoint": path, "epoch": int(state["epoch"]),
                   "config": state["config"], "chance_accuracy": 100.0 / bundle.num_classes})
    out = out or os.path.dirname(path)
    os.makedirs(out, exist_ok=True)
    json_path, png_path = os.path.join(out, f"eval_T{T}.json"), os.path.join(out, f"eval_T{T}.png")
    write_json(result, json_path)
    plot_latency([(label, latency_rows(result))], png_path, chance=result["chance_accuracy"])
    print(format_table([(label, latency_rows(result))], T))
    written = [json_path, png_path]
    if "cost" in result:
        from tcl_fast.inference_cost import format_cost_table, plot_accuracy_vs_energy

        energy_png = os.path.join(out, f"eval_T{T}_energy.png")
        plot_accuracy_vs_energy([(label, latency_rows(result), result["cost"])], energy_png)
        print()
        print(format_cost_table(latency_rows(result), result["cost"]))
        written.append(energy_png)
    print(f"wrote {', '.join(written)}")
    return result


def _cost_counter(model, input_shape, e_ac_pj, e_mac_pj):
    """The CostCounter for ``tcl-fast eval``, or None (with a note) where the model has no NIR graph."""
    from tcl_fast.defaults import E_AC_PJ, E_MAC_PJ
    from tcl_fast.inference_cost import CostCounter, EnergyModel
    from tcl_fast.nir_exchange import NIRExportError

    try:
        energy = EnergyModel(e_ac=(E_AC_PJ if e_ac_pj is None else e_ac_pj) * 1e-12,
                             e_mac=(E_MAC_PJ if e_mac_pj is None else e_mac_pj) * 1e-12)
    except ValueError as exc:
        raise UserError(str(exc).replace("e_ac", "--e-ac").replace("e_mac", "--e-mac")
                        .replace("joules", "picojoules")) from None
    try:
        return CostCounter(model, input_shape, energy)
    except NIRExportError as exc:
        _say(f"note: no inference cost for this model ({exc})")
        return None


def load_run(run_dir: str) -> tuple[str, dict]:
    """Label and latency result of a finished run folder (or an eval JSON file)."""
    if os.path.isfile(run_dir) and run_dir.endswith(".json"):
        path = run_dir
    else:
        path = os.path.join(run_dir, LATENCY_JSON)
    if not os.path.isfile(path):
        raise UserError(f"{run_dir!r} has no {LATENCY_JSON} (is it a finished tcl-fast run?)")
    try:
        with open(path) as f:
            result = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path!r} is not valid JSON ({exc}); is the run finished and the file intact?") from None
    try:
        if not latency_rows(result):
            raise ValueError("no accuracies")
    except (TypeError, ValueError, KeyError, AttributeError):
        raise UserError(f"{path!r} is not a tcl-fast latency result (no accuracy per T')") from None
    label = result.get("label") or os.path.basename(os.path.normpath(run_dir))
    return label, result


def default_comparison_path(run_dirs: list[str]) -> str:
    """Where ``compare`` puts its plot without ``--out``: beside the first run folder
    (``runs/ce runs/tcl`` -> ``runs/comparison.png``), not in the current directory."""
    first = os.path.normpath(run_dirs[0] if os.path.isdir(run_dirs[0]) else os.path.dirname(run_dirs[0]) or ".")
    return os.path.join(os.path.dirname(os.path.abspath(first) if first in (".", "..") else first), "comparison.png")


def compare_runs(run_dirs: list[str], *, out: str | None = None, json_out: str | None = None) -> str:
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
    out = out or default_comparison_path(run_dirs)
    chances = [r["chance_accuracy"] for _, _, r in loaded if "chance_accuracy" in r]
    plot_latency(rows, out, chance=min(chances) if len(chances) == len(loaded) else None)
    written = [out]
    costed = [(label, rows_, cost) for (label, rows_), (d, _, result) in zip(rows, loaded)
              if (cost := _inference_cost_of(d, result)) is not None]
    if costed:  # accuracy vs energy, one point per T', for the runs evaluated with their cost
        from tcl_fast.inference_cost import plot_accuracy_vs_energy

        energy_png = os.path.splitext(out)[0] + "_energy.png"
        plot_accuracy_vs_energy(costed, energy_png)
        written.append(energy_png)
        missing = [label for label, _ in rows if label not in {c[0] for c in costed}]
        if missing:
            print(f"note: no inference cost for {', '.join(missing)} (run tcl-fast eval on them first)")
    if json_out:
        write_json({label: {str(t): a for t, a in r.items()} for label, r in rows}, json_out)
        written.append(json_out)
    print(f"wrote {', '.join(written)}")
    return table


def _inference_cost_of(run: str, result: dict) -> dict | None:
    """The inference cost of a compared run: in its JSON, or else in the run folder's
    eval_T<T>.json with the most steps that has one (written by tcl-fast eval)."""
    if isinstance(result.get("cost"), dict):
        return result["cost"]
    if not os.path.isdir(run):
        return None
    found = []
    for name in os.listdir(run):
        m = re.fullmatch(r"eval_T(\d+)\.json", name)
        if m:
            found.append((int(m.group(1)), os.path.join(run, name)))
    for _, path in sorted(found, reverse=True):
        try:
            with open(path) as f:
                cost = json.load(f).get("cost")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(cost, dict):
            return cost
    return None

