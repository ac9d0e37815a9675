"""``python -m tcl_fast.train [options]`` is ``tcl-fast train [options]``."""
from __future__ import annotations

import sys

from tcl_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
