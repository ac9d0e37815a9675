"""What the benchmark scripts share: the checkout they time, the machine's name,
and where their results go.

A script in this folder imports it first (``import _common``; the script's own
folder is on ``sys.path`` when it runs as ``python benchmarks/<script>.py``).
Importing it puts this checkout's root first on ``sys.path``, so a benchmark
times the ``tcl_fast`` next to it, not another installed copy.

Results: without ``--out`` a script writes under ``benchmarks/results/local/``,
which git ignores, so a run never replaces a committed result. To replace one,
name it: ``--out benchmarks/results/lif_cpu.json``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
LOCAL_RESULTS_DIR = os.path.join(RESULTS_DIR, "local")

if sys.path[:1] != [REPO_ROOT]:
    sys.path.insert(0, REPO_ROOT)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def command_line(script: str, argv=None) -> str:
    """How the script was run, as a command to paste: ``python benchmarks/<script> ...``."""
    return " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def output_path(out: str | None, filename: str) -> str:
    """``out`` when given, else ``benchmarks/results/local/<filename>`` (never a committed file)."""
    return out or os.path.join(LOCAL_RESULTS_DIR, filename)


def write_json(out: str | None, filename: str, payload: dict) -> str:
    """Write ``payload`` to ``output_path(out, filename)``, say where, and return the path."""
    path = output_path(out, filename)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote {os.path.relpath(path)}")
    return path
