import os

import pytest
import torch

# Triton kernels run on CPU tensors only in interpreter mode, which must be on
# before any @triton.jit function is defined (i.e. before tcl_fast imports them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist, every worker's torch would start one intra-op thread per core:
# `-n 2` on 2 cores runs 4 busy threads (more when a test starts subprocesses), and
# OpenMP threads that spin-wait for a descheduled peer made the suite ~2x slower.
# Each worker takes its share of the cores instead; subprocesses the tests start
# inherit the same count through OMP_NUM_THREADS (so their runs equal in-process ones).
# Tests of the C++ kernels' split across threads ask for 2 threads themselves.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers > 1:
    _threads = max(1, len(os.sched_getaffinity(0)) // _workers)
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)

# Inductor compiles in the test's own process: with more than one compile thread it
# starts a pool of worker processes, each importing torch, for the few small kernels
# a test compiles (test_lif's inductor test: 12 s with the pool, 7 s without, alone on
# 2 cores).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


@pytest.fixture
def two_threads():
    """At least 2 intra-op threads for this test (restored after), whatever the worker's share."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)
