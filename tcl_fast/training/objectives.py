"""Training objectives selected by ``--loss``: ce, tet, tcl, stcl.

An objective takes the model output(s) and the labels and returns
``(total_loss, parts)``; ``parts`` holds detached tensors for logging.

* ``ce``   - cross-entropy on the output averaged over time steps.
* ``tet``  - mean over steps of per-step CE (TET), optionally
             ``+ lambda_mse * MSE(logits, phi)``.
* ``tcl``  - CE (``ce_mode`` "mean" or "tet") + ``lam * tcl_loss`` over the
             per-step projections of all T x B samples.
* ``stcl`` - two augmented views through the same network; CE averaged over
             both views + ``lam * stcl_loss`` over all 2 x T x B projections.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tcl_fast.losses import stcl_loss, tcl_loss
from tcl_fast import defaults
from tcl_fast.models import SNNOutput

LOSSES = ("ce", "tet", "tcl", "stcl")
CE_MODES = ("mean", "tet")
Gather = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of the time-averaged output (the usual SNN readout)."""
    return F.cross_entropy(logits.float().mean(0), labels)


def per_step_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over steps of per-step CE (TET): every step must classify on its own."""
    T, B, K = logits.shape
    return F.cross_entropy(logits.float().reshape(T * B, K), labels.repeat(T))


def tet_loss(logits: torch.Tensor, labels: torch.Tensor, lambda_mse: float = 0.0,
             phi: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ce = per_step_ce(logits, labels)
    parts = {"ce": ce.detach()}
    if lambda_mse > 0:
        # TET's regulariser pulls every output towards the constant phi.
        mse = F.mse_loss(logits.float(), torch.full_like(logits, phi, dtype=torch.float32))
        parts["mse"] = mse.detach()
        return ce + lambda_mse * mse, parts
    return ce, parts


def _check_number(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


@dataclass(frozen=True)
class Objective:
    """A configured training loss; call it with the model output(s) and labels.

    For ``stcl`` pass a pair ``(output_view_a, output_view_b)``; every other
    objective takes one ``SNNOutput``.
    """

    name: str = "tcl"
    lam: float = defaults.LAMBDA
    temperature: float = defaults.TEMPERATURE
    ce_mode: str = defaults.CE_MODE
    lambda_mse: float = 0.0
    phi: float = 1.0
    # (features [T, B, D], labels [B]) -> the batch the contrastive term sees; the trainer
    # hands in tcl_fast.training.distributed.gather_for_contrast to contrast against every
    # rank's samples under torchrun. None: this batch as it is.
    gather: Gather | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss name {self.name!r}; choose one of {', '.join(LOSSES)}")
        if self.ce_mode not in CE_MODES:
            raise ValueError(f"ce_mode must be one of {', '.join(CE_MODES)}, got {self.ce_mode!r}")
        if self.gather is not None and not callable(self.gather):
            raise TypeError(f"gather must be a function (features, labels) -> (features, labels), "
                            f"got {type(self.gather).__name__}")
        _check_number("lambda", self.lam)
        _check_number("temperature", self.temperature, positive=True)
        _check_number("lambda_mse", self.lambda_mse)
        if isinstance(self.phi, bool) or not isinstance(self.phi, (int, float)) or not math.isfinite(self.phi):
            raise ValueError(f"phi must be a finite number, got {self.phi!r}")

    @property
    def two_views(self) -> bool:
        return self.name == "stcl"

    def _gather(self, features: torch.Tensor, labels: torch.Tensor):
        return (features, labels) if self.gather is None else self.gather(features, labels)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return per_step_ce(logits, labels) if self.ce_mode == "tet" else mean_ce(logits, labels)

    def __call__(self, outputs, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.name == "stcl":
            if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2
                    and all(isinstance(o, SNNOutput) for o in outputs)):
                raise TypeError("stcl needs a pair of SNNOutput (one per augmented view)")
            a, b = outputs
            ce = 0.5 * (self._ce(a.logits, labels) + self._ce(b.logits, labels))  # CE: local labels
            # Gather both views in one call ([2T, B, D] along B) so they keep the same rank order.
            T = a.features.shape[0]
            both, glabels = self._gather(torch.cat([a.features.float(), b.features.float()], 0), labels)
            con = stcl_loss(both[:T], both[T:], glabels, temperature=self.temperature)
            return ce + self.lam * con, {"ce": ce.detach(), "stcl": con.detach()}
        if not isinstance(outputs, SNNOutput):
            raise TypeError(f"{self.name} needs one SNNOutput, got {type(outputs).__name__}")
        if self.name == "ce":
            ce = mean_ce(outputs.logits, labels)
            return ce, {"ce": ce.detach()}
        if self.name == "tet":
            return tet_loss(outputs.logits, labels, self.lambda_mse, self.phi)
        ce = self._ce(outputs.logits, labels)
        feats, glabels = self._gather(outputs.features.float(), labels)
        con = tcl_loss(feats, glabels, temperature=self.temperature)
        return ce + self.lam * con, {"ce": ce.detach(), "tcl": con.detach()}


def build_objective(name: str, *, lam: float = defaults.LAMBDA, temperature: float = defaults.TEMPERATURE,
                    ce_mode: str = defaults.CE_MODE, lambda_mse: float = 0.0, phi: float = 1.0,
                    gather: Gather | None = None) -> Objective:
    return Objective(name, lam, temperature, ce_mode, lambda_mse, phi, gather)


__all__ = ["LOSSES", "CE_MODES", "Objective", "build_objective", "mean_ce", "per_step_ce", "tet_loss"]
