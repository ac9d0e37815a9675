"""tcl_fast.training.distributed on CPU: 2 gloo processes on 127.0.0.1 vs one process.

The parent launches this file as a script twice with torchrun's environment
(tests/rank_launch.py: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, and a
rendezvous store the parent hosts, as torchrun's agent does); each worker runs every
scenario once and saves its results, and the tests below compare them with a
single-process computation done here. One launch serves all tests, bounded by
a timeout, and the workers are killed if they overrun.
"""
from __future__ import annotations

import datetime
import sys
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

from rank_launch import cpu_gloo_env, launch_ranks
from tcl_fast.training.distributed import (
    DistContext,
    all_gather_with_grad,
    build_sampler,
    gather_for_contrast,
    init_distributed,
    reduce_metrics,
    unwrap,
    wrap_model,
)

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
LAUNCH_TIMEOUT_S = 50
T, D_IN, D_OUT = 3, 6, 5
# Shards of the global batch per scenario; the labels put every class on both ranks.
EQUAL = ((0, 3), (3, 6))
UNEQUAL = ((0, 3), (3, 5))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def _contrast_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The library's tcl_loss, imported unconditionally in the workers and the
    reference alike: a tcl_fast.losses that does not import fails the test."""
    from tcl_fast.losses import tcl_loss

    return tcl_loss(features, labels, temperature=0.1)


def _naive_tcl_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The TCL formula over the full [T*B, T*B] matrix, written out here."""
    t, b, d = features.shape
    z = nn.functional.normalize(features.reshape(t * b, d), dim=1)
    y = labels.repeat(t)
    logits = z @ z.T / 0.1
    eye = torch.eye(t * b, dtype=torch.bool)
    pos = (y[:, None] == y[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), 1, keepdim=True)
    per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1) / pos.sum(1)
    return per_anchor[pos.any(1)].mean()


def test_contrast_loss_is_the_tcl_formula():
    # What the distributed tests compare is the real loss, and it is TCL's.
    x, y = _make_batch(6)
    feats = _make_model()(x)
    torch.testing.assert_close(_contrast_loss(feats, y), _naive_tcl_loss(feats, y), rtol=1e-10, atol=1e-12)


def _make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, D_OUT)).double()


def _make_batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(T, b, D_IN, generator=gen, dtype=torch.float64), LABELS[:b].clone()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in unwrap(model).named_parameters()}


# ----------------------------------------------------------------------------- worker side


def _ddp_step(ctx: DistContext, shards) -> dict:
    """One DDP step on this rank's shard with the gathered (global) TCL loss."""
    start, stop = shards[ctx.rank]
    x, y = _make_batch(shards[-1][1])
    model = wrap_model(_make_model(), ctx)
    feats, labels = gather_for_contrast(model(x[:, start:stop]), y[start:stop])
    loss = _contrast_loss(feats, labels)
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model), "labels": labels,
            "gathered_shape": tuple(feats.shape), "is_ddp": model is not unwrap(model)}


def _small_model() -> nn.Module:
    """The real `small` SNN in float64 with eval-mode BN (per-sample maths, so shards can't diverge)."""
    from tcl_fast.models import build_model

    torch.manual_seed(0)
    return build_model("small", 3, 1, proj_dim=8, width=4).double().eval()


def _digits_batch(b: int, view: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2 + view)
    return torch.rand(T, b, 1, 8, 8, generator=gen, dtype=torch.float64) * 3


def _objective_step(model, name: str, x, xb, y) -> torch.Tensor:
    from tcl_fast.models import SNNOutput
    from tcl_fast.training.objectives import build_objective

    # The trainer hands the objective the global gather (global negatives).
    obj = build_objective(name, lam=0.5, temperature=0.5, ce_mode="tet", gather=gather_for_contrast)
    if name == "stcl":
        out = model(torch.cat([x, xb], 1), T=T)
        b = x.shape[1]
        a_out = SNNOutput(out.logits[:, :b], out.features[:, :b])
        b_out = SNNOutput(out.logits[:, b:], out.features[:, b:])
        loss, _ = obj((a_out, b_out), y)
    else:
        loss, _ = obj(model(x, T=T), y)
    loss.backward()
    return loss.detach()


