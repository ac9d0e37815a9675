"""benchmarks/ files imported by path, for tests of their functions (not run as scripts)."""
from __future__ import annotations

import functools
import importlib.util
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@functools.lru_cache(maxsize=None)
def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, loaded once. The scripts import their sibling
    ``_common`` by name, so benchmarks/ is on sys.path while one loads, and only then."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, BENCHMARKS)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCHMARKS)
    return module
