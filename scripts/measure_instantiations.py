"""Where the CPU kernels' machine code goes: bytes of code per family of
template instantiations in the built object files (GNU nm, demangled).

    python scripts/measure_instantiations.py [BUILD_TEMP_DIR]

BUILD_TEMP_DIR defaults to this checkout's build/temp.* (what `pip install` or
`python setup.py build_ext --inplace` leaves). Code size follows compile time
closely for these files (each instantiation is optimised separately), so this
shows which ISA, dtype and switch costs the build most. Prints one table per
kernel object file; groups are the driver (forward / backward / surrogate
row), the ISA, and for the drivers the width, smooth mode and per-neuron
parameters (Lanewise).
"""
from __future__ import annotations

import collections
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = re.compile(r"tcl_fast::lif::cpu::(forward|backward)_groups_(\w+)<(.*?)>\(")
ROW = re.compile(r"tcl_fast::lif::cpu::surrogate_row_(\w+)<")


def family(name: str) -> str:
    m = DRIVER.search(name)
    if m:
        args = [a.strip() for a in m.group(3).split(",")]
        # <W, S, A, SG, DecayInput, HardReset, Smooth, [DecayGrad,] Lanewise>
        width, smooth, lanewise = args[0], args[6] == "true", args[-1] == "true"
        kind = "smooth" if smooth else ("per-neuron" if lanewise else "shared")
        return f"{m.group(1)} {m.group(2)} W={width} {kind}"
    m = ROW.search(name)
    if m:
        return f"surrogate row {m.group(1)}"
    return "other (dispatch, parallel_for bodies, ATen inline code)"


def sizes(obj: str) -> collections.Counter:
    out = subprocess.run(["nm", "-C", "-S", "-t", "d", "--defined-only", obj], capture_output=True,
                         text=True, check=True).stdout
    total = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[2].lower() in ("t", "w"):
            total[family(parts[3])] += int(parts[1])
    return total


def main() -> None:
    build = sys.argv[1] if len(sys.argv) > 1 else next(iter(glob.glob(os.path.join(HERE, "build", "temp.*"))), None)
    if build is None:
        sys.exit("no build/temp.* folder: build first (pip install -e . or python setup.py build_ext --inplace)")
    for obj in sorted(glob.glob(os.path.join(build, "csrc", "lif_cpu_*.o"))):
        total = sizes(obj)
        all_bytes = sum(total.values())
        print(f"\n{os.path.basename(obj)}: {all_bytes / 1024:.0f} KiB of code")
        print(f"{'KiB':>7} {'share':>6}  family")
        for fam, b in total.most_common():
            if b / all_bytes >= 0.01:
                print(f"{b / 1024:7.0f} {b / all_bytes:6.1%}  {fam}")


if __name__ == "__main__":
    main()