def _ddp_objective(ctx: DistContext, name: str) -> dict:
    start, stop = EQUAL[ctx.rank]
    x, xb, y = _digits_batch(6), _digits_batch(6, 1), LABELS
    model = wrap_model(_small_model(), ctx)
    loss = _objective_step(model, name, x[:, start:stop], xb[:, start:stop], y[start:stop])
    return {"loss": loss, "grads": _grads(model)}


def _worker_main(out_dir: str) -> None:
    ctx = init_distributed("cpu", timeout=datetime.timedelta(seconds=30))
    res: dict = {"ctx": (ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device),
                         ctx.is_main, ctx.backend, ctx.distributed)}
    r = ctx.rank

    res["ddp_equal"] = _ddp_step(ctx, EQUAL)
    res["ddp_unequal"] = _ddp_step(ctx, UNEQUAL)
    res["objective_tcl"] = _ddp_objective(ctx, "tcl")
    res["objective_stcl"] = _ddp_objective(ctx, "stcl")

    # Direct gathers with shards of 3 and 2 rows. Each rank weights the gathered
    # tensor differently, so a rank's grad needs the other rank's weights too.
    n = (3, 2)[r]
    x = (torch.arange(n * 4, dtype=torch.float64).reshape(n, 4) + 100 * r).requires_grad_()
    w = torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4) * (r + 1)
    out = all_gather_with_grad(x, dim=0)
    (out * w).sum().backward()
    res["gather_dim0"] = {"out": out.detach(), "grad": x.grad.clone()}

    f = (torch.arange(2 * n * 3, dtype=torch.float64).reshape(2, n, 3) + 100 * r).requires_grad_()
    y = torch.arange(n) + 10 * r
    wf = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(2, 5, 3) * (r + 1)
    gf, gy = gather_for_contrast(f, y)
    (gf * wf).sum().backward()
    res["gather_dim1"] = {"out": gf.detach(), "labels": gy, "grad": f.grad.clone(),
                          "labels_grad": gy.requires_grad}

    # An empty shard on rank 1 still takes part.
    e = torch.ones(2 - 2 * r, 3, dtype=torch.float64, requires_grad=True)
    eo = all_gather_with_grad(e)
    (eo * 3).sum().backward()
    res["gather_empty"] = {"out": eo.detach(), "grad": e.grad.clone()}

    # local_only: same features, contrast with and without the other rank.
    start, stop = EQUAL[r]
    xb, yb = _make_batch(6)
    feats, ys = _make_model()(xb[:, start:stop]).detach(), yb[start:stop]
    lf, ly = gather_for_contrast(feats, ys, local_only=True)
    gf2, gy2 = gather_for_contrast(feats, ys)
    res["local_only"] = {"same_objects": lf is feats and ly is ys,
                         "local": _contrast_loss(lf, ly), "global": _contrast_loss(gf2, gy2)}

    metrics = {"correct": r + 1, "total": 10 * (r + 1), "loss_sum": 0.25 * (r + 1),
               "t": torch.tensor(2.0 * (r + 1))}
    res["metrics_sum"] = reduce_metrics(metrics, ctx)
    res["metrics_mean"] = reduce_metrics(metrics, ctx, op="mean")
    res["metrics_ctx_none"] = reduce_metrics(metrics)
    bad = dict(metrics, extra=1.0) if r == 1 else metrics
    try:
        reduce_metrics(bad, ctx)
        res["metrics_mismatch"] = "no error"
    except ValueError as exc:
        res["metrics_mismatch"] = str(exc)

    sampler = build_sampler(list(range(10)), ctx, shuffle=False)
    res["sampler"] = list(sampler)
    ctx.barrier()
    torch.save(res, Path(out_dir) / f"rank{r}.pt")
    ctx.cleanup()


# ----------------------------------------------------------------------------- parent side


# One worker runs this module under `--dist loadgroup`, so the two-process run below starts once.
pytestmark = pytest.mark.xdist_group("test_distributed")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    ranks = launch_ranks([sys.executable, __file__, str(out_dir)], cpu_gloo_env(), WORLD, LAUNCH_TIMEOUT_S,
                         cwd=ROOT)
    for rank, r in enumerate(ranks):
        assert r.returncode == 0, f"rank {rank} exited with {r.returncode}:\n{(r.stdout + r.stderr)[-4000:]}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single_process(b: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = _make_batch(b)
    model = _make_model()
    loss = _contrast_loss(model(x), y)
    loss.backward()
    return loss.detach(), _grads(model)


def test_context_from_torchrun_env(results):
    for rank, res in enumerate(results):
        assert res["ctx"] == (rank, WORLD, rank, "cpu", rank == 0, "gloo", True)
    assert results[0]["sampler"] == [0, 2, 4, 6, 8]
    assert results[1]["sampler"] == [1, 3, 5, 7, 9]


@pytest.mark.parametrize("case, shards", [("ddp_equal", EQUAL), ("ddp_unequal", UNEQUAL)])
def test_ddp_gathered_loss_and_grads_match_single_process(results, case, shards):
    b = shards[-1][1]
    ref_loss, ref_grads = _single_process(b)
    for res in results:
        r = res[case]
        assert r["is_ddp"]
        assert r["gathered_shape"] == (T, b, D_OUT)
        assert torch.equal(r["labels"], LABELS[:b])
        torch.testing.assert_close(r["loss"], ref_loss, rtol=1e-12, atol=1e-12)
        assert r["grads"].keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            assert g.abs().max() > 1e-3  # the comparison is not vacuous
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-10, atol=1e-12,
                                       msg=lambda m, name=name: f"{case} {name}: {m}")


@pytest.mark.parametrize("name", ["tcl", "stcl"])
def test_real_objective_on_small_model_matches_single_process(results, name):
    """2 ranks x 3 samples with the global contrast = one process on all 6 (CE on local labels)."""
    model = _small_model()
    ref_loss = _objective_step(model, name, _digits_batch(6), _digits_batch(6, 1), LABELS)
    ref_grads = _grads(model)
    # The objective's CE is a per-rank mean (equal shards): the mean of the ranks' losses is the global one.
    mean_loss = sum(res[f"objective_{name}"]["loss"] for res in results) / WORLD
    torch.testing.assert_close(mean_loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert sum(g.abs().sum() for g in ref_grads.values()) > 1e-3  # not vacuous
    for res in results:
        got = res[f"objective_{name}"]["grads"]
        assert got.keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            torch.testing.assert_close(got[k], g, rtol=1e-8, atol=1e-10, msg=lambda m, k=k: f"{name} {k}: {m}")


def test_unequal_shards_gather_values_and_grads(results):
    x = [torch.arange(n * 4, dtype=torch.float64).reshape(n, 4) + 100 * r
         for r, n in enumerate((3, 2))]
    w_sum = sum(torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4) * (r + 1)
                for r in range(WORLD))
    for r, res in enumerate(results):
        got = res["gather_dim0"]
        torch.testing.assert_close(got["out"], torch.cat(x), rtol=0, atol=0)
        sl = slice(0, 3) if r == 0 else slice(3, 5)
        # Sum over ranks of d(loss_q)/d(x_r): both ranks' weights.
        torch.testing.assert_close(got["grad"], w_sum[sl], rtol=0, atol=1e-15)

    f = [torch.arange(2 * n * 3, dtype=torch.float64).reshape(2, n, 3) + 100 * r
         for r, n in enumerate((3, 2))]
    wf_sum = sum(torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(2, 5, 3) * (r + 1)
                 for r in range(WORLD))
    for r, res in enumerate(results):
        got = res["gather_dim1"]
        torch.testing.assert_close(got["out"], torch.cat(f, dim=1), rtol=0, atol=0)
        assert torch.equal(got["labels"], torch.tensor([0, 1, 2, 10, 11]))
        assert not got["labels_grad"]
        sl = slice(0, 3) if r == 0 else slice(3, 5)
        torch.testing.assert_close(got["grad"], wf_sum[:, sl], rtol=0, atol=1e-15)

    for r, res in enumerate(results):
        got = res["gather_empty"]
        torch.testing.assert_close(got["out"], torch.ones(2, 3, dtype=torch.float64))
        assert got["grad"].shape == ((2, 3) if r == 0 else (0, 3))
        torch.testing.assert_close(got["grad"], torch.full(got["grad"].shape, 6.0,
                                                           dtype=torch.float64))


