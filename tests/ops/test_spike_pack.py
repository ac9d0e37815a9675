"""Bit packing of spikes: C++ and Triton kernels against the PyTorch reference.

Odd sizes (not multiples of 8 or 32) and every float dtype. Triton runs on CPU
tensors under its interpreter (tests/conftest.py), so shapes stay small.
"""
from __future__ import annotations

import pytest
import torch

from tcl_fast.ops import spike_pack as sp

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SIZES = [0, 1, 7, 8, 9, 31, 33, 100, 1001, 8195]


def _spikes(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed + n)
    return (torch.rand(n, generator=g) < 0.3).to(dtype)


def test_reference_layout_lsb_first():
    x = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0.0])
    assert sp.pack_bits_reference(x).tolist() == [0b10000001, 0b011]
    back = sp.unpack_bits_reference(torch.tensor([0b10000001, 0b011], dtype=torch.uint8), 11, torch.float32)
    assert torch.equal(back, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_reference_round_trip_bit_exact(n, dtype):
    x = _spikes(n, dtype)
    bits = sp.pack_bits_reference(x)
    assert bits.dtype == torch.uint8 and bits.numel() == (n + 7) // 8
    y = sp.unpack_bits_reference(bits, n, dtype)
    assert y.dtype == dtype and torch.equal(y.view(torch.uint8), x.view(torch.uint8))


def test_negative_zero_packs_as_zero():
    x = torch.tensor([-0.0, 1.0, 0.0])
    assert sp.pack_bits_reference(x).tolist() == [0b010]


_has_cpp = sp._has_cpp_pack()


@pytest.mark.skipif(not _has_cpp, reason="tcl_fast._C built without pack_spikes (rebuild to test the C++ kernel)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES + [65536 + 13])
def test_cpp_matches_reference(n, dtype):
    x = _spikes(n, dtype)
    bits = sp.pack_bits(x, backend="cpp")
    assert torch.equal(bits, sp.pack_bits_reference(x))
    y = sp.unpack_bits(bits, n, dtype, backend="cpp")
    assert y.dtype == dtype and torch.equal(y.view(torch.uint8), x.view(torch.uint8))


@pytest.mark.skipif(not _has_cpp, reason="tcl_fast._C built without pack_spikes")
def test_cpp_multidim_and_negative_zero():
    x = _spikes(3 * 5 * 7, torch.float32).view(3, 5, 7)
    x[0, 0, 0] = -0.0
    assert torch.equal(sp.pack_bits(x, backend="cpp"), sp.pack_bits_reference(x))
    assert torch.equal(sp.unpack_bits(sp.pack_bits(x, backend="cpp"), x.numel(), torch.float32, backend="cpp"),
                       x.reshape(-1).abs())


_triton_dev = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.skipif(not sp.triton_pack_available(_triton_dev), reason="Triton cannot run here")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 9, 33, 1001, 8195])
def test_triton_matches_reference(n, dtype):
    x = _spikes(n, dtype).to(_triton_dev)
    bits = sp.pack_bits(x, backend="triton")
    assert torch.equal(bits, sp.pack_bits_reference(x))
    y = sp.unpack_bits(bits, n, dtype, backend="triton")
    assert y.dtype == dtype and torch.equal(y.view(torch.uint8), x.view(torch.uint8))


def test_dispatch_picks_a_backend_that_runs():
    backend = sp.pack_backend("cpu")
    assert backend == ("cpp" if _has_cpp else "torch")
    x = _spikes(77, torch.float32)
    assert torch.equal(sp.unpack_bits(sp.pack_bits(x), 77, torch.float32), x)
