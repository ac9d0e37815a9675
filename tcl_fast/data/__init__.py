"""Datasets for training (digits, CIFAR-10/100, DVS-CIFAR10).

This subpackage only feeds training; it deliberately imports nothing from
``tcl_fast`` models, ops or training.
"""
from __future__ import annotations

from .registry import DATASETS, DatasetBundle, build_datasets, dataset_shape

__all__ = ["DATASETS", "DatasetBundle", "build_datasets", "dataset_shape"]
