"""Tensor-level transforms shared by the datasets.

All randomness comes from torch's global RNG (``torch.randint``/``torch.rand``)
so a run seeded with ``torch.manual_seed`` reproduces its augmentations; in
DataLoader workers torch seeds each worker from the base seed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


class Compose:
    """Apply callables in order (a tiny stand-in so tensor pipelines need no torchvision)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Identity:
    """No-op transform (picklable, unlike a lambda, so DataLoader workers can use it)."""

    def __call__(self, x):
        return x

    def __repr__(self) -> str:
        return "Identity()"


class TwoViews:
    """Draw the same (random) transform twice: the two augmented views STCL contrasts."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, x):
        return self.transform(x), self.transform(x)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


class Normalize:
    """(x - mean) / std with per-channel statistics on the channel axis ``-3``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomShift:
    """Translate the last two axes by up to ``max_shift`` pixels, filling with zeros.

    Works for ``[..., H, W]`` so image and event-frame tensors share it; the same
    shift is applied to every leading slice (all channels / time steps).
    """

    def __init__(self, max_shift: int = 1):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        if s == 0:
            return x
        h, w = x.shape[-2:]
        padded = F.pad(x, (s, s, s, s))  # zero padding
        dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
        return padded[..., dy:dy + h, dx:dx + w].contiguous()

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


class RandomRoll:
    """Translate the last two axes by up to ``max_shift`` pixels with wrap-around (``torch.roll``)."""

    def __init__(self, max_shift: int = 5):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        if s == 0:
            return x
        dy, dx = (torch.randint(0, 2 * s + 1, (2,)) - s).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))

    def __repr__(self) -> str:
        return f"RandomRoll(max_shift={self.max_shift})"


class RandomHorizontalFlip:
    """Flip the last axis with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() < self.p:
            return torch.flip(x, dims=(-1,))
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
