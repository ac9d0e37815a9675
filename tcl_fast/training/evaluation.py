"""Low-latency evaluation: test accuracy at every T' = 1..T, as a table, JSON and plot."""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from tcl_fast._plot import new_axes, save_figure


def to_time_first(x: torch.Tensor) -> torch.Tensor:
    """Event batches come as [B, frames, C, H, W]; models want [T, B, C, H, W]."""
    return x.transpose(0, 1) if x.dim() == 5 else x


@torch.no_grad()
def evaluate_latency(model: torch.nn.Module, loader: DataLoader, T: int, device: torch.device,
                     amp_dtype: torch.dtype | None = None, limit_batches: int | None = None,
                     ctx=None, counter=None) -> dict:
    """Accuracy of the running mean of logits after t = 1..T steps.

    One forward with T steps suffices: every layer is causal in time (LIF) or
    per-step (Conv/BN in eval mode/Linear), so the first t steps' logits are
    exactly those of a T' = t run. ``tests/training`` checks this equivalence.
    With a distributed ``ctx`` each rank evaluates its shard of ``loader`` and the
    counts are summed over ranks, so every rank returns the global result.
    A ``counter`` (tcl_fast.inference_cost.CostCounter) also counts spikes and
    synaptic operations at every step; the result then has ``"cost"`` per T'.
    """
    if counter is not None:
        if ctx is not None and ctx.distributed:
            raise ValueError("inference cost counting runs in one process (tcl-fast eval), not under torchrun")
        counter.reset()
        with counter.attached(model):
            result = evaluate_latency(model, loader, T, device, amp_dtype, limit_batches)
        result["cost"] = counter.summary()
        return result
    model.eval()
    correct = torch.zeros(T, dtype=torch.long)
    loss_sum, total = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if limit_batches is not None and i >= limit_batches:
            break
        x, y = to_time_first(x.to(device)), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x, T=T).logits.float()  # [T, B, K]
        steps = torch.arange(1, T + 1, device=device, dtype=logits.dtype).view(T, 1, 1)
        running = logits.cumsum(0) / steps
        correct += (running.argmax(-1) == y.unsqueeze(0)).sum(1).cpu()
        loss_sum += torch.nn.functional.cross_entropy(running[-1], y, reduction="sum").item()
        total += y.numel()
    if ctx is not None and ctx.distributed:
        import torch.distributed as dist

        # float64 keeps the counts exact; NCCL needs the buffer on the GPU.
        buf = torch.tensor([*correct.tolist(), loss_sum, total], dtype=torch.float64, device=ctx.device)
        dist.all_reduce(buf)
        vals = buf.cpu().tolist()
        correct = torch.tensor([round(v) for v in vals[:T]], dtype=torch.long)
        loss_sum, total = vals[T], round(vals[T + 1])
    if total == 0:
        raise ValueError("the evaluation set is empty")
    acc = (correct.double() / total * 100).tolist()
    return {"T": T, "samples": total, "accuracy": {str(t + 1): acc[t] for t in range(T)},
            "loss": loss_sum / total}


def format_table(rows: Sequence[tuple[str, dict[int, float] | dict[int, str]]], T: int,
                 title: str = "test accuracy (%) at T'") -> str:
    """Markdown table: one row per run, one column per T'."""
    name_w = max([len("run")] + [len(r[0]) for r in rows])
    cols = [f"T'={t}" for t in range(1, T + 1)]
    widths = [max(len(c), 6) for c in cols]
    header = "| " + "run".ljust(name_w) + " | " + " | ".join(c.rjust(w) for c, w in zip(cols, widths)) + " |"
    sep = "|" + "-" * (name_w + 2) + "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    lines = [f"{title}", "", header, sep]
    for name, accs in rows:
        cells = []
        for t, w in zip(range(1, T + 1), widths):
            v = accs.get(t, "")
            cells.append((f"{v:.2f}" if isinstance(v, float) else str(v)).rjust(w))
        lines.append("| " + name.ljust(name_w) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_rows(result: dict) -> dict[int, float]:
    return {int(k): float(v) for k, v in result["accuracy"].items()}


def plot_latency(curves: Iterable[tuple[str, dict[int, float]]], path: str,
                 title: str = "accuracy vs inference time steps",
                 errors: dict[str, dict[int, float]] | None = None, chance: float | None = None) -> str:
    """Accuracy vs T' for one or more runs, saved as a PNG (Agg backend, no display).

    The y-axis runs from chance level (``chance``, in %, drawn as a dashed line)
    or else 0, up to 100, so that a one-point difference looks like one point.
    """
    fig, ax = new_axes()
    all_ts: set[int] = set()
    lowest: list[float] = []
    for name, accs in curves:
        all_ts.update(accs)
        lowest.extend(accs.values())
        ts = sorted(accs)
        ys = [accs[t] for t in ts]
        if errors and name in errors:
            ax.errorbar(ts, ys, yerr=[errors[name].get(t, 0.0) for t in ts], marker="o", capsize=3, label=name)
        else:
            ax.plot(ts, ys, marker="o", label=name)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:g} %)")
    floor = min(chance if chance is not None else 0.0, *lowest)  # a run below chance stays in view
    ax.set_ylim(max(0.0, floor - 3.0), 100.5)  # a little room so points on the bounds show
    ax.set_xticks(sorted(all_ts))  # T' is an integer
    ax.set_xlabel("inference time steps T'")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
