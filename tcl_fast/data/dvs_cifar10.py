"""CIFAR10-DVS (Li et al. 2017): 10000 event streams, 1000 per CIFAR-10 class, 128x128 DVS.

Two on-disk layouts are detected under ``data_root`` (frames are preferred when both exist):

(a) Event files, one folder per class (``airplane`` ... ``truck``), searched in
    ``<root>/``, ``<root>/extract/`` (SpikingJelly's unpack folder) and ``<root>/CIFAR10DVS/``
    (tonic's). ``*.aedat`` are the original release (jAER AEDAT 2.0: ``#`` header lines, then
    big-endian uint32 (address, timestamp) pairs), read with tonic's AEDAT reader; the
    address is decoded as SpikingJelly does (x = 127 - addr[8:15], y = 127 - addr[1:8],
    polarity = 1 - addr[0]). ``*.aedat4`` (tonic's re-release) go through
    ``tonic.io.read_aedat4``, which needs the optional ``aedat`` package; their x/y/polarity
    are used as stored. tonic itself is optional: only event files need it.
(b) Pre-computed frames in SpikingJelly's layout: ``<root>/<class>/<sample>.npz`` (or
    ``<root>/frames_number_<T>_split_by_number/<class>/``) holding ``frames`` ``[T, 2, H, W]``.

Events are binned as SpikingJelly's ``split_by='number'`` (what TET and most DVS-CIFAR10
recipes train on): the stream's N events are cut into T slices of N // T events (the last
slice takes the remainder) and each slice is summed into per-polarity event-count maps.
Frames are then resized to 48x48 with antialiased bilinear interpolation (what
``torchvision.transforms.Resize((48, 48))`` does to a tensor). Values stay raw counts
(no normalisation), as in those recipes.

Split: per class, the lexicographically sorted files; the first 90% (``n * 9 // 10``)
train, the rest test -> 9000 / 1000 on the full release. Train augmentation (TET's
recipe): horizontal flip with p=0.5, then a random roll (translation with wrap-around)
of up to +-5 pixels on each spatial axis, identical for every time step of a sample.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .transforms import Compose, Identity, RandomHorizontalFlip, RandomRoll, TwoViews

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = len(CLASSES)
SENSOR_SIZE = 128
IMAGE_SIZE = 48
TRAIN_NUMERATOR, TRAIN_DENOMINATOR = 9, 10
MAX_ROLL = 5
EVENT_SUFFIXES = (".aedat", ".aedat4")


# --------------------------------------------------------------------------- events -> frames

def decode_cifar10dvs_address(address: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode CIFAR10-DVS AEDAT 2.0 addresses into image ``(x, y, polarity)``.

    Bits 1-7 hold the sensor column and bits 8-14 the row of the (rotated) DVS128;
    SpikingJelly maps them to upright images as x = 127 - row, y = 127 - col,
    p = 1 - bit0 (see jackd/events-tfds#1 for why).
    """
    address = np.asarray(address, dtype=np.uint32)
    col = (address & 0x00FE) >> 1
    row = (address & 0x7F00) >> 8
    x = (SENSOR_SIZE - 1) - row
    y = (SENSOR_SIZE - 1) - col
    p = 1 - (address & 0x1)
    return x.astype(np.int64), y.astype(np.int64), p.astype(np.int64)


