"""Naive supervised-contrastive loss: the full N x N formula, written for clarity.

This is the oracle the fused backends are tested against. It builds the whole
similarity matrix, so it needs O(N^2) memory; use ``supcon_loss`` for real work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tcl_fast.defaults import TEMPERATURE as DEFAULT_TEMPERATURE


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=1)`` that also holds for rows whose squared norm leaves the dtype.

    Each row is first divided by its largest magnitude, so ``||x||^2`` can't
    overflow (|x| >~ 1e19 in float32 would normalise to 0) or underflow. The
    divisor is detached: normalising is scale-invariant, so the gradient is
    exactly F.normalize's. A zero row stays zero, and its gradient is F.normalize's
    1/eps = 1e12 per unit of upstream gradient (a row of zeros has no direction).
    """
    peak = x.detach().abs().amax(dim=1, keepdim=True)
    return F.normalize(x / torch.where(peak > 0, peak, torch.ones_like(peak)), dim=1)


def supcon_loss_reference(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    base_temperature: float | None = None,
    normalize: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """SupCon loss of ``z: [N, D]`` with integer ``labels: [N]`` (no input checks).

    For anchor i, positives are the other rows with the same label and the
    contrast set is every other row:

        l_i = -(1/|P(i)|) sum_{p in P(i)} [ s_ip - log sum_{a != i} exp(s_ia) ]

    with s = z_hat z_hat^T / temperature, scaled by temperature/base_temperature
    when ``base_temperature`` is given. The loss is the mean of l_i over anchors
    with at least one positive (0 when there is none).

    ``compute_dtype`` defaults to float32 (float64 for float64 input); tests
    pass the input's own low-precision dtype to get "plain PyTorch at that
    dtype" as an error yardstick. The result has ``compute_dtype`` (float32 or
    float64 by default).
    """
    if compute_dtype is None:
        compute_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    x = z.to(compute_dtype)
    if normalize:
        x = normalize_rows(x)
    logits = x @ x.T / temperature

    n = x.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=x.device)
    positive_mask = (labels[:, None] == labels[None, :]) & ~self_mask

    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    log_prob = logits - log_denominator[:, None]
    # where() rather than a multiply: with N = 1 log_prob is +inf and inf * 0 is NaN.
    positive_log_prob = torch.where(positive_mask, log_prob, torch.zeros_like(log_prob))
    num_positives = positive_mask.sum(dim=1)
    mean_log_prob_pos = positive_log_prob.sum(dim=1) / num_positives.clamp(min=1)

    scale = 1.0 if base_temperature is None else temperature / base_temperature
    per_anchor = -scale * mean_log_prob_pos
    has_positive = num_positives > 0
    per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / has_positive.sum().clamp(min=1)
