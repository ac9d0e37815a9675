"""Start the ranks of a CPU gloo job the way torchrun would, without torchrun's launcher.

The launcher is one more process importing torch (4 s of CPU here) per job; the test
process plays torchrun's agent instead. It hosts the rendezvous store and gives each
rank the environment torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT, and TORCHELASTIC_USE_AGENT_STORE, so every rank is a client
of that store). The store outlives the ranks, as the agent's does: with rank 0 hosting
it (plain env:// ranks), one 2-rank training run under the full suite ended in SIGABRT
after its last epoch ("terminate called without an active exception" in a rank's
teardown; rank 0 exiting takes the store with it).
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from pathlib import Path

import pytest
from torch.distributed import TCPStore

ROOT = Path(__file__).resolve().parents[1]


def cpu_gloo_env(**extra: str) -> dict[str, str]:
    """This environment for a CPU rank of the tests' jobs: one intra-op thread per rank, no
    GPU, Triton's interpreter, this checkout first on PYTHONPATH, gloo on loopback only."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), **extra)
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def launch_ranks(cmd: list[str], env: dict[str, str], world: int, timeout_s: float,
                 cwd: str | os.PathLike | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``cmd`` once per rank with ``env`` plus each rank's torchrun variables; return
    each rank's CompletedProcess (its own stdout and stderr), in rank order.

    A rank that fails takes the others down at once, as torchrun would, rather than
    leaving them waiting for it in a collective: those get ``stopped = True`` (and
    return code -SIGKILL); every other rank has ``stopped = False``. A job still
    running after ``timeout_s`` fails the test. Output goes to files, not
    pipes, so a chatty rank cannot block on a full pipe."""
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # port 0: a free one
    procs, logs, timed_out = [], [], False
    try:
        for rank in range(world):
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                            LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port),
                            TORCHELASTIC_USE_AGENT_STORE="True")
            logs.append((tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")))
            # Own session, so a rank is killed with anything it started (only what this test started).
            procs.append(subprocess.Popen(cmd, env=rank_env, cwd=cwd, stdout=logs[-1][0], stderr=logs[-1][1],
                                          text=True, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        while None in (codes := [p.poll() for p in procs]):  # poll every rank, each round
            if any(c not in (None, 0) for c in codes):
                break  # a rank failed: the others would wait for it
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        stopped = [p.poll() is None for p in procs]
        for p, stop in zip(procs, stopped):
            if stop:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    results = []
    for p, stop, (out, err) in zip(procs, stopped, logs):
        out.seek(0), err.seek(0)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()))
        results[-1].stopped = stop
        out.close(), err.close()
    del store  # after every rank is gone
    if timed_out:
        pytest.fail(f"the {world} ranks did not finish in {timeout_s} s")
    return results
