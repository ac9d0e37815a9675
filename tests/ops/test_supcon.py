"""supcon_loss backends (Triton, row-blocked) against the naive full-matrix oracle."""
from __future__ import annotations

import math

import pytest
import torch

from tcl_fast.ops import supcon as supcon_module
from tcl_fast.ops.supcon import resolve_supcon_backend, supcon_loss
from tcl_fast.ops.supcon_blocked import (
    default_block_rows,
    supcon_lse_blocked,
    supcon_lse_blocked_backward,
)
from tcl_fast.ops.supcon_reference import supcon_loss_reference

# The interpreter's numpy emits these for the N = 1 row (log2(0), masked NaN lanes).
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


# With a GPU the Triton kernels are tested on CUDA tensors; without one, on CPU
# tensors through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(
    not supcon_module.supcon_backend_available("triton", TRITON_DEVICE),
    reason="Triton backend needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors",
)


def _device(backend: str) -> torch.device:
    return TRITON_DEVICE if backend == "triton" else torch.device("cpu")


def _labels(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "random":  # 5 classes, some of them possibly singletons
        return torch.randint(0, 5, (n,), generator=generator)
    if kind == "single_class":
        return torch.full((n,), 7)
    if kind == "distinct":  # no anchor has a positive
        return torch.randperm(n, generator=generator)
    if kind == "singletons":  # a pair class, then classes with one member each
        labels = torch.arange(n)
        labels[:2] = 0
        return labels
    if kind == "sparse_negative":  # labels far from 0..K-1, negative included
        return torch.randint(0, 3, (n,), generator=generator) * 1000 - 5000
    raise ValueError(kind)


def _loss_and_grad(fn, z: torch.Tensor, device: torch.device | str = "cpu"):
    """fn(z) and its gradient, z copied to ``device``; results come back on the CPU."""
    z = z.detach().clone().to(device).requires_grad_(True)
    loss = fn(z)
    loss.backward()
    return loss.detach().cpu(), z.grad.cpu()


def _oracle(z, labels, temperature, base_temperature=None, normalize=True):
    return _loss_and_grad(
        lambda x: supcon_loss_reference(x, labels, temperature, base_temperature, normalize),
        z.double(),
    )


# (N, D, label kind, temperature, base_temperature, normalize)
CASES = [
    (1, 5, "single_class", 0.1, None, True),
    (37, 24, "random", 0.1, None, True),          # N, D not tile multiples
    (37, 24, "random", 0.05, None, True),
    (37, 24, "random", 1.0, None, True),
    (45, 9, "singletons", 0.2, None, True),
    (130, 17, "single_class", 0.5, None, True),   # 3 row blocks of 64
    (33, 12, "distinct", 0.1, None, True),
    (50, 20, "sparse_negative", 0.1, 0.07, True),
    (29, 6, "random", 0.3, None, False),
    (70, 300, "random", 0.1, None, True),         # D > 256: chunked-D kernels
]
CASE_IDS = [f"N{c[0]}-D{c[1]}-{c[2]}-t{c[3]}-b{c[4]}-norm{c[5]}" for c in CASES]


def _case_inputs(case, dtype=torch.float64):
    n, d, kind, *_ = case
    generator = torch.Generator().manual_seed(n * 1000 + d)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64)
    if kind == "single_class" and n > 1:
        z[0] *= 3.0  # unequal norms so normalisation matters
    return z.to(dtype), _labels(kind, n, generator)


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_triton_matches_reference(case):
    _, _, _, temperature, base_temperature, normalize = case
    z, labels = _case_inputs(case, torch.float32)
    expected_loss, expected_grad = _oracle(z, labels, temperature, base_temperature, normalize)
    loss, grad = _loss_and_grad(
        lambda x: supcon_loss(x, labels.to(x.device), temperature, base_temperature, normalize,
                              backend="triton"),
        z, TRITON_DEVICE,
    )
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    grad_scale = expected_grad.abs().max().item() + 1e-30
    torch.testing.assert_close(loss.double(), expected_loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=2e-5 * grad_scale)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("block_rows", [None, 16])
