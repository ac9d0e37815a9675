"""The device guard of every Triton launch in tcl_fast.

Triton launches a kernel on the *current* CUDA device and its current stream,
whatever device the tensors it is handed live on. A model on ``cuda:1`` while
``cuda:0`` is current would then run (or crash) on the wrong GPU and stream.
Each launch site enters ``launch_device(t)`` with a tensor of the launch, so
the launch runs on ``t``'s device and that device's current stream. The sites
call it through this module (``triton_device.launch_device``), which lets a
CPU test record that every site enters it.
"""
from __future__ import annotations

import contextlib

import torch


def launch_device(t: torch.Tensor):
    """A context making ``t``'s GPU current for a Triton launch; nothing for a
    CPU tensor (Triton's interpreter runs on the host)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
