"""Mixed precision (bf16 on CPU) and torch.compile of the `small` model with each LIF backend."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tcl_fast import _extension
from tcl_fast.cli import main
from tcl_fast.losses import tcl_loss
from tcl_fast.models import build_model
from tcl_fast.nn import LIFMultiStep
from tcl_fast.training.objectives import build_objective
from tcl_fast.training.checkpoint import load_checkpoint

needs_cpp = pytest.mark.skipif(not _extension.has_cpp(), reason="C++ extension not built")


def _batch(b=8, T=4):
    g = torch.Generator().manual_seed(0)
    return torch.rand(T, b, 1, 8, 8, generator=g) * 3, torch.arange(b) % 4


@needs_cpp
def test_bf16_autocast_forward_backward_small_model_cpp_lif():
    torch.manual_seed(0)
    model = build_model("small", 10, 1, proj_dim=16, lif_backend="cpp")
    lif_in = []
    for m in model.modules():
        if isinstance(m, LIFMultiStep):
            m.register_forward_hook(lambda mod, args, out: lif_in.append((args[0].dtype, out.dtype)))
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, T=4)
        loss, parts = build_objective("tcl", lam=0.5, temperature=0.5)(out, y)
    # bf16 convs feed the LIF op bf16, and it answers in bf16.
    assert lif_in == [(torch.bfloat16, torch.bfloat16)] * 3
    assert out.features.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_contrastive_loss_takes_bf16_and_accumulates_in_float32():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(4, 16, 32, generator=g).bfloat16().requires_grad_()
    y = torch.arange(16) % 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = tcl_loss(f, y, temperature=0.5)
    ref = tcl_loss(f.detach().float(), y, temperature=0.5)
    assert low.dtype == torch.float32
    # Same bf16 inputs, float32 sums: agrees with the float32 loss far below bf16's 2**-8.
    torch.testing.assert_close(low, ref, rtol=1e-5, atol=1e-5)
    low.backward()
    assert f.grad.dtype == torch.bfloat16 and torch.isfinite(f.grad.float()).all()


@needs_cpp
def test_short_training_run_with_amp_bf16(tmp_path):
    out = str(tmp_path / "bf16")
    # T=2: evaluating the 450 test digits under CPU bfloat16 autocast is most of this run's time.
    assert main(["train", "--out", out, "--epochs", "2", "--amp", "bf16", "--limit-batches", "3", "--T", "2",
                 "--batch-size", "16", "--no-progress", "--backend", "cpp", "--device", "cpu"]) == 0
    with open(os.path.join(out, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("train_loss", "train_ce", "train_tcl", "test_loss"):
            assert r[k] == r[k] and abs(r[k]) < 1e6, (k, r[k])
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 2 and ckpt["config"]["amp"] == "bf16"
    # Autocast leaves the master weights in float32.
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values())


def _backends():
    out = [pytest.param("torch", id="torch"), pytest.param("cpp", id="cpp", marks=needs_cpp)]
    out.append(pytest.param("triton", id="triton", marks=pytest.mark.skipif(
        not _extension.has_triton(), reason="triton not usable here")))
    return out


@pytest.mark.parametrize("backend", _backends())
def test_compile_fullgraph_small_model(backend):
    torch.manual_seed(0)
    model = build_model("small", 10, 1, proj_dim=8, width=4, lif_backend=backend)
    x, _ = _batch(b=2, T=2)
    eager = model(x, T=2)
    (eager.logits.sum() + eager.features.sum()).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    # fullgraph=True: any graph break raises instead of silently splitting the graph.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got = compiled(x, T=2)
    (got.logits.sum() + got.features.sum()).backward()
    torch.testing.assert_close(got.logits, eager.logits, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)
