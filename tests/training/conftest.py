import pytest

from test_distributed_train import QUICK, _torchrun


@pytest.fixture(scope="session")
def ddp_tcl_run(tmp_path_factory):
    """One 2-rank `tcl_fast.train` run (test_distributed_train.QUICK), read by every test that needs
    that exact run: test_distributed_train's resume and file checks, and test_optimize_memory_train's
    plain side (it was the same command run again). Tests only read its folder. Under xdist a worker
    runs it at most once; the users carry one xdist_group so `--dist loadgroup` runs it once in all."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, _torchrun(["tcl_fast.train", "--out", str(out), *QUICK])
