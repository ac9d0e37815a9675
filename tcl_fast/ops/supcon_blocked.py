"""Row-blocked off-diagonal log-sum-exp of a self-similarity matrix (plain torch).

The supervised-contrastive loss needs, for every row i of ``x: [N, D]``,

    lse_i = log sum_{j != i} exp(x_i . x_j / temperature)

This module computes it ``block_rows`` rows at a time, so the largest
temporary is a ``[block_rows, N]`` tile instead of the ``N x N`` matrix. The
backward recomputes each tile from the saved ``lse``. Because the matrix is
symmetric, row block b of the input gradient collects both its own rows'
softmax weights and the column contributions of every other row:

    dx_b = (1/temperature) sum_j (g_b P_bj + g_j P_jb) x_j,   P_ij = exp(s_ij - lse_i)

so no scatter across blocks is needed. Works on any device; ``supcon_loss``
uses it for CPU tensors (and for float64 on CUDA).
"""
from __future__ import annotations

import torch

# Target size of one [block_rows, N] float32 tile; the backward keeps two alive.
_TILE_BYTES = 32 * 1024 * 1024


def default_block_rows(n: int, element_size: int = 4) -> int:
    """Rows per block so a ``[rows, n]`` tile stays near ``_TILE_BYTES``."""
    return max(1, min(n, _TILE_BYTES // max(1, n * element_size)))


def _diagonal_index(start: int, stop: int, device: torch.device):
    rows = torch.arange(stop - start, device=device)
    return rows, rows + start


@torch.library.custom_op("tcl_fast::supcon_lse_blocked", mutates_args=())
def supcon_lse_blocked(x: torch.Tensor, inv_temperature: float, block_rows: int) -> torch.Tensor:
    """``lse[i] = log sum_{j != i} exp(x_i . x_j * inv_temperature)``; -inf when N = 1."""
    n = x.shape[0]
    lse = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        logits = torch.mm(x[start:stop], x.T).mul_(inv_temperature)
        logits[_diagonal_index(start, stop, x.device)] = float("-inf")
        # logsumexp done in place on the tile (torch.logsumexp would allocate a copy).
        row_max = logits.amax(dim=1, keepdim=True)
        row_max.masked_fill_(row_max == float("-inf"), 0.0)  # N = 1: keep exp(-inf) = 0
        lse[start:stop] = logits.sub_(row_max).exp_().sum(dim=1).log_().add_(row_max[:, 0])
    return lse


@supcon_lse_blocked.register_fake
def _(x, inv_temperature, block_rows):
    return x.new_empty(x.shape[0])


@torch.library.custom_op("tcl_fast::supcon_lse_blocked_backward", mutates_args=())
def supcon_lse_blocked_backward(
    x: torch.Tensor, lse: torch.Tensor, grad_lse: torch.Tensor, inv_temperature: float,
    block_rows: int,
) -> torch.Tensor:
    """Gradient of ``sum_i grad_lse[i] * lse[i]`` with respect to ``x``."""
    n = x.shape[0]
    grad_x = torch.empty_like(x)
    grad_lse = grad_lse.to(x.dtype)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        logits = torch.mm(x[start:stop], x.T).mul_(inv_temperature)
        # Row part g_b P_bj and column part g_j P_jb (s is symmetric, so s_jb = s_bj).
        weights = (logits - lse[start:stop, None]).exp_().mul_(grad_lse[start:stop, None])
        weights += logits.sub_(lse[None, :]).exp_().mul_(grad_lse[None, :])
        # Set (not multiply) the diagonal: with N = 1, lse = -inf and exp(s - lse) = inf.
        weights[_diagonal_index(start, stop, x.device)] = 0.0
        grad_x[start:stop] = torch.mm(weights, x).mul_(inv_temperature)
    return grad_x


@supcon_lse_blocked_backward.register_fake
def _(x, lse, grad_lse, inv_temperature, block_rows):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, inv_temperature, block_rows = inputs
    ctx.save_for_backward(x, output)
    ctx.inv_temperature = inv_temperature
    ctx.block_rows = block_rows


def _backward(ctx, grad_lse):
    x, lse = ctx.saved_tensors
    grad_x = supcon_lse_blocked_backward(x, lse, grad_lse, ctx.inv_temperature, ctx.block_rows)
    return grad_x, None, None


supcon_lse_blocked.register_autograd(_backward, setup_context=_setup_context)
