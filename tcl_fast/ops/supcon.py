"""Supervised-contrastive (SupCon) loss without the N x N similarity matrix.

``supcon_loss`` validates its input and splits the loss into two parts:

* the contrast term ``lse_i = log sum_{a != i} exp(s_ia)``, the only part that
  touches all pairs, computed by a fused op (Triton kernels on CUDA, a
  row-blocked torch op on CPU) that keeps O(N*D + N) extra memory;
* the positive term, which needs no pairs at all:
  ``sum_{p in P(i)} z_i . z_p = z_i . (S_{y_i} - z_i)`` with per-class sums S,
  computed with ordinary differentiable torch ops in O(N*D).

Backends (``backend=``):

* ``triton``    - tcl_fast/ops/supcon_triton.py (CUDA, or CPU under TRITON_INTERPRET=1)
* ``blocked``   - tcl_fast/ops/supcon_blocked.py (any device, plain torch)
* ``reference`` - tcl_fast/ops/supcon_reference.py (naive N x N formula)
* ``auto``      - triton for CUDA tensors when Triton is importable, else blocked
"""
from __future__ import annotations

import contextlib
import math

import torch

from tcl_fast import _extension
from tcl_fast.ops.supcon_blocked import default_block_rows, supcon_lse_blocked
from tcl_fast.ops.supcon_reference import DEFAULT_TEMPERATURE, normalize_rows, supcon_loss_reference

BACKENDS = ("auto", "triton", "blocked", "reference")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
def check_temperature(name: str, value, allow_none: bool = False) -> float | None:
    """Return ``value`` as a positive finite float; raise naming ``name`` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def check_embeddings(name: str, z) -> None:
    """Raise unless ``z`` is a non-empty 2-D floating tensor."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {z.dtype}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(z.shape)}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise ValueError(f"{name} must have N >= 1 rows and D >= 1 columns, got {tuple(z.shape)}")


def check_labels(labels, length: int, device: torch.device, length_name: str = "N") -> None:
    """Raise unless ``labels`` is a 1-D integer tensor of ``length`` on ``device``."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.shape[0] != length:
        raise ValueError(f"labels has length {labels.shape[0]}, expected {length_name} = {length}")
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device} but the features are on {device}")


# --------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------
def _triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _assume_constant_result(fn):
    """torch.compiler.assume_constant_result, without its import of torch._dynamo
    (2 s in every process that imports tcl_fast, `tcl-fast eval` and export included):
    the decorator only sets this mark, which torch.compile reads when it traces a call
    (tests/ops/test_supcon.py checks that torch's decorator still sets just this)."""
    fn._dynamo_marked_constant = True
    return fn


# Plain Python facts about the install: torch.compile may treat them as constants.
@_assume_constant_result
def _triton_usable() -> bool:
    return _extension.has_triton()


@_assume_constant_result
def _tf32_allowed() -> bool:
    return (torch.backends.cuda.matmul.allow_tf32
            or torch.get_float32_matmul_precision() != "highest")


def supcon_backend_available(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` can run on tensors of ``device`` in this install."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("auto", "blocked", "reference"):
        return True
    if not _triton_usable():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _triton_interpreting())


def resolve_supcon_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turn ``auto`` into a concrete backend; raise if an explicit one can't run."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if (device.type == "cuda" and dtype in _TRITON_DTYPES
                and supcon_backend_available("triton", device)):
            return "triton"
        return "blocked"
    if not supcon_backend_available(backend, device):
        raise RuntimeError(
            f"supcon backend {backend!r} is not available for {device.type} tensors "
            "(triton needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors)"
        )
    if backend == "triton" and dtype not in _TRITON_DTYPES:
        raise TypeError(f"backend 'triton' takes float16, bfloat16 or float32 z, got {dtype}")
    return backend


# --------------------------------------------------------------------------
# Fused loss
# --------------------------------------------------------------------------
def _label_groups(labels: torch.Tensor) -> torch.Tensor:
    """Map labels of any integer range to dense group ids in [0, N).

    Same result as ``torch.unique(labels, return_inverse=True)[1]``, but built
    from a sort so the output size is static: no host sync on CUDA and no graph
    break under torch.compile.
    """
    sorted_labels, order = torch.sort(labels)
    starts_group = torch.ones_like(sorted_labels, dtype=torch.bool)
    starts_group[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_sorted = torch.cumsum(starts_group, dim=0) - 1
    return torch.empty_like(group_sorted).scatter_(0, order, group_sorted)


def _fused_supcon(z, labels, temperature, base_temperature, normalize, backend, block_rows):
    compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    n, d = z.shape
    x = z.to(compute_dtype)
    if normalize:
        x = normalize_rows(x)
    inv_temperature = 1.0 / temperature

    if backend == "triton":
        from tcl_fast.ops.supcon_triton import supcon_lse_triton

        # Half-precision inputs feed the tensor cores in their own dtype; the
        # positive term then uses the same rounded rows so both terms agree.
        x_dot = x.to(z.dtype)
        lse = supcon_lse_triton(x_dot, inv_temperature, _tf32_allowed())
        x = x_dot.to(compute_dtype)
    else:
        rows = default_block_rows(n, x.element_size()) if block_rows is None else block_rows
        lse = supcon_lse_blocked(x, inv_temperature, rows)

    group = _label_groups(labels)
    class_sum = x.new_zeros(n, d).index_add_(0, group, x)
    class_count = torch.zeros(n, dtype=torch.int64, device=x.device).index_add_(
        0, group, torch.ones_like(group)
    )
    num_positives = class_count[group] - 1
    positive_logit_sum = (x * (class_sum[group] - x)).sum(dim=1) * inv_temperature

    has_positive = num_positives > 0
    per_anchor = lse.to(compute_dtype) - positive_logit_sum / num_positives.clamp(min=1)
    # where(), not a multiply: an anchor without positives may have lse = -inf (N = 1).
    per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    return per_anchor.sum() * scale / has_positive.sum().clamp(min=1)


def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    base_temperature: float | None = None,
    normalize: bool = True,
    *,
    backend: str = "auto",
    block_rows: int | None = None,
) -> torch.Tensor:
    """Supervised-contrastive loss of ``z: [N, D]`` with integer ``labels: [N]``.

    With z_hat = z / ||z|| (``normalize_rows``: F.normalize after scaling each row
    by its largest magnitude, so rows beyond ~1e19 in float32 still normalise;
    skipped when ``normalize=False``; a zero row stays zero, with F.normalize's
    gradient 1/eps = 1e12 there)
    and s_ij = z_hat_i . z_hat_j / temperature, each anchor i has positives
    P(i) = {p != i : y_p = y_i} and contrast set A(i) = {a != i}:

        l_i = -(1/|P(i)|) sum_{p in P(i)} [ s_ip - log sum_{a in A(i)} exp(s_ia) ]

    multiplied by temperature / base_temperature when ``base_temperature`` is
    given (the SupContrast convention). Returns the mean of l_i over anchors
    with at least one positive; anchors without one are left out. If no anchor
    has a positive the loss is 0 with zero gradient (still attached to ``z``).

    Labels may be any integers (negative, sparse). Everything is accumulated in
    float32 whatever ``z``'s dtype (float64 stays float64), also under
    ``torch.autocast``; the result is a float32 scalar (float64 for float64 z).
    The N x N matrix is never built except by ``backend="reference"``. On
    CUDA, float16/bfloat16 rows feed the tensor cores in their own dtype;
    float32 uses TF32 only when torch allows it for matmuls
    (``torch.set_float32_matmul_precision("high")``), else exact fp32 FMAs.

    Non-finite values in ``z`` are not checked (a check would force a host sync
    on CUDA): NaN or inf in any row makes the loss NaN.

    ``backend``: "auto", "triton", "blocked" or "reference" (see module doc);
    an explicitly requested backend that can't run raises RuntimeError.
    ``block_rows`` overrides the row-block size of the blocked backend.
    Raises TypeError/ValueError naming the argument for malformed input.
    """
    check_embeddings("z", z)
    n = z.shape[0]
    check_labels(labels, n, z.device)
    temperature = check_temperature("temperature", temperature)
    base_temperature = check_temperature("base_temperature", base_temperature, allow_none=True)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, int)
                                   or block_rows < 1):
        raise ValueError(f"block_rows must be a positive int or None, got {block_rows!r}")
    backend = resolve_supcon_backend(backend, z.device, z.dtype)

    # Our own float32 accumulation must not be re-cast by an enclosing autocast.
    no_autocast = (torch.autocast(z.device.type, enabled=False)
                   if z.device.type in ("cpu", "cuda") else contextlib.nullcontext())
    with no_autocast:
        if backend == "reference":
            return supcon_loss_reference(z, labels, temperature, base_temperature, normalize)
        return _fused_supcon(z, labels, temperature, base_temperature, normalize, backend,
                             block_rows)
