"""Atomic checkpoints and RNG-state capture for exact resumption."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict:
    """Python/NumPy/torch RNG states as tensors and plain lists (loadable with weights_only=True)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path: str) -> str:
    """Write to a temp file in the same folder, fsync, then os.replace: a crash at
    any point leaves either the previous complete checkpoint or the new one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _fsync_dir(folder: str) -> None:
    # Make the rename itself durable (POSIX); some systems can't open a folder for this.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve_checkpoint(path: str) -> str:
    """Accept a checkpoint file or a run folder containing one."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path!r} is not a readable tcl_fast checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path!r} is not a tcl_fast checkpoint (no config/model entries)")
    return state
