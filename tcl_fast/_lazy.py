"""Public names imported on first use (PEP 562), so a package's ``import`` stays cheap."""
from __future__ import annotations

import importlib


def lazy_names(package: str, names: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for ``package`` whose public ``names`` map to the
    modules defining them; a name, once loaded, is cached in ``namespace``."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
