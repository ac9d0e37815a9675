"""``tcl-fast export``: a run folder's model as a NIR graph (tcl_fast.nir_exchange)."""
from __future__ import annotations

import os

import numpy as np
import torch

from tcl_fast.training.checkpoint import first_nonfinite
from tcl_fast.training.config import TrainConfig, UserError


def load_trained_model(checkpoint: str) -> tuple[torch.nn.Module, TrainConfig, tuple[int, int, int], dict]:
    """The run's model in eval mode on the CPU, its config, one step's input shape
    ``(C, H, W)`` and the checkpoint (no dataset files are read)."""
    from tcl_fast.data import dataset_shape
    from tcl_fast.models import build_model
    from tcl_fast.training.trainer import check_model_state, load_checkpoint_and_config

    path, state, cfg = load_checkpoint_and_config(checkpoint)
    num_classes, channels, size = dataset_shape(cfg.dataset)
    model = build_model(cfg.model, num_classes, channels, proj_dim=cfg.proj_dim, lif_backend="auto")
    check_model_state(model, state["model"], f"--checkpoint {path!r}")
    bad = first_nonfinite(state["model"], "model")
    if bad is not None:
        raise UserError(f"--checkpoint {path!r} holds NaN/inf values in {bad}; nothing to export")
    model.load_state_dict(state["model"])
    return model.eval(), cfg, (channels, size, size), {**state, "path": path}


def export_checkpoint(checkpoint: str, out: str, *, dt: float | None = None, pooling: str = "avg",
                      dtype: str = "float32") -> str:
    """Write the run's inference network (no projection head) to ``out`` as a .nir file."""
    import nir

    from tcl_fast.nir_exchange import DEFAULT_DT, NIRExportError, to_nir

    if dtype not in ("float32", "float64"):
        raise UserError(f"--dtype must be float32 or float64, got {dtype!r}")
    model, cfg, shape, state = load_trained_model(checkpoint)
    try:
        graph = to_nir(model, shape, dt=DEFAULT_DT if dt is None else dt, pooling=pooling, dtype=np.dtype(dtype),
                       metadata={"label": cfg.label(), "T": cfg.T, "epoch": int(state["epoch"])})
    except (NIRExportError, ValueError) as exc:
        raise UserError(f"cannot export {state['path']!r}: {exc}") from None
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}"
    try:
        nir.write(tmp, graph)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    neurons = sum(isinstance(n, (nir.LIF, nir.IF)) for n in graph.nodes.values())
    print(f"exported {cfg.label()} (epoch {state['epoch']}): {len(graph.nodes)} NIR nodes, {neurons} neuron "
          f"layers, input {shape} per step, dt = {graph.metadata['dt']} s; projection head left out")
    print(f"wrote {out}")
    return out
