"""Run configuration: defaults, validation and the user-error type the CLI reports."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

from tcl_fast import defaults

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("cosine", "none")
AMP_MODES = ("none", "bf16", "fp16")
LIF_BACKENDS = ("auto", "cuda", "cpp", "triton", "torch")
CONTRAST_MODES = ("global", "local")  # torchrun: every rank's samples, or only this rank's
_DEFAULT_LR = {"sgd": 0.1, "adam": 5e-3, "adamw": 1e-3}
_DEFAULT_WD = {"sgd": 5e-4, "adam": 0.0, "adamw": 1e-2}
SEED_MAX = 2**32 - 1  # NumPy's limit; Python and torch seeds take any such value too


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints it and exits with code 2."""


@dataclass
class TrainConfig:
    """Everything that defines a run.

    Defaults are the digits/CPU recipe: 8 epochs of Adam (lr 5e-3, cosine) finish in
    well under a minute on 2 cores. lam/temperature/ce_mode/proj_dim are the best
    TCL setting of the measured sweep in results/sweep_digits.md (λ=0.1, τ=0.5,
    per-step CE, 128-d projection); a 32-d projection collapses at λ >= 0.5 with
    τ <= 0.1 there.
    """

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    model: str = "small"
    loss: str = "tcl"
    ce_mode: str = defaults.CE_MODE
    T: int = 4
    frames: int | None = None  # event datasets: frames per sample (default: T)
    lam: float = defaults.LAMBDA
    temperature: float = defaults.TEMPERATURE
    proj_dim: int = 128
    lambda_mse: float = 0.0
    phi: float = 1.0
    epochs: int = 8
    batch_size: int = 64
    lr: float | None = None  # None: 0.1 for sgd, 5e-3 for adam (digits), 1e-3 for adamw
    weight_decay: float | None = None  # None: 5e-4 sgd, 0 adam, 1e-2 adamw
    momentum: float = 0.9
    optimizer: str = "adam"
    scheduler: str = "cosine"
    amp: str = "none"
    backend: str = "auto"
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    workers: int = 0
    limit_batches: int | None = None  # train batches per epoch (quick checks)
    augment: bool = True
    progress: bool = True
    contrast: str = "global"  # torchrun: contrast against every rank's samples (global) or only local ones
    sync_bn: bool = False  # torchrun on CUDA: SyncBatchNorm
    pack_spikes: bool = True  # keep spikes saved for backward as bits (exact; tcl_fast.pack_spikes)
    fuse_bn: bool = False  # BN inside the LIF: less memory, one BN+LIF recompute in backward
    # Recompute spiking blocks in backward from their 1-bit inputs (tcl_fast.optimize_memory; exact).
    # Off by default: it costs step time (ResNet-19 T=4: 0.33x the step peak at 1.36x the time,
    # docs/memory.md), which the small default models don't need to pay.
    optimize_memory: bool = False
    skip_nonfinite: bool = False  # skip (and count) steps whose loss is NaN/inf instead of stopping

    def resolved_lr(self) -> float:
        return _DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def resolved_weight_decay(self) -> float:
        return _DEFAULT_WD[self.optimizer] if self.weight_decay is None else self.weight_decay

    def resolved_out(self) -> str:
        if self.out:
            return self.out
        return os.path.join("runs", f"{self.dataset}_{self.model}_{self.loss}_T{self.T}_seed{self.seed}")

    def resolved(self) -> "TrainConfig":
        """A copy with the defaults that depend on other options (lr, weight_decay,
        out) filled in: the values the run actually uses, as config.json records them."""
        return replace(self, lr=self.resolved_lr(), weight_decay=self.resolved_weight_decay(),
                       out=self.resolved_out())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def label(self) -> str:
        """Short human label for tables and plot legends."""
        s = self.loss
        if self.loss in ("tcl", "stcl"):
            s += f" λ={self.lam:g} τ={self.temperature:g}"
            if self.ce_mode != "mean":
                s += f" ce={self.ce_mode}"
        return s

    def validate(self) -> "TrainConfig":
        from tcl_fast.data import DATASETS
        from tcl_fast.models import MODELS
        from tcl_fast.training.objectives import CE_MODES, LOSSES

        def choice(name, value, options):
            if value not in options:
                raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")

        def integer(name, value, low=1, allow_none=False, high=None):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
            if high is not None and value > high:
                raise UserError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

        def number(name, value, *, positive=False, allow_none=False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value!r}")
            if positive and value <= 0:
                raise UserError(f"{name} must be > 0, got {value:g}")
            if value < 0:
                raise UserError(f"{name} must be >= 0, got {value:g}")

        choice("dataset", self.dataset, DATASETS)
        choice("model", self.model, MODELS)
        choice("loss", self.loss, LOSSES)
        choice("ce-mode", self.ce_mode, CE_MODES)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("scheduler", self.scheduler, SCHEDULERS)
        choice("amp", self.amp, AMP_MODES)
        choice("contrast", self.contrast, CONTRAST_MODES)
        choice("backend", self.backend, LIF_BACKENDS)
        integer("T", self.T)
        integer("frames", self.frames, allow_none=True)
        if self.frames is not None and self.frames < self.T:
            raise UserError(f"frames ({self.frames}) must be >= T ({self.T})")
        integer("epochs", self.epochs)
        integer("batch-size", self.batch_size)
        integer("proj-dim", self.proj_dim)
        integer("seed", self.seed, low=0, high=SEED_MAX)
        integer("workers", self.workers, low=0)
        integer("limit-batches", self.limit_batches, allow_none=True)
        number("lambda", self.lam)
        number("temperature", self.temperature, positive=True)
        number("lambda-mse", self.lambda_mse)
        if isinstance(self.phi, bool) or not isinstance(self.phi, (int, float)) or not math.isfinite(self.phi):
            raise UserError(f"phi must be a finite number, got {self.phi!r}")
        number("lr", self.lr, positive=True, allow_none=True)
        number("weight-decay", self.weight_decay, allow_none=True)
        number("momentum", self.momentum)
        if self.momentum >= 1:
            raise UserError(f"momentum must be in [0, 1) (at 1 or above SGD's steps grow without bound), "
                            f"got {self.momentum:g}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")
                                          or self.device == "mps"):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.dataset != "digits" and self.data_root is None:
            raise UserError(f"dataset {self.dataset!r} needs --data-root (the folder holding its files)")
        if self.data_root is not None and self.dataset != "digits" and not os.path.isdir(self.data_root):
            if not (self.download and self.dataset in ("cifar10", "cifar100")):
                raise UserError(f"data root {self.data_root!r} does not exist"
                                + (" (add --download to fetch CIFAR)" if self.dataset.startswith("cifar") else ""))
        return self