def events_to_frames(x: np.ndarray, y: np.ndarray, p: np.ndarray, frames: int,
                     height: int = SENSOR_SIZE, width: int = SENSOR_SIZE) -> torch.Tensor:
    """Split ``N`` time-ordered events into ``frames`` equal-count slices of event counts.

    Returns float32 ``[frames, 2, height, width]``; slice ``i`` holds events
    ``[i * (N // frames), (i + 1) * (N // frames))``, the last one also the remainder.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    x, y, p = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (x, y, p))
    n = x.shape[0]
    if not (y.shape[0] == p.shape[0] == n):
        raise ValueError(f"x, y, p must have the same length, got {x.shape[0]}, {y.shape[0]}, {p.shape[0]}")
    if n and (x.min() < 0 or x.max() >= width or y.min() < 0 or y.max() >= height):
        raise ValueError(f"event coordinates out of range for a {height}x{width} sensor")
    if n and (p.min() < 0 or p.max() > 1):
        raise ValueError("event polarity must be 0 or 1")
    step = n // frames
    t_idx = np.minimum(np.arange(n) // step, frames - 1) if step else np.full(n, frames - 1)
    flat = ((t_idx * 2 + p) * height + y) * width + x
    counts = np.bincount(flat, minlength=frames * 2 * height * width)
    return torch.from_numpy(counts.astype(np.float32)).view(frames, 2, height, width)


def _require_tonic_io():
    try:
        import tonic.io as tonic_io
    except ImportError as exc:  # tonic is optional: only raw event files need it
        raise ImportError(
            "reading DVS-CIFAR10 event files (.aedat/.aedat4) needs tonic: `pip install tonic`. "
            "Alternatively provide pre-computed frames (<root>/<class>/<sample>.npz with key 'frames')."
        ) from exc
    return tonic_io


def read_cifar10dvs_events(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one released event file into image-coordinate ``(x, y, p)`` arrays (time order)."""
    path = Path(path)
    tonic_io = _require_tonic_io()
    if path.suffix == ".aedat4":
        try:
            events = tonic_io.read_aedat4(str(path))
        except ImportError as exc:
            raise ImportError(f"reading {path} needs the 'aedat' package (`pip install aedat`)") from exc
        names = events.dtype.names
        pol = "p" if "p" in names else "on"
        return (events["x"].astype(np.int64), events["y"].astype(np.int64), events[pol].astype(np.int64))
    try:
        version, start, _ = tonic_io.read_aedat_header_from_file(str(path))
        if not 2 <= version < 3:
            raise ValueError(f"expected AEDAT 2.x, found version {version}")
        raw = tonic_io.get_aer_events_from_file(str(path), version, start)
    except (UnboundLocalError, ValueError, AssertionError, NotImplementedError) as exc:
        # tonic fails with UnboundLocalError when no '#!AER-DAT' line is present.
        raise ValueError(f"{path} is not a readable AEDAT 2.0 event file: {exc}") from exc
    return decode_cifar10dvs_address(raw["address"])


