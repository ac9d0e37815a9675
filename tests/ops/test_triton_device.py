"""Every Triton launch runs inside a guard for its tensors' device
(tcl_fast/ops/triton_device.py): Triton launches on the *current* GPU, so a
model on cuda:1 while cuda:0 is current would run on the wrong device and
stream. On the CPU the kernels run in Triton's interpreter (tests/conftest.py);
each kernel is wrapped to record whether the guard, entered with the launch's
tensor device, is active when it launches. With two GPUs the last test runs
the ops on cuda:1 while cuda:0 is current."""
from __future__ import annotations

import contextlib

import pytest
import torch

from tcl_fast.ops import triton_device

triton = pytest.importorskip("triton")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
interpreting = bool(getattr(getattr(triton, "knobs", None), "runtime", None) and triton.knobs.runtime.interpret)
pytestmark = pytest.mark.skipif(DEVICE.type == "cpu" and not interpreting,
                                reason="Triton needs a GPU, or TRITON_INTERPRET=1 for CPU tensors")


class _Recorder:
    """Patches launch_device to note the device it guards, and each kernel to
    note the guard that is active when it launches (None: no guard)."""

    def __init__(self, monkeypatch):
        self.active: list[torch.device] = []
        self.launches: list[tuple[str, torch.device | None]] = []
        real = triton_device.launch_device

        @contextlib.contextmanager
        def recording(t):
            with real(t):
                self.active.append(t.device)
                try:
                    yield
                finally:
                    self.active.pop()

        monkeypatch.setattr(triton_device, "launch_device", recording)
        self.monkeypatch = monkeypatch

    def wrap(self, module, name):
        kernel = getattr(module, name)
        recorder = self

        class Wrapped:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    recorder.launches.append((name, recorder.active[-1] if recorder.active else None))
                    return kernel[grid](*args, **kwargs)
                return launch

        self.monkeypatch.setattr(module, name, Wrapped())


def test_guard_is_the_tensors_cuda_device_and_nothing_on_cpu():
    # Built, not entered: constructing torch.cuda.device touches no GPU.
    guard = triton_device.launch_device(torch.empty(0))
    assert isinstance(guard, contextlib.nullcontext)
    fake_cuda = type("FakeCudaTensor", (), {"device": torch.device("cuda", 1)})()
    guard = triton_device.launch_device(fake_cuda)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_spike_pack_launches_are_guarded(monkeypatch):
    from tcl_fast.ops import spike_pack
    rec = _Recorder(monkeypatch)
    rec.wrap(spike_pack, "_pack_kernel")
    rec.wrap(spike_pack, "_unpack_kernel")
    x = (torch.rand(3, 37, device=DEVICE) < 0.4).float()
    bits = spike_pack.pack_bits_triton(x)
    back = spike_pack.unpack_bits_triton(bits, x.numel(), x.dtype)
    assert torch.equal(back.view_as(x), x)
    assert rec.launches == [("_pack_kernel", x.device), ("_unpack_kernel", x.device)]


def test_lif_triton_launches_are_guarded(monkeypatch):
    from tcl_fast.ops import lif_triton
    if not lif_triton._INTERPRET and DEVICE.type == "cpu":
        pytest.skip("the Triton LIF kernels were built without the interpreter")
    rec = _Recorder(monkeypatch)
    rec.wrap(lif_triton, "_lif_fwd")
    rec.wrap(lif_triton, "_lif_bwd")
    x = (torch.randn(4, 9, device=DEVICE) + 0.5).requires_grad_()
    decay = torch.tensor(0.5, device=DEVICE, requires_grad=True)
    spikes, _ = lif_triton.lif_forward_triton(x, None, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    spikes.sum().backward()
    assert x.grad is not None and decay.grad is not None
    assert rec.launches == [("_lif_fwd", x.device), ("_lif_bwd", x.device)]


def test_supcon_triton_launches_are_guarded(monkeypatch):
    from tcl_fast.ops import supcon_triton
    if not supcon_triton._interpreting() and DEVICE.type == "cpu":
        pytest.skip("the Triton supcon kernels need the interpreter on the CPU")
    rec = _Recorder(monkeypatch)
    name = "_supcon_lse_{}_kernel" if supcon_triton._interpreting() else None
    if name is None:
        pytest.skip("on a GPU the autotuned kernels launch; the two-GPU test covers them")
    rec.wrap(supcon_triton, name.format("fwd"))
    rec.wrap(supcon_triton, name.format("bwd"))
    x = torch.nn.functional.normalize(torch.randn(20, 16, device=DEVICE), dim=1).requires_grad_()
    lse = supcon_triton.supcon_lse_triton(x, 2.0, False)
    lse.sum().backward()
    assert x.grad is not None
    assert rec.launches == [(name.format("fwd"), x.device), (name.format("bwd"), x.device)]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_the_second_gpu_while_the_first_is_current():
    # Triton kernels and the C++/CUDA op, on cuda:1 with cuda:0 current, match cuda:0's run.
    import tcl_fast
    from tcl_fast import _extension
    from tcl_fast.ops import spike_pack, supcon_triton
    if not _extension.has_cuda_kernels():
        pytest.skip("CUDA kernels not built")
    g = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(6, 64, 33, generator=g) + 0.5
    results = {}
    for dev in ("cuda:0", "cuda:1"):
        with torch.cuda.device(0):  # cuda:0 current, whichever device the tensors are on
            x = x_cpu.to(dev).requires_grad_()
            s = tcl_fast.lif_multistep(x, tau=2.0, backend="triton")
            s.sum().backward()
            # the C++/CUDA op too (its own device guard), plain and per-channel
            s_cuda = tcl_fast.lif_multistep(x, decay=torch.full((64, 1), 0.5, device=dev), backend="cuda")
            s_cuda.sum().backward()
            bits = spike_pack.pack_bits_triton(s.detach())
            z = torch.nn.functional.normalize(x_cpu.flatten(1)[:, :32].to(dev), dim=1).requires_grad_()
            lse = supcon_triton.supcon_lse_triton(z, 2.0, False)
            lse.sum().backward()
            torch.cuda.synchronize(dev)
            results[dev] = [t.cpu() for t in (s, s_cuda, x.grad, bits, lse, z.grad)]
    for a, b in zip(results["cuda:0"], results["cuda:1"]):
        torch.testing.assert_close(a, b)