def test_blocked_matches_reference(case, block_rows):
    _, _, _, temperature, base_temperature, normalize = case
    z, labels = _case_inputs(case, torch.float64)
    expected_loss, expected_grad = _oracle(z, labels, temperature, base_temperature, normalize)
    loss, grad = _loss_and_grad(
        lambda x: supcon_loss(x, labels, temperature, base_temperature, normalize,
                              backend="blocked", block_rows=block_rows),
        z,
    )
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_blocked_float32_matches_reference():
    z, labels = _case_inputs(CASES[1], torch.float32)
    expected_loss, expected_grad = _oracle(z, labels, 0.1)
    loss, grad = _loss_and_grad(lambda x: supcon_loss(x, labels, 0.1, backend="blocked",
                                                      block_rows=10), z)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected_loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4,
                               atol=2e-5 * expected_grad.abs().max().item())


@pytest.mark.parametrize("backend", ["reference", "blocked"])
@pytest.mark.parametrize("normalize,base_temperature", [(True, None), (False, 0.07)])
def test_gradcheck_float64(backend, normalize, base_temperature):
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(9, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0, 2])  # class 3 has a single member
    assert torch.autograd.gradcheck(
        lambda x: supcon_loss(x, labels, 0.5, base_temperature, normalize, backend=backend,
                              block_rows=4 if backend == "blocked" else None),
        (z,),
    )


def test_gradcheck_blocked_lse_op_with_arbitrary_upstream_grad():
    # The op on its own: any upstream gradient, not only the loss's 1/M weights.
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: supcon_lse_blocked(t, 1.7, 3), (x,))


@needs_triton
def test_triton_lse_op_with_arbitrary_upstream_grad():
    from tcl_fast.ops.supcon_triton import supcon_lse_triton

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(70, 20, generator=generator)
    upstream = torch.randn(70, generator=generator)
    xt = x.clone().to(TRITON_DEVICE).requires_grad_(True)
    lse = supcon_lse_triton(xt, 2.0, False)
    (lse * upstream.to(TRITON_DEVICE)).sum().backward()
    lse, xt = lse.cpu(), xt.grad.cpu()
    xr = x.double().requires_grad_(True)
    lse_ref = supcon_lse_blocked(xr, 2.0, 70)
    (lse_ref * upstream.double()).sum().backward()
    torch.testing.assert_close(lse.double(), lse_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xt.double(), xr.grad, rtol=1e-4, atol=1e-5)


def test_blocked_lse_equals_logsumexp_of_full_matrix():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(23, 5, dtype=torch.float64, generator=generator)
    logits = (x @ x.T * 3.0).fill_diagonal_(float("-inf"))
    torch.testing.assert_close(supcon_lse_blocked(x, 3.0, 5), torch.logsumexp(logits, 1))


def _largest_operand(fn) -> int:
    """Most elements in any tensor passed to an aten op while fn runs (fwd + bwd).

    fn runs once first, unprofiled: on a GPU, Triton's autotuner benchmarks its
    configs on the first call and allocates a 256 MB L2-flush buffer of its own.
    """
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        fn()
    sizes = [math.prod(shape) for event in prof.events() for shape in event.input_shapes
             if shape and all(isinstance(dim, int) for dim in shape)]
    return max(sizes)


@pytest.mark.parametrize("backend", ["blocked", pytest.param("triton", marks=needs_triton)])
def test_fused_backends_never_build_the_n_by_n_matrix(backend):
    n, d, block_rows = 300, 8, 16
    generator = torch.Generator().manual_seed(10)
    device = _device(backend)
    z = torch.randn(n, d, generator=generator).to(device).requires_grad_(True)
    labels = torch.randint(0, 5, (n,), generator=generator).to(device)

    def run(name):
        return lambda: supcon_loss(z, labels, backend=name, block_rows=block_rows).backward()

    # Row tiles of the blocked path, or [N, D] rows (the interpreter copies their
    # storage as N*D*4 bytes); either way far below N^2 = 90000.
    assert _largest_operand(run(backend)) <= max(block_rows * n, 4 * n * d)
    assert _largest_operand(run("reference")) >= n * n  # the probe does see an N x N tensor


# --------------------------------------------------------------------------
# Low precision: error vs a float64 oracle within 2x plain PyTorch at that dtype
# --------------------------------------------------------------------------
LOW_PRECISION_BACKENDS = [
    pytest.param("triton", marks=needs_triton),
    "blocked",
]


@pytest.mark.parametrize("backend", LOW_PRECISION_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_low_precision_error_within_twice_plain_pytorch(backend, dtype, temperature):
    generator = torch.Generator().manual_seed(int(temperature * 100))
    z = torch.randn(150, 40, generator=generator).to(dtype)
    labels = torch.randint(0, 4, (150,), generator=generator)
    expected_loss, expected_grad = _oracle(z, labels, temperature)
    plain_loss, plain_grad = _loss_and_grad(
        lambda x: supcon_loss_reference(x, labels, temperature, compute_dtype=dtype), z
    )
    loss, grad = _loss_and_grad(
        lambda x: supcon_loss(x, labels.to(x.device), temperature, backend=backend), z,
        _device(backend),
    )
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype

    # Floors guard against plain PyTorch landing near the oracle by luck: the loss
    # is float32 (a few float32 ulps); the gradient is returned in `dtype`, so
    # rounding its largest entry once is unavoidable.
    loss_floor = 1e-6 * abs(expected_loss.item())
    grad_floor = 0.5 * torch.finfo(dtype).eps * expected_grad.abs().max().item()
    loss_err = abs(loss.double().item() - expected_loss.item())
    plain_loss_err = abs(plain_loss.double().item() - expected_loss.item())
    grad_err = (grad.double() - expected_grad).abs().max().item()
    plain_grad_err = (plain_grad.double() - expected_grad).abs().max().item()
    assert loss_err <= 2 * plain_loss_err + loss_floor, (loss_err, plain_loss_err)
    assert grad_err <= 2 * plain_grad_err + grad_floor, (grad_err, plain_grad_err)


def test_autocast_bfloat16_keeps_float32_accumulation():
    z, labels = _case_inputs(CASES[1], torch.float32)
    expected = supcon_loss(z, labels, backend="blocked")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = supcon_loss(z, labels, backend="blocked")
        inside_ref = supcon_loss(z, labels, backend="reference")
    assert inside.dtype == torch.float32 and inside_ref.dtype == torch.float32
    torch.testing.assert_close(inside, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inside_ref, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# Degenerate label sets
# --------------------------------------------------------------------------
ALL_BACKENDS = ["reference", "blocked", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("n", [1, 5])
def test_no_positive_gives_zero_loss_and_zero_grad(backend, n):
    z = torch.randn(n, 8, device=_device(backend), requires_grad=True)
    loss = supcon_loss(z, torch.arange(n, device=z.device) * 3, backend=backend)
    assert loss.requires_grad  # still attached to the graph
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(z.grad, torch.zeros_like(z))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_anchors_without_positives_are_left_out_of_the_mean(backend):
    generator = torch.Generator().manual_seed(8)
    z = torch.randn(6, 5, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # rows 4 and 5 have no positive
    device = _device(backend)
    loss = supcon_loss(z.to(device), labels.to(device), 0.2, backend=backend).cpu()
    # Hand-rolled per-anchor terms for the 4 anchors that have a positive.
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    logits = zn @ zn.T / 0.2
    terms = []
    for i, p in [(0, 1), (1, 0), (2, 3), (3, 2)]:
        others = torch.cat([logits[i, :i], logits[i, i + 1:]])
        terms.append(torch.logsumexp(others, 0) - logits[i, p])
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_non_contiguous_z(backend, normalize):
    generator = torch.Generator().manual_seed(9)
    z = torch.randn(12, 30, generator=generator).T  # [30, 12], column-major
    labels = torch.randint(0, 3, (30,), generator=generator)
    expected_loss, expected_grad = _oracle(z.contiguous(), labels, 0.5, normalize=normalize)
    def loss_fn(x):
        assert not x.is_contiguous()  # clone() keeps the column-major strides
        return supcon_loss(x, labels.to(x.device), 0.5, normalize=normalize, backend=backend)

    loss, grad = _loss_and_grad(loss_fn, z, _device(backend))
    torch.testing.assert_close(loss.double(), expected_loss, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_base_temperature_scales_loss():
    z, labels = _case_inputs(CASES[1], torch.float64)
    plain = supcon_loss(z, labels, 0.1, backend="blocked")
    scaled = supcon_loss(z, labels, 0.1, 0.07, backend="blocked")
    torch.testing.assert_close(scaled, plain * (0.1 / 0.07))


def test_nan_in_z_propagates():
    z = torch.randn(10, 4)
    z[3, 1] = float("nan")
    assert torch.isnan(supcon_loss(z, torch.zeros(10, dtype=torch.long), backend="blocked"))


def test_output_dtype_follows_accumulation_dtype():
    labels = torch.tensor([0, 0, 1, 1])
    assert supcon_loss(torch.randn(4, 3, dtype=torch.bfloat16), labels).dtype == torch.float32
    assert supcon_loss(torch.randn(4, 3, dtype=torch.float64), labels).dtype == torch.float64


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------
def test_auto_uses_blocked_for_cpu_tensors():
    assert resolve_supcon_backend("auto", torch.device("cpu"), torch.float32) == "blocked"


@needs_triton
def test_triton_backend_rejects_float64():
    with pytest.raises(TypeError, match="triton"):
        supcon_loss(torch.randn(4, 3, dtype=torch.float64, device=TRITON_DEVICE),
                    torch.zeros(4, dtype=torch.long, device=TRITON_DEVICE), backend="triton")


def test_unavailable_backend_raises(monkeypatch):
    monkeypatch.setattr(supcon_module, "_triton_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="not available"):
        supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), backend="triton")


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend"):
        supcon_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), backend="cuda")


def test_default_block_rows_bounds_tile_size():
    for n in (1, 7, 512, 16384, 65536, 10**6):
        rows = default_block_rows(n)
        assert 1 <= rows <= n
        assert rows == 1 or rows * n * 4 <= 32 * 1024 * 1024


# --------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------
def test_opcheck_blocked_ops():
    x = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(supcon_lse_blocked, (x, 2.0, 4))
    lse = supcon_lse_blocked(x.detach(), 2.0, 4)
    torch.library.opcheck(supcon_lse_blocked_backward,
                          (x.detach(), lse, torch.randn(11, dtype=torch.float64), 2.0, 4))


@needs_triton
def test_opcheck_triton_ops():
    from tcl_fast.ops.supcon_triton import supcon_lse_triton, supcon_lse_triton_backward

    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    x = torch.randn(20, 16, device=TRITON_DEVICE, requires_grad=True)
    torch.library.opcheck(supcon_lse_triton, (x, 2.0, False), test_utils=utils)
    lse = supcon_lse_triton(x.detach(), 2.0, False)
    torch.library.opcheck(supcon_lse_triton_backward,
                          (x.detach(), lse, torch.randn(20, device=TRITON_DEVICE), 2.0, False),
                          test_utils=utils)


_SM90_COMPILE_SCRIPT = r"""
import itertools, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tcl_fast.ops import supcon_triton as st

common = {"N": "i32", "D": "i32", "stride_n": "i32"}
for dtype, (block_d, one_chunk) in itertools.product(("bf16", "fp32"), ((128, True), (128, False))):
    kernels = [
        (st._supcon_lse_fwd_kernel, dict(common, X="*" + dtype, LSE="*fp32", scale_log2="fp32")),
        (st._supcon_lse_bwd_kernel, dict(common, X="*" + dtype, LSE="*fp32", G="*fp32",
                                         G_SCALE="*fp32", DX="*" + dtype, stride_dx="i32",
                                         inv_temperature="fp32", scale_log2="fp32")),
    ]
    for kernel, signature in kernels:
        constants = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_D=block_d, ONE_D_CHUNK=one_chunk,
                         ALLOW_TF32=True, UPCAST_DOT=False)
        signature.update({name: "constexpr" for name in constants})
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=8, num_stages=3))
        assert "wgmma" in compiled.asm["ptx"], (kernel.__name__, dtype, "no tensor-core MMA")
print("compiled OK")
"""


def test_triton_kernels_compile_for_sm90_without_a_gpu():
    # The interpreter never runs Triton's GPU code generation; compile the real
    # kernels for Hopper (sm_90) ahead of time so a codegen error shows up in CI.
    import os
    import pathlib
    import subprocess
    import sys

    triton = pytest.importorskip("triton")
    import inspect

    from triton.compiler import ASTSource
    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        pytest.skip(f"Triton {triton.__version__}'s ahead-of-time compile API predates ASTSource(constexprs=)")
    ptxas = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's bundled ptxas is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SM90_COMPILE_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled OK" in proc.stdout


@pytest.mark.parametrize("backend", ["blocked", pytest.param("triton", marks=needs_triton)])
def test_compiles_with_aot_eager(backend):
    z, labels = _case_inputs(CASES[1], torch.float32)
    compiled = torch.compile(
        lambda x, y: supcon_loss(x, y, 0.1, backend=backend), backend="aot_eager",
        fullgraph=True,
    )
    expected_loss, expected_grad = _loss_and_grad(
        lambda x: supcon_loss(x, labels, 0.1, backend="blocked"), z
    )
    loss, grad = _loss_and_grad(lambda x: compiled(x, labels.to(x.device)), z, _device(backend))
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
_Z = torch.randn(4, 3)
_Y = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(z=_Z.tolist()), TypeError, "z must be a torch.Tensor"),
        (dict(z=_Z[0]), ValueError, "z must be 2-D"),
        (dict(z=_Z[None]), ValueError, "z must be 2-D"),
        (dict(z=torch.ones(4, 3, dtype=torch.long)), TypeError, "z must be float"),
        (dict(z=torch.randn(0, 3), labels=_Y[:0]), ValueError, "N >= 1"),
        (dict(z=torch.randn(4, 0)), ValueError, "D >= 1"),
        (dict(labels=[0, 0, 1, 1]), TypeError, "labels must be a torch.Tensor"),
        (dict(labels=_Y.float()), TypeError, "labels must have an integer dtype"),
        (dict(labels=_Y.bool()), TypeError, "labels must have an integer dtype"),
        (dict(labels=_Y[None]), ValueError, "labels must be 1-D"),
        (dict(labels=_Y[:3]), ValueError, "labels has length 3"),
        (dict(labels=_Y.to("meta")), ValueError, "labels is on meta"),
        (dict(temperature=0.0), ValueError, "temperature must be positive"),
        (dict(temperature=-0.1), ValueError, "temperature must be positive"),
        (dict(temperature=math.inf), ValueError, "temperature must be positive"),
        (dict(temperature=math.nan), ValueError, "temperature must be positive"),
        (dict(temperature="0.1"), TypeError, "temperature must be a positive float"),
        (dict(temperature=True), TypeError, "temperature must be a positive float"),
        (dict(base_temperature=0.0), ValueError, "base_temperature must be positive"),
        (dict(normalize=1), TypeError, "normalize must be a bool"),
        (dict(block_rows=0), ValueError, "block_rows"),
    ],
)
def test_bad_input_raises(kwargs, error, match):
    args = dict(z=_Z, labels=_Y)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        supcon_loss(**args)


# --------------------------------------------------------------------------
# Rows at the edges of float32
# --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_huge_and_tiny_rows_normalise_like_moderate_ones(backend, scale):
    # ||z||^2 overflows (1e20) or underflows (1e-30) float32: the rows are scaled before normalising.
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(8, 6, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    device = _device(backend)
    want = supcon_loss(z.to(device), labels.to(device), 0.5, backend=backend)
    zs = (z * scale).to(device).requires_grad_()
    got = supcon_loss(zs, labels.to(device), 0.5, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()
    assert torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_row_has_f_normalize_gradient(backend):
    # Documented: a zero row stays zero and gets F.normalize's 1/eps gradient, finite.
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    z[0] = 0
    z = z.to(_device(backend)).requires_grad_()
    supcon_loss(z, torch.tensor([0, 0, 1, 1], device=z.device), backend=backend).backward()
    assert torch.isfinite(z.grad).all() and z.grad[0].abs().max() > 1e9


def test_constant_result_mark_is_the_one_torch_compile_sets():
    """supcon marks its install facts constant without importing torch._dynamo: the mark
    must be exactly what torch.compiler.assume_constant_result sets."""
    def probe():
        return True
    before = dict(vars(probe))
    assert torch.compiler.assume_constant_result(probe) is probe
    assert {k: v for k, v in vars(probe).items() if k not in before} == {"_dynamo_marked_constant": True}
    for fn in (supcon_module._triton_usable, supcon_module._tf32_allowed):
        assert fn._dynamo_marked_constant is True
