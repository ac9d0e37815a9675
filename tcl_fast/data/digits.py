"""scikit-learn's 8x8 handwritten digits: the embedded, download-free default dataset.

Facts: 1797 grayscale 8x8 images, 10 classes, raw pixel values 0..16.
Split: stratified 75/25 with ``random_state=0`` -> 1347 train / 450 test
(fixed, so every run and every machine sees the same split).
Preprocessing: pixels / 16 -> [0, 1], then normalised with the *train-set*
mean/std (one scalar each; grayscale). Train augmentation: random translation
by up to 1 pixel with zero padding, applied in [0, 1] pixel space before
normalising so the padding is true background.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import Compose, Normalize, RandomShift, TwoViews

NUM_CLASSES = 10
IMAGE_SIZE = 8
TEST_FRACTION = 0.25
SPLIT_SEED = 0


class TensorImageDataset(Dataset):
    """In-memory images ``[N, C, H, W]`` with int labels and an optional transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


def _split_cache_path() -> str:
    """Where the split is kept after its first computation: importing scikit-learn
    costs about 2 s, paid by every process that builds the set (each rank of a
    distributed run, each subprocess of the tests) unless the split is read back."""
    root = os.environ.get("TCL_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tcl_fast")
    return os.path.join(root, f"digits_split_test{TEST_FRACTION}_seed{SPLIT_SEED}.npz")


def _compute_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = (data.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return train_test_split(
        images, data.target.astype(np.int64),
        test_size=TEST_FRACTION, stratify=data.target, random_state=SPLIT_SEED,
    )


_SPLIT_KEYS = ("x_train", "x_test", "y_train", "y_test")


def _load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split, read from the cache file when it is there and whole, else
    computed with scikit-learn and written (atomically: a concurrent or interrupted
    writer leaves no partial file). An unwritable cache folder only costs the speed."""
    path = _split_cache_path()
    try:
        with np.load(path) as cached:
            arrays = tuple(cached[k] for k in _SPLIT_KEYS)
        if arrays[0].shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE) and len(arrays[0]) + len(arrays[1]) == 1797:
            return arrays
    except Exception:  # missing, truncated or foreign file: compute it again
        pass
    arrays = _compute_split()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **dict(zip(_SPLIT_KEYS, arrays)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError:
        pass
    return arrays


def build_digits(*, two_views: bool = False, augment: bool = True):
    """Return ``(train, test, mean, std)``; see the module docstring for the recipe."""
    x_train, x_test, y_train, y_test = _load_split()
    mean, std = float(x_train.mean()), float(x_train.std())
    normalize = Normalize([mean], [std])

    train_tf = Compose([RandomShift(1), normalize]) if augment else normalize
    if two_views:
        train_tf = TwoViews(train_tf)

    train = TensorImageDataset(torch.from_numpy(x_train), torch.from_numpy(y_train), train_tf)
    test = TensorImageDataset(torch.from_numpy(x_test), torch.from_numpy(y_test), normalize)
    return train, test, mean, std
