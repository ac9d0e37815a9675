"""``import tcl_fast`` and ``tcl-fast --help`` don't import torch (a newcomer's first command is fast)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout


def test_help_imports_no_torch():
    out = _run("import sys, contextlib, io\n"
               "from tcl_fast.cli import main\n"
               "with contextlib.redirect_stdout(io.StringIO()):\n"
               "    assert main(['--help']) == 0 and main(['train', '--help']) == 0\n"
               "print(sorted(m for m in ('torch', 'triton', 'numpy', 'matplotlib') if m in sys.modules))")
    assert out.strip() == "[]"


def test_public_names_load_on_first_use():
    out = _run("import sys, tcl_fast\n"
               "assert 'torch' not in sys.modules\n"
               "assert set(tcl_fast.__all__) <= set(dir(tcl_fast))\n"
               "import torch\n"
               "print(int(tcl_fast.lif_multistep(torch.ones(3, 2), tau=2.0, v_threshold=0.5).sum()))\n"
               "print('torch._dynamo' in sys.modules)\n"
               # A plot uses matplotlib's Figure API: no pyplot, and the caller's backend is untouched.
               "import os, tempfile, matplotlib\n"
               "matplotlib.rcParams['backend'] = 'svg'\n"
               "from tcl_fast.training.evaluation import plot_latency\n"
               "path = plot_latency([('a', {1: 50.0, 2: 60.0})], os.path.join(tempfile.mkdtemp(), 'a.png'))\n"
               "print(os.path.getsize(path) > 0, 'matplotlib.pyplot' in sys.modules, matplotlib.get_backend())")
    spikes, dynamo, plotted, pyplot, backend = out.split()
    assert spikes == "6"  # h = 0 + (1 - 0) / 2 = 0.5 reaches the threshold at every step: 3 x 2 spikes
    # Nor torch.compile's machinery (2 s more in every process that runs a model, `tcl-fast
    # eval` and export included; torch's optimizers and Python custom ops still import it).
    assert dynamo == "False"
    assert (plotted, pyplot, backend) == ("True", "False", "svg")
