"""Dataset registry: one entry point, ``build_datasets``, for every supported dataset."""
from __future__ import annotations

import os
from dataclasses import dataclass

from torch.utils.data import Dataset

DATASETS = ("digits", "cifar10", "cifar100", "dvs-cifar10")


@dataclass
class DatasetBundle:
    """Train/test datasets plus the shape facts a model needs.

    ``time_steps`` is ``None`` for static images (items ``[C, H, W]``; the model
    repeats them T times) and an int for event data (items ``[time_steps, C, H, W]``,
    time axis first within a sample).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    time_steps: int | None


def dataset_shape(name: str) -> tuple[int, int, int]:
    """``(num_classes, in_channels, image_size)`` of ``name``, without reading its files
    (what a model needs to be rebuilt from a checkpoint, e.g. for export)."""
    if name == "digits":
        from .digits import IMAGE_SIZE, NUM_CLASSES

        return NUM_CLASSES, 1, IMAGE_SIZE
    if name in ("cifar10", "cifar100"):
        return (10 if name == "cifar10" else 100), 3, 32
    if name == "dvs-cifar10":
        from .dvs_cifar10 import IMAGE_SIZE, NUM_CLASSES

        return NUM_CLASSES, 2, IMAGE_SIZE
    raise ValueError(f"unknown dataset name {name!r}; expected one of {', '.join(DATASETS)}")


def build_datasets(
    name: str,
    data_root: str | os.PathLike | None = None,
    *,
    two_views: bool = False,
    frames: int = 10,
    download: bool = False,
    augment: bool = True,
) -> DatasetBundle:
    """Build the train/test pair for ``name`` (one of ``DATASETS``).

    ``two_views=True`` makes the train set yield ``((x1, x2), y)``: the train
    transform drawn twice. The test set is never augmented and never two-view.
    ``data_root`` is ignored for ``digits`` (it ships with scikit-learn);
    ``frames`` only matters for ``dvs-cifar10``; ``download`` only for CIFAR.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset name {name!r}; expected one of {', '.join(DATASETS)}")

    if name == "digits":
        from .digits import IMAGE_SIZE, NUM_CLASSES, build_digits

        train, test, _, _ = build_digits(two_views=two_views, augment=augment)
        return DatasetBundle(train, test, NUM_CLASSES, 1, IMAGE_SIZE, None)

    if data_root is None:
        raise ValueError(f"data_root is required for dataset {name!r} (only 'digits' ships without files)")

    if name in ("cifar10", "cifar100"):
        from .cifar import build_cifar

        train, test, num_classes = build_cifar(
            name, data_root, two_views=two_views, download=download, augment=augment
        )
        _, channels, size = dataset_shape(name)
        return DatasetBundle(train, test, num_classes, channels, size, None)

    # dvs-cifar10
    from .dvs_cifar10 import IMAGE_SIZE as DVS_SIZE, NUM_CLASSES as DVS_CLASSES, build_dvs_cifar10

    if download:
        raise ValueError("download=True is not supported for 'dvs-cifar10'; place the files by hand (see docs)")
    train, test = build_dvs_cifar10(data_root, frames=frames, two_views=two_views, augment=augment)
    return DatasetBundle(train, test, DVS_CLASSES, 2, DVS_SIZE, frames)
