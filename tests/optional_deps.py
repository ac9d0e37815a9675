"""Optional test dependencies (SpikingJelly, snnTorch, tonic, NIR's readers, ...).

On a developer's machine without one of them, its tests skip. Under CI (CI=true),
where the README's test command installs all of them, a failed import is an
error: a broken install must turn CI red, never make a parity suite skip.
"""
import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str, reason: str | None = None):
    """Import and return ``module``; skip the calling test module when it is
    missing, except under CI, where the ImportError propagates."""
    if in_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason or f"{module} not installed")
