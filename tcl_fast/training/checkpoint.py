"""Atomic, hashed checkpoints, RNG-state capture for exact resumption, and the run-folder lock."""
from __future__ import annotations

import hashlib
import os
import random
import re
import warnings

import numpy as np
import torch

from tcl_fast.training.run_folder import (  # noqa: F401  (re-exported: their home is run_folder)
    CHECKPOINT_NAME, LOCK_NAME, RunFolderBusy, RunLock, resolve_checkpoint)

HASH_KEY = "content_sha256"


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


def _digest(obj, h) -> None:
    """Feed a canonical encoding of a checkpoint's contents (tensors by their bytes) to ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _digest(k, h)
            _digest(v, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:  # str, int, float, bool, None: repr is exact for each (floats round-trip)
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_hash(state: dict) -> str:
    """SHA-256 of everything in ``state`` except the stored hash itself."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != HASH_KEY}, h)
    return h.hexdigest()


def save_checkpoint(state: dict, path: str) -> str:
    """Write to a temp file in the same folder, fsync, then os.replace: a crash at
    any point leaves either the previous complete checkpoint or the new one.

    The checkpoint carries the SHA-256 of its contents, which every load checks:
    torch's zip records have no checksum of their own, so a flipped byte inside a
    tensor would otherwise load as a wrong weight.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {**state, HASH_KEY: content_hash(state)}
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


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load and verify a checkpoint; ValueError names what is wrong with the file."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"{path!r} is not a readable tcl_fast checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path!r} is not a tcl_fast checkpoint (no config/model entries)")
    stored = state.get(HASH_KEY)
    if stored is None:
        warnings.warn(f"checkpoint {path!r} has no content hash (written by an older tcl_fast); "
                      "it is loaded without an integrity check", UserWarning, stacklevel=2)
    elif stored != content_hash(state):
        raise ValueError(f"{path!r} is corrupt: its contents do not match the SHA-256 stored when it was "
                         "written (damaged on disk or in transfer); nothing was loaded")
    problems = []
    if not isinstance(state["config"], dict):
        problems.append(f"config is a {type(state['config']).__name__}, not a dict")
    if not isinstance(state["model"], dict):
        problems.append(f"model is a {type(state['model']).__name__}, not a dict")
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        problems.append("no epoch" if epoch is None else f"epoch is {epoch!r}")
    if problems:
        raise ValueError(f"{path!r} is not a valid tcl_fast checkpoint ({'; '.join(problems)})")
    return state


def first_nonfinite(tree, prefix: str = "") -> str | None:
    """Name of the first floating-point tensor in ``tree`` holding NaN or inf (None if none)."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            return prefix or "tensor"
        return None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in items:
        bad = first_nonfinite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


_TMP_SUFFIX = re.compile(r"\.tmp\.(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete ``<file>.tmp.<pid>`` left by a save that was killed (its PID no longer runs)."""
    removed = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _TMP_SUFFIX.search(name)
        if m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed
