"""Multi-process (torchrun) building blocks for TCL / STCL training.

Launch with ``torchrun --nproc_per_node=N ...``; each process calls
``init_distributed`` once, wraps its model with ``wrap_model`` and, before the
contrastive loss, widens its local batch to the global one with
``gather_for_contrast``. Without torchrun's environment everything here is a
cheap no-op, so the same code runs single-process.

Gradient convention (``all_gather_with_grad``)
----------------------------------------------
Every rank gathers the features of all ranks and computes the *same* global
loss ``L`` over the whole gathered batch. Rank r's backward therefore already
holds the full ``dL/dx_q`` for every shard q, and in particular the correct
``dL/dx_r`` for its own shard. DDP then *averages* parameter gradients over
the W ranks, which would give ``dL/dθ / W`` if we only took the local slice.
The backward here sum-reduces the incoming gradient over ranks before taking
the local slice (the usual "GatherLayer"), so rank r sends ``W * dL/dx_r``
into its model and DDP's average restores exactly ``dL/dθ``: a W-rank step
has the parameter gradients of one process on the concatenated batch.

More generally the effective objective is the mean over ranks of each rank's
own loss; the sum-reduce also delivers gradients correctly when ranks compute
different losses (e.g. only their local anchors against the global batch).
Terms computed on the local batch only (cross-entropy) are averaged by DDP as
usual, which equals the global mean when all ranks hold equally many samples.
BatchNorm statistics stay per-rank unless ``wrap_model(..., sync_bn=True)``.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistContext",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "build_sampler",
    "cleanup",
    "gather_for_contrast",
    "init_distributed",
    "reduce_metrics",
    "unwrap",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``backend`` is None when single-process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def cleanup(self) -> None:
        cleanup()


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"environment variable {name} must be set when WORLD_SIZE > 1 "
                             "(launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def _resolve_device(device_arg: str | torch.device | None) -> torch.device:
    if device_arg is None or device_arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device_arg, (str, torch.device)):
        raise TypeError(f"device_arg must be a str, torch.device or None, "
                        f"got {type(device_arg).__name__}")
    try:
        device = torch.device(device_arg)
    except RuntimeError as exc:
        raise ValueError(f"device_arg {device_arg!r} is not a valid device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device_arg {device_arg!r} requested but CUDA is not available")
    return device


def init_distributed(
    device_arg: str | torch.device | None = None,
    *,
    timeout: datetime.timedelta | None = None,
    env: Mapping[str, str] | None = None,
) -> DistContext:
    """Read torchrun's environment and join the process group if WORLD_SIZE > 1.

    ``device_arg``: None/"auto" (CUDA if available, else CPU), "cpu", "cuda"
    or "cuda:N". With several processes on CUDA each one uses
    ``cuda:LOCAL_RANK`` and NCCL; on CPU they use gloo. A fixed "cuda:N" that
    differs from ``cuda:LOCAL_RANK`` is refused rather than silently ignored.
    ``env`` defaults to ``os.environ`` (tests pass their own). Safe to call
    again in a process whose group is already initialised with the same layout.
    """
    if env is None:
        env = os.environ
    world_size = _env_int(env, "WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    device = _resolve_device(device_arg)

    if world_size == 1:
        # Single process (plain `python ...` or torchrun with one process): no group needed.
        return DistContext(device=device)

    rank = _env_int(env, "RANK", None)
    local_rank = _env_int(env, "LOCAL_RANK", None)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ValueError(f"environment variable {name} must be set when WORLD_SIZE > 1 "
                             "(launch with torchrun)")

    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise ValueError(
                f"device_arg {device_arg!r} names a fixed GPU, but with WORLD_SIZE > 1 each "
                f"process uses cuda:LOCAL_RANK (cuda:{local_rank} here); pass 'cuda' or 'auto'"
            )
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise ValueError(f"LOCAL_RANK={local_rank} but only {n_gpus} CUDA device(s) are "
                             "visible; use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"device_arg {device_arg!r}: multi-process training supports only "
                         "cpu (gloo) and cuda (nccl)")

    if dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"a process group is already initialised as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but the environment says {rank} of {world_size}"
            )
        backend = dist.get_backend()
    else:
        # env:// (not tcp://) so torchrun's agent-hosted store is reused; it reads
        # os.environ, so a caller-supplied env must be copied there first.
        if env is not os.environ:
            os.environ["MASTER_ADDR"] = env["MASTER_ADDR"]
            os.environ["MASTER_PORT"] = env["MASTER_PORT"]
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend, init_method="env://", rank=rank,
                                world_size=world_size, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank,
                       device=device, backend=backend)


def cleanup() -> None:
    """Leave the process group if one is initialised (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world(group=None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _gather_shapes(x: torch.Tensor, group) -> list[list[int]]:
    """Every rank's shape of ``x`` (batch dim first); all ranks must agree on the rest."""
    world = dist.get_world_size(group)
    shape = torch.tensor([x.dim(), *x.shape], dtype=torch.long, device=x.device)
    out = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(out, shape, group=group)
    shapes = [s.tolist()[1:] for s in out]
    # Checked on every rank from the same data, so all ranks raise together (no hang).
    # (A different number of dims cannot be caught: the shape buffers would differ.)
    if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
        raise ValueError(f"all ranks must gather tensors that differ only in the gathered "
                         f"dim, got shapes {shapes} (gathered dim first)")
    return shapes


def _gather_padded(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """All-gather ``x`` (gathered dim first, contiguous) whose dim-0 sizes are ``sizes``."""
    n, longest = x.shape[0], max(sizes)
    if n < longest:
        # all_gather needs equal shapes: pad the short shards, trim after.
        x = torch.cat([x, x.new_zeros((longest - n, *x.shape[1:]))], dim=0)
    bufs = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(bufs, x, group=group)
    return torch.cat([b[:s] for b, s in zip(bufs, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
        x = tensor.movedim(dim, 0).contiguous()
        sizes = [s[0] for s in _gather_shapes(x, group)]
        rank = dist.get_rank(group)
        ctx.dim, ctx.group = dim, group
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return _gather_padded(x, sizes, group).movedim(0, dim)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # A contiguous private copy: all_reduce works in place.
        g = grad_output.movedim(ctx.dim, 0).clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g[ctx.start:ctx.stop].movedim(0, ctx.dim), None, None


def _check_dim(tensor: torch.Tensor, dim) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if tensor.dim() == 0:
        raise ValueError("tensor must have at least one dimension to gather along")
    if not -tensor.dim() <= dim < tensor.dim():
        raise ValueError(f"dim must be in [{-tensor.dim()}, {tensor.dim()}) for a "
                         f"{tensor.dim()}-D tensor, got {dim}")
    return dim % tensor.dim()


def all_gather_with_grad(tensor: torch.Tensor, dim: int = 0, group=None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` in rank order, differentiably.

    Shards may differ in size along ``dim`` (e.g. a short last batch); all
    other dims must match. The backward sum-reduces the gradient over ranks
    and returns this rank's slice; see the module docstring for why that makes
    DDP's averaged gradients equal the single-process ones. With no process
    group (or one rank) this returns ``tensor`` itself.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    dim = _check_dim(tensor, dim)
    if _world(group) == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, dim, group)


def all_gather_no_grad(tensor: torch.Tensor, dim: int = 0, group=None) -> torch.Tensor:
    """Like ``all_gather_with_grad`` but detached (labels, indices, metrics)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    dim = _check_dim(tensor, dim)
    if _world(group) == 1:
        return tensor.detach()
    with torch.no_grad():
        x = tensor.detach().movedim(dim, 0).contiguous()
        sizes = [s[0] for s in _gather_shapes(x, group)]
        return _gather_padded(x, sizes, group).movedim(0, dim)


def gather_for_contrast(
    features: torch.Tensor,
    labels: torch.Tensor,
    local_only: bool = False,
    group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Widen per-rank ``features [T, B, D]`` / ``labels [B]`` to the global batch.

    Returns ``features [T, B_global, D]`` (differentiable, see
    ``all_gather_with_grad``) and ``labels [B_global]`` (no grad), both in
    rank order so sample i keeps its label. For STCL gather both views with the
    same call, e.g. ``torch.cat([fa, fb], 0)`` then split along T, or call this
    once per view (the order is the same). ``local_only=True`` returns the
    inputs unchanged: every rank contrasts only its own samples.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if not isinstance(local_only, bool):
        raise TypeError(f"local_only must be a bool, got {type(local_only).__name__}")
    if features.dim() != 3:
        raise ValueError(f"features must be 3-D [T, B, D], got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[1]:
        raise ValueError(f"labels must be 1-D with B = features.shape[1] = {features.shape[1]} "
                         f"entries, got shape {tuple(labels.shape)}")
    if labels.device != features.device:
        raise ValueError(f"labels are on {labels.device} but features are on {features.device}")
    if local_only or _world(group) == 1:
        return features, labels
    return (all_gather_with_grad(features, dim=1, group=group),
            all_gather_no_grad(labels, dim=0, group=group))


def reduce_metrics(
    metrics: Mapping[str, float | int | torch.Tensor],
    ctx: DistContext | None = None,
    op: str = "sum",
) -> dict[str, float | int]:
    """Sum (``op="sum"``) or average (``op="mean"``) scalar metrics over ranks.

    Meant for per-epoch counts and sums (correct, total, loss * batch), which
    are summed and then divided on the caller's side. Every rank must pass the
    same keys (checked; all ranks raise together). Sums of ints stay ints
    (exact below 2**53). Values may be Python numbers or one-element tensors.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name -> number, got {type(metrics).__name__}")
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    if ctx is not None and not isinstance(ctx, DistContext):
        raise TypeError(f"ctx must be a DistContext or None, got {type(ctx).__name__}")
    keys = sorted(metrics)
    values: list[float] = []
    is_int: list[bool] = []
    for k in keys:
        v = metrics[k]
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"metrics[{k!r}] must be a scalar, got a tensor of shape "
                                 f"{tuple(v.shape)}")
            is_int.append(not (v.is_floating_point() or v.is_complex()) and v.dtype != torch.bool)
            v = v.item()
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"metrics[{k!r}] must be an int, float or scalar tensor, "
                            f"got {type(v).__name__}")
        else:
            is_int.append(isinstance(v, int))
        values.append(float(v))

    world = _world() if ctx is None else ctx.world_size
    if world > 1:
        all_keys: list = [None] * world
        dist.all_gather_object(all_keys, keys)
        if any(k != keys for k in all_keys):
            raise ValueError(f"reduce_metrics needs the same keys on every rank, got {all_keys}")
        if ctx is not None:
            device = ctx.device
        elif dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        # float64 keeps integer counts exact; NCCL needs the buffer on the GPU.
        buf = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        values = buf.tolist()
    out: dict[str, float | int] = {}
    for k, v, integral in zip(keys, values, is_int):
        if op == "mean":
            out[k] = v / world
        else:
            out[k] = int(round(v)) if integral else v
    return out


def wrap_model(model: nn.Module, ctx: DistContext, *, sync_bn: bool = False,
               **ddp_kwargs) -> nn.Module:
    """DDP-wrap ``model`` (already on ``ctx.device``) when distributed; else return it.

    ``sync_bn=True`` converts BatchNorm layers to SyncBatchNorm so batch
    statistics span all ranks (closer to single-process training, costs a
    collective per BN layer); CUDA only. Use ``unwrap(model)`` for checkpoints.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(ctx, DistContext):
        raise TypeError(f"ctx must be a DistContext, got {type(ctx).__name__}")
    if not isinstance(sync_bn, bool):
        raise TypeError(f"sync_bn must be a bool, got {type(sync_bn).__name__}")
    if not ctx.distributed:
        return model
    if sync_bn and ctx.device.type != "cuda":
        # DDP refuses SyncBatchNorm on CPU modules; fail before touching the model.
        raise ValueError("sync_bn=True needs CUDA (SyncBatchNorm is GPU-only); "
                         f"this process runs on {ctx.device}")
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for state_dict / checkpoints), else ``model``."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_sampler(dataset, ctx: DistContext, *, shuffle: bool, seed: int = 0,
                  drop_last: bool = False):
    """A DistributedSampler splitting ``dataset`` across ranks, or None single-process.

    Pass it as ``DataLoader(..., sampler=s, shuffle=False)`` and call
    ``s.set_epoch(epoch)`` each epoch so ranks reshuffle consistently.
    """
    if not isinstance(ctx, DistContext):
        raise TypeError(f"ctx must be a DistContext, got {type(ctx).__name__}")
    if not ctx.distributed:
        return None
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                              shuffle=shuffle, seed=seed, drop_last=drop_last)
