"""tcl_fast.ops.tuning: the kernels' knobs, from the environment and the context manager."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tcl_fast
from tcl_fast import _extension
from tcl_fast.ops import get_tuning, tuning

pytestmark = pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = {"cpu_isa": "avx512", "cpu_groups": "auto", "cuda_bwd_lanes": 4, "cuda_packed": True}
# knob -> (its environment variable, a value it does not take)
BAD = {"cpu_isa": ("TCL_FAST_CPU_ISA", "sse9"), "cpu_groups": ("TCL_FAST_CPU_GROUPS", "medium"),
       "cuda_bwd_lanes": ("TCL_FAST_CUDA_BWD_LANES", "3"), "cuda_packed": ("TCL_FAST_CUDA_PACKED", "yes")}


def _python(code: str, *args: str, **env_vars) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter (the environment is read once per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCL_FAST_")}
    env.update(env_vars, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)


@pytest.fixture
def before():
    """The knobs' values before the test, which it must leave as they were."""
    values = get_tuning()
    yield values
    assert get_tuning() == values


@pytest.mark.skipif(any(env_var in os.environ for env_var, _ in BAD.values()),
                    reason="a TCL_FAST_* tuning variable is set")
def test_defaults():
    assert get_tuning() == DEFAULTS


def test_environment_sets_the_initial_values():
    out = _python("import tcl_fast.ops; print(sorted(tcl_fast.ops.get_tuning().items()))",
                  TCL_FAST_CPU_ISA="baseline", TCL_FAST_CPU_GROUPS="narrow",
                  TCL_FAST_CUDA_BWD_LANES="2", TCL_FAST_CUDA_PACKED="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted({"cpu_isa": "baseline", "cpu_groups": "narrow",
                                             "cuda_bwd_lanes": 2, "cuda_packed": False}.items()))


@pytest.fixture(scope="module")
def errors_from_environment():
    """Each bad value's error at the kernels' first use, one knob after another in one
    fresh interpreter: a read that raises leaves the environment unread, so the next
    call reads it again (csrc/lif_tuning.cpp), and the next knob's variable is read then."""
    code = ("import json, os, sys, torch, tcl_fast\n"
            "errors = {}\n"
            "for knob, (env_var, bad) in json.loads(sys.argv[1]).items():\n"
            "    os.environ[env_var] = bad\n"
            "    try:\n"
            "        tcl_fast.lif_multistep(torch.ones(2, 3), backend='cpp')\n"
            "        errors[knob] = None\n"
            "    except Exception as e:\n"
            "        errors[knob] = f'{type(e).__name__}: {e}'\n"
            "    del os.environ[env_var]\n"
            "print(json.dumps(errors))\n")
    out = _python(code, json.dumps(BAD))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("knob", BAD)
def test_bad_value_raises_the_same_error_from_tuning_and_environment(knob, before, errors_from_environment):
    env_var, bad = BAD[knob]
    with pytest.raises(ValueError) as from_tuning:
        with tuning(**{knob: bad}):
            pass
    message = str(from_tuning.value)
    assert re.fullmatch(rf"tcl_fast tuning: {knob} \({env_var}\) must be one of [\w, ]+; got '{bad}'",
                        message), message
    assert get_tuning() == before
    # From the environment: at the kernels' first use, even a CUDA knob on a CPU run.
    assert errors_from_environment[knob] == f"ValueError: {message}"


def test_values_restore_after_the_block(before):
    with tuning(cpu_groups="narrow", cuda_bwd_lanes=2, cuda_packed=False):
        assert get_tuning() == {**before, "cpu_groups": "narrow", "cuda_bwd_lanes": 2, "cuda_packed": False}
        with tuning(cpu_groups="wide", cpu_isa="baseline"):
            assert get_tuning()["cpu_groups"] == "wide"
            assert torch.ops.tcl_fast._cpu_isa() in ("baseline", "baseline+fma")
        assert get_tuning()["cpu_groups"] == "narrow"
    assert get_tuning() == before


def test_values_restore_after_an_exception(before):
    with pytest.raises(KeyError):
        with tuning(cpu_groups="narrow"):
            raise KeyError("inside")
    assert get_tuning() == before
    # A bad value after a good one: the good one is undone too.
    with pytest.raises(ValueError, match="cuda_packed"):
        with tuning(cpu_groups="narrow", cuda_packed="maybe"):
            pass
    assert get_tuning() == before


def test_unknown_knob_lists_the_knobs(before):
    with pytest.raises(ValueError, match="cpu_isa, cpu_groups, cuda_bwd_lanes, cuda_packed"):
        with tuning(cpu_groups="narrow", gpu_magic=1):
            pass
    assert get_tuning() == before
    with pytest.raises(ValueError, match="unknown knob 'gpu_magic'"):
        torch.ops.tcl_fast._get_tuning("gpu_magic")


def test_none_leaves_a_knob_alone(before):
    with tuning(cpu_groups="narrow"):
        with tuning(cpu_groups=None, cuda_packed=False):
            assert get_tuning()["cpu_groups"] == "narrow"
    assert get_tuning() == before


def test_same_results_under_every_cpu_setting(two_threads):
    x = torch.randn(9, 4 * 4096 * torch.get_num_threads() + 5)
    want = tcl_fast.lif_multistep(x, backend="cpp")
    for knobs in ({"cpu_groups": "narrow"}, {"cpu_groups": "wide"}, {"cpu_isa": "baseline"}):
        with tuning(**knobs):
            assert torch.equal(tcl_fast.lif_multistep(x, backend="cpp"), want), knobs
