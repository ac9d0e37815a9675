"""The ``tcl-fast`` command: ``train``, ``eval``, ``compare`` and ``export`` subcommands.

User mistakes print one ``error: ...`` line and return exit code 2 (no traceback);
Ctrl-C during training keeps the last completed epoch's checkpoint and returns 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, replace

from tcl_fast.defaults import E_AC_PJ, E_MAC_PJ
from tcl_fast.training.config import TrainConfig, UserError

# Options that may differ from the checkpoint when resuming (they don't change the run's maths).
_RESUME_OVERRIDABLE = {"epochs", "out", "device", "workers", "limit_batches", "progress", "backend", "data_root",
                       "skip_nonfinite"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # raise instead of sys.exit so main() can return 2 in-process
        raise UserError(f"{message} (see {self.prog} --help)")


def _train_parser(sub) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = sub.add_parser("train", help="train an SNN", description="Train an SNN with CE, TET, TCL or STCL.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    S = argparse.SUPPRESS  # unset options stay absent, so --resume can tell what was given
    a = p.add_argument
    a("--dataset", default=S, help=f"digits, cifar10, cifar100 or dvs-cifar10 (default {d.dataset})")
    a("--data-root", dest="data_root", default=S, help="folder with the dataset files (not needed for digits)")
    a("--download", action="store_true", default=S, help="download CIFAR into --data-root if missing")
    a("--model", default=S, help=f"small, resnet18, resnet19 or vggsnn (default {d.model})")
    a("--loss", default=S, help=f"ce, tet, tcl or stcl (default {d.loss})")
    a("--ce-mode", dest="ce_mode", default=S, help=f"CE form inside tcl/stcl: mean or tet (default {d.ce_mode})")
    a("--T", dest="T", type=int, default=S, help=f"time steps (default {d.T})")
    a("--frames", type=int, default=S, help="event datasets: frames per sample (default: T)")
    a("--lambda", dest="lam", type=float, default=S, help=f"weight of the contrastive term (default {d.lam})")
    a("--temperature", type=float, default=S, help=f"contrastive temperature (default {d.temperature})")
    a("--proj-dim", dest="proj_dim", type=int, default=S, help=f"projection size (default {d.proj_dim})")
    a("--lambda-mse", dest="lambda_mse", type=float, default=S, help="tet: weight of the MSE-to-phi term (default 0)")
    a("--phi", type=float, default=S, help="tet: MSE target phi (default 1)")
    a("--epochs", type=int, default=S, help=f"default {d.epochs}")
    a("--batch-size", dest="batch_size", type=int, default=S,
      help=f"global batch; under torchrun each process takes batch-size / world size (default {d.batch_size})")
    a("--lr", type=float, default=S, help="learning rate (default 0.1 for sgd, 5e-3 for adam, 1e-3 for adamw)")
    a("--weight-decay", dest="weight_decay", type=float, default=S,
      help="default 5e-4 for sgd, 0 for adam, 1e-2 for adamw")
    a("--momentum", type=float, default=S, help=f"sgd momentum (default {d.momentum})")
    a("--optimizer", default=S, help=f"sgd, adam or adamw (default {d.optimizer})")
    a("--scheduler", default=S, help=f"cosine or none (default {d.scheduler})")
    a("--amp", default=S, help="none, bf16 or fp16 (fp16 needs a GPU; default none)")
    a("--backend", default=S, help="LIF kernel: auto, cuda, cpp, triton or torch (default auto)")
    a("--device", default=S, help="auto, cpu, cuda or cuda:N (default auto)")
    a("--seed", type=int, default=S, help=f"default {d.seed}")
    a("--out", default=S, help="run folder (default runs/<dataset>_<model>_<loss>_T<T>_seed<seed>)")
    a("--workers", type=int, default=S, help="DataLoader worker processes (default 0)")
    a("--limit-batches", dest="limit_batches", type=int, default=S,
      help="train on at most this many batches per epoch (quick checks)")
    a("--no-augment", dest="augment", action="store_false", default=S, help="turn off train augmentation")
    a("--no-progress", dest="progress", action="store_false", default=S, help="no progress bars / epoch lines")
    a("--contrast", default=S, help="under torchrun: contrastive negatives from the global batch (global) "
                                    "or this rank's batch only (local); default global")
    a("--sync-bn", dest="sync_bn", action="store_true", default=S,
      help="under torchrun on CUDA: synchronise BatchNorm statistics across ranks")
    a("--no-pack-spikes", dest="pack_spikes", action="store_false", default=S,
      help="store spikes saved for backward as full tensors (default: as bits, exact; docs/memory.md)")
    a("--fuse-bn", dest="fuse_bn", action="store_true", default=S,
      help="run each BN that feeds a LIF inside it: less memory, a recompute in backward (docs/memory.md)")
    a("--optimize-memory", dest="optimize_memory", action="store_true", default=S,
      help="recompute spiking blocks in backward, keeping only their input spikes as bits: "
           "same gradients, a fraction of the memory, slower steps (docs/memory.md)")
    a("--skip-nonfinite", dest="skip_nonfinite", action="store_true", default=S,
      help="skip steps whose loss is NaN/inf (counted in the log) instead of stopping")
    p.add_argument("--resume", default=None, metavar="PATH_OR_OUTDIR", help="continue a run from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tcl-fast", description="Train and evaluate SNNs with temporal contrastive learning.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,compare,export}", parser_class=_Parser)
    _train_parser(sub)
    e = sub.add_parser("eval", help="test accuracy at T' = 1..T of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    e.add_argument("--T", dest="T", type=int, default=None, help="largest T' (default: the run's T)")
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    e.add_argument("--data-root", dest="data_root", default=None, help="override the run's data root")
    e.add_argument("--backend", default=None, help="override the LIF backend")
    e.add_argument("--out", default=None, help="folder for eval_T<T>.json/.png (default: next to the checkpoint)")
    e.add_argument("--e-ac", dest="e_ac", type=float, default=None,
                   help=f"pJ per synaptic accumulate for the energy estimate (default {E_AC_PJ}, 45 nm)")
    e.add_argument("--e-mac", dest="e_mac", type=float, default=None,
                   help=f"pJ per multiply-accumulate of the first layer (default {E_MAC_PJ}, 45 nm)")
    e.add_argument("--no-cost", dest="cost", action="store_false",
                   help="skip firing rates / SOPs / energy (accuracy only)")
    c = sub.add_parser("compare", help="one table and plot of accuracy vs T' across runs")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", default=None,
                   help="plot path (default comparison.png beside the first run folder)")
    c.add_argument("--json", dest="json_out", default=None, help="also write the table as JSON here")
    x = sub.add_parser("export", help="write a run's network as a NIR graph (.nir) for other frameworks/hardware",
                       description="Export the inference network (no projection head) to NIR; docs/deploy.md.")
    x.add_argument("--checkpoint", required=True, help="checkpoint file or run folder")
    x.add_argument("--out", required=True, help="the .nir file to write")
    x.add_argument("--dt", type=float, default=None, help="seconds per time step (default 1e-4, snnTorch's)")
    x.add_argument("--pooling", default="avg", choices=("avg", "sum"),
                   help="average pools as NIR AvgPool2d, or SumPool2d with 1/area in the next weights (Norse reads this)")
    x.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    return parser


def _config_from_args(ns: argparse.Namespace) -> tuple[TrainConfig, str | None, bool]:
    from tcl_fast.training.run_folder import RunFolderBusy, RunLock, resolve_checkpoint

    given = {f.name: getattr(ns, f.name) for f in fields(TrainConfig) if hasattr(ns, f.name)}
    if ns.resume is None:
        cfg = TrainConfig(**given)
        busy_folder = cfg.resolved_out()
    else:
        try:
            path = resolve_checkpoint(ns.resume)
        except FileNotFoundError as exc:
            raise UserError(f"--resume: {exc}") from None
        # the folder the resumed run will write to (below): --out if given, else the checkpoint's
        busy_folder = given.get("out") or os.path.dirname(os.path.abspath(path))
    try:  # refused here, before torch is imported; the trainer's lock still guards the run
        RunLock(busy_folder).check_free()
    except RunFolderBusy as exc:
        raise UserError(str(exc)) from None
    if ns.resume is None:
        return cfg, None, ns.overwrite
    from tcl_fast.training.checkpoint import load_checkpoint

    try:
        saved = TrainConfig.from_dict(load_checkpoint(path)["config"])
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"--resume: {exc}") from None
    for k, v in given.items():
        if k not in _RESUME_OVERRIDABLE and getattr(saved, k) != v:
            raise UserError(f"cannot change --{k.replace('_', '-')} when resuming "
                            f"(the run used {getattr(saved, k)!r}); start a new run instead")
    merged = TrainConfig(**{**saved.to_dict(), **given})
    if "out" not in given:  # the run folder is where the checkpoint is, wherever we are now
        merged.out = os.path.dirname(os.path.abspath(path))
    return merged, path, True


def next_step_hint(cfg: TrainConfig, out: str) -> str:
    """The line printed after a digits run (the quick start): where to go next."""
    steps = [f"tcl-fast eval --checkpoint {out} (accuracy at every T')"]
    if cfg.loss != "ce":
        if cfg.out:  # the CE run needs a folder of its own
            ce_out = cfg.out.rstrip("/\\") + "_ce"
            rerun = f"--loss ce --out {ce_out}"
        else:
            ce_out, rerun = replace(cfg, loss="ce").resolved_out(), "--loss ce"
        steps.append(f"rerun with {rerun}, then tcl-fast compare {ce_out} {out} ({cfg.loss} against plain CE)")
    steps.append("real data, on a GPU: tcl-fast train --dataset cifar10 --data-root DIR --model resnet19 --lr 0.1 "
                 "(recipes: docs/training.md)")
    return "next: " + "; ".join(steps)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        try:
            ns = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if ns.command is None:
            parser.print_help()
            return 2
        if ns.command == "train":
            cfg, resume, overwrite = _config_from_args(ns)  # first: it refuses a busy folder before torch loads
            from tcl_fast.training.trainer import train

            result = train(cfg, resume=resume, overwrite=overwrite)
            if result.interrupted:
                return 130
            if cfg.dataset == "digits" and os.environ.get("RANK", "0") == "0":
                print(next_step_hint(cfg, result.out))
            return 0
        if ns.command == "eval":
            from tcl_fast.training.trainer import evaluate_checkpoint

            evaluate_checkpoint(ns.checkpoint, T=ns.T, device=ns.device, out=ns.out,
                                batch_size=ns.batch_size, data_root=ns.data_root, backend=ns.backend,
                                e_ac_pj=ns.e_ac, e_mac_pj=ns.e_mac, cost=ns.cost)
            return 0
        if ns.command == "export":
            from tcl_fast.training.export import export_checkpoint

            export_checkpoint(ns.checkpoint, ns.out, dt=ns.dt, pooling=ns.pooling, dtype=ns.dtype)
            return 0
        from tcl_fast.training.trainer import compare_runs

        compare_runs(ns.runs, out=ns.out, json_out=ns.json_out)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
