"""CIFAR-10 / CIFAR-100 read straight from the python-pickle release.

We read the pickles ourselves instead of using ``torchvision.datasets.CIFAR10``
because torchvision refuses any file whose md5 differs from the release, which
rules out tiny test fixtures. ``download=True`` still goes through torchvision's
downloader (md5-checked archive), then the files are read here.

On-disk layout expected under ``data_root`` (what the official tarballs extract to)::

    <data_root>/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}
    <data_root>/cifar-100-python/{train, test, meta}

Each batch is a pickle dict with ``data`` (uint8 ``[N, 3072]``, channel-major
R, G, B planes of 32x32) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100).
Splits are the official ones: 50000 train / 10000 test.

Train augmentation (standard): RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize with the per-dataset channel mean/std below.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from .transforms import TwoViews


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    meta_key: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "cifar10": _CifarSpec(
        "CIFAR-10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "label_names", "labels", 10,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _CifarSpec(
        "CIFAR-100", "cifar-100-python",
        ("train",), ("test",),
        "meta", "fine_label_names", "fine_labels", 100,
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1: the release was pickled by Python 2 with byte-string keys/values.
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} should hold a dict, found {type(obj).__name__}")
    return obj


def _read_batches(folder: Path, files: tuple[str, ...], spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        entry = _load_pickle(path)
        if "data" not in entry or spec.label_key not in entry:
            raise ValueError(f"{path} lacks the 'data' and/or {spec.label_key!r} entries of a {spec.title} batch")
        data = np.asarray(entry["data"], dtype=np.uint8)
        lab = np.asarray(entry[spec.label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != lab.shape[0]:
            raise ValueError(
                f"{path}: expected data [N, 3072] and N labels, got data {data.shape} and {lab.shape[0]} labels"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= spec.num_classes):
            raise ValueError(f"{path}: labels must lie in [0, {spec.num_classes}), got [{lab.min()}, {lab.max()}]")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # -> HWC for PIL
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class CifarArrays(Dataset):
    """HWC uint8 images + labels; items go through a torchvision transform on a PIL image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable, classes: list[str]):
        self.data = images
        self.targets = labels
        self.transform = transform
        self.classes = classes

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def _missing_message(spec: _CifarSpec, root: Path, missing: list[str]) -> str:
    wanted = ", ".join(spec.train_files + spec.test_files + (spec.meta_file,))
    return (
        f"{spec.title} files not found under data_root={str(root)!r} (missing: {', '.join(missing)}). "
        f"Put {wanted} in {root / spec.folder}/ - that is what the official python-version archive "
        f"from https://www.cs.toronto.edu/~kriz/cifar.html extracts to inside {root}/ - "
        f"or pass download=True (the CLI's --download) on a machine with network access."
    )


def _resolve_folder(spec: _CifarSpec, root: Path) -> Path:
    needed = spec.train_files + spec.test_files + (spec.meta_file,)
    for folder in (root / spec.folder, root):  # also accept data_root pointing at the folder itself
        if all((folder / n).is_file() for n in needed):
            return folder
    folder = root / spec.folder
    raise FileNotFoundError(_missing_message(spec, root, [n for n in needed if not (folder / n).is_file()]))


def build_cifar(name: str, data_root: str | os.PathLike, *, two_views: bool = False,
                download: bool = False, augment: bool = True):
    """Return ``(train, test, num_classes)`` for ``name`` in ``("cifar10", "cifar100")``."""
    if name not in SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {', '.join(SPECS)}")
    spec = SPECS[name]
    root = Path(data_root).expanduser()

    if download:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)  # fetches + md5-checks the archive if absent
        except OSError as exc:  # URLError (no network, DNS, refused) is an OSError
            raise RuntimeError(f"download of {name} into {str(root)!r} failed ({exc}); with no network, copy "
                               f"the python-version archive's files there by hand") from None

    folder = _resolve_folder(spec, root)
    classes = list(_load_pickle(folder / spec.meta_file).get(spec.meta_key, []))

    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    test_tf = T.Compose(normalize)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize]) if augment else test_tf
    if two_views:
        train_tf = TwoViews(train_tf)

    train = CifarArrays(*_read_batches(folder, spec.train_files, spec), train_tf, classes)
    test = CifarArrays(*_read_batches(folder, spec.test_files, spec), test_tf, classes)
    return train, test, spec.num_classes