def test_local_only_differs_from_global(results):
    x, y = _make_batch(6)
    model = _make_model()
    with torch.no_grad():
        full = _contrast_loss(model(x), y)
        for r, res in enumerate(results):
            lo = res["local_only"]
            assert lo["same_objects"]
            start, stop = EQUAL[r]
            shard = _contrast_loss(model(x[:, start:stop]), y[start:stop])
            torch.testing.assert_close(lo["local"], shard, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(lo["global"], full, rtol=1e-12, atol=1e-12)
            assert abs(lo["local"].item() - lo["global"].item()) > 1e-3


def test_reduce_metrics_across_ranks(results):
    for res in results:
        s = res["metrics_sum"]
        assert s == {"correct": 3, "total": 30, "loss_sum": pytest.approx(0.75), "t": 6.0}
        assert isinstance(s["correct"], int) and isinstance(s["total"], int)
        assert res["metrics_ctx_none"] == s
        assert res["metrics_mean"] == pytest.approx(
            {"correct": 1.5, "total": 15.0, "loss_sum": 0.375, "t": 3.0})
        assert "same keys" in res["metrics_mismatch"]


# ----------------------------------------------------------------------------- single process


def test_single_process_is_a_no_op():
    ctx = init_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, ctx.is_main, ctx.backend) == \
        (0, 1, 0, torch.device("cpu"), True, None)
    assert not ctx.distributed
    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x) is x
    f, y = torch.randn(2, 3, 4), torch.tensor([0, 1, 0])
    gf, gy = gather_for_contrast(f, y)
    assert gf is f and gy is y
    assert reduce_metrics({"n": 3, "s": 1.5}, ctx) == {"n": 3, "s": 1.5}
    model = nn.Linear(2, 2)
    assert wrap_model(model, ctx) is model and unwrap(model) is model
    assert build_sampler([1, 2], ctx, shuffle=True) is None
    ctx.cleanup()  # no group: must not raise


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "MASTER_ADDR"),
])
def test_init_rejects_bad_environment(env, match):
    with pytest.raises(ValueError, match=match):
        init_distributed("cpu", env=env)


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="device_arg"):
        init_distributed(3, env={})
    with pytest.raises(ValueError, match="device_arg"):
        init_distributed("gpu7", env={})
    with pytest.raises(TypeError, match="tensor"):
        all_gather_with_grad([1, 2])
    with pytest.raises(ValueError, match="dim"):
        all_gather_with_grad(torch.zeros(2, 3), dim=2)
    with pytest.raises(ValueError, match="features"):
        gather_for_contrast(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        gather_for_contrast(torch.zeros(2, 3, 4), torch.zeros(4))
    with pytest.raises(TypeError, match="local_only"):
        gather_for_contrast(torch.zeros(2, 3, 4), torch.zeros(3), local_only=1)
    with pytest.raises(ValueError, match="op"):
        reduce_metrics({"a": 1}, op="max")
    with pytest.raises(TypeError, match="metrics\\['a'\\]"):
        reduce_metrics({"a": "1"})
    with pytest.raises(ValueError, match="metrics\\['a'\\]"):
        reduce_metrics({"a": torch.ones(2)})
    fake_two_rank_cpu = DistContext(rank=0, world_size=2)  # checked before any collective
    with pytest.raises(ValueError, match="sync_bn"):
        wrap_model(nn.BatchNorm1d(2), fake_two_rank_cpu, sync_bn=True)
    with pytest.raises(TypeError, match="ctx"):
        wrap_model(nn.Linear(2, 2), None)


if __name__ == "__main__":
    try:
        _worker_main(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