def resize_frames(frames: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------- dataset

class DVSCifar10(Dataset):
    """Items ``(x, y)`` with x float32 ``[frames, 2, 48, 48]`` (time first), y an int class."""

    def __init__(self, files: list[Path], labels: list[int], kind: str, frames: int,
                 transform: Callable | None = None):
        if kind not in ("events", "frames"):
            raise ValueError(f"kind must be 'events' or 'frames', got {kind!r}")
        self.files = list(files)
        self.targets = list(labels)
        self.kind = kind
        self.frames = frames
        self.transform = transform
        self.classes = CLASSES

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        path = self.files[index]
        if self.kind == "events":
            x = events_to_frames(*read_cifar10dvs_events(path), frames=self.frames)
        else:
            x = load_frames_npz(path, self.frames)
        return resize_frames(x)

    def __getitem__(self, index: int):
        x = self.load(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.targets[index])


def load_frames_npz(path: Path, frames: int) -> torch.Tensor:
    try:
        with np.load(path) as npz:
            names = list(npz.files)
            arr = npz["frames"] if "frames" in names else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # what np.load raises for non-npz bytes
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from exc
    if arr is None:
        raise ValueError(f"{path} has no 'frames' array (found {names})")
    if arr.ndim != 4 or arr.shape[1] != 2 or arr.shape[2] != arr.shape[3]:
        raise ValueError(f"{path}: 'frames' must be [T, 2, H, H], got {list(arr.shape)}")
    if arr.shape[0] != frames:
        raise ValueError(f"{path}: 'frames' has T={arr.shape[0]} time steps but frames={frames} was requested")
    return torch.from_numpy(arr.astype(np.float32, copy=False))


# --------------------------------------------------------------------------- layout detection

def _class_files(folder: Path, suffixes: tuple[str, ...], only: str | None = None) -> dict[str, list[Path]] | None:
    """Per-class sorted files under ``folder/<class>/``; None unless every class has some."""
    found = {}
    for name in (only,) if only else CLASSES:
        sub = folder / name
        files = sorted(f for f in sub.iterdir() if f.is_file() and f.suffix in suffixes) if sub.is_dir() else []
        if not files:
            return None
        found[name] = files
    return found


def _missing_message(root: Path, frames: int) -> str:
    classes = ", ".join(CLASSES)
    suffixes = EVENT_SUFFIXES + (".npz",)
    present = [c for c in CLASSES if (root / c).is_dir() and _class_files(root, suffixes, only=c)]
    missing = [c for c in CLASSES if c not in present]
    gap = ""
    if present and missing:  # a partial copy: say which classes are missing
        gap = f" (missing or empty class folders: {', '.join(missing)})"
    elif present:
        gap = " (every class folder has files, but not all of one kind: .npz or .aedat/.aedat4)"
    return (
        f"no complete DVS-CIFAR10 data found under data_root={str(root)!r}{gap}. Expected one folder per class "
        f"({classes}) holding either\n"
        f"  (a) event files: {root}/<class>/*.aedat - unzip the official release's airplane.zip ... "
        f"truck.zip (https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671) into {root}/ "
        f"(also searched: {root}/extract/<class>/, and tonic's {root}/CIFAR10DVS/<class>/*.aedat4); or\n"
        f"  (b) SpikingJelly frames: {root}/<class>/<sample>.npz (or "
        f"{root}/frames_number_{frames}_split_by_number/<class>/<sample>.npz) with key 'frames' "
        f"shaped [{frames}, 2, H, W].\n"
        f"There is no automatic download for DVS-CIFAR10 (--download only applies to CIFAR-10/100)."
    )


def find_layout(root: Path, frames: int) -> tuple[str, dict[str, list[Path]]]:
    """Return ``("frames" | "events", {class: sorted files})`` for the first layout present."""
    if not root.is_dir():
        raise FileNotFoundError(_missing_message(root, frames))
    for folder in (root / f"frames_number_{frames}_split_by_number", root):
        files = _class_files(folder, (".npz",))
        if files is not None:
            return "frames", files
    for folder in (root, root / "extract", root / "CIFAR10DVS"):
        files = _class_files(folder, EVENT_SUFFIXES)
        if files is not None:
            return "events", files
    raise FileNotFoundError(_missing_message(root, frames))


def split_per_class(per_class: dict[str, list[Path]]):
    """First 9/10 of each class's sorted files -> train, the rest -> test."""
    train, test = ([], []), ([], [])
    for label, name in enumerate(CLASSES):
        files = per_class[name]
        cut = len(files) * TRAIN_NUMERATOR // TRAIN_DENOMINATOR
        train[0].extend(files[:cut])
        train[1].extend([label] * cut)
        test[0].extend(files[cut:])
        test[1].extend([label] * (len(files) - cut))
    return train, test


def build_dvs_cifar10(data_root: str | os.PathLike, *, frames: int = 10, two_views: bool = False,
                      augment: bool = True):
    """Return ``(train, test)`` DVSCifar10 datasets; see the module docstring for the recipe."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int, got {frames!r}")
    root = Path(data_root).expanduser()
    kind, per_class = find_layout(root, frames)
    if kind == "frames":
        load_frames_npz(per_class[CLASSES[0]][0], frames)  # fail now, not mid-epoch, on a T mismatch
    else:
        _require_tonic_io()

    train_tf = Compose([RandomHorizontalFlip(0.5), RandomRoll(MAX_ROLL)]) if augment else None
    if two_views:
        train_tf = TwoViews(train_tf if train_tf is not None else Identity())

    (train_files, train_labels), (test_files, test_labels) = split_per_class(per_class)
    train = DVSCifar10(train_files, train_labels, kind, frames, train_tf)
    test = DVSCifar10(test_files, test_labels, kind, frames, None)
    return train, test
