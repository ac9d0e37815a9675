"""Are two builds of the CPU LIF ops the same, bit for bit? Record every output of
a grid of cases with one build, then rerun the grid with the other and compare.

    PYTHONPATH=OLD_CHECKOUT python scripts/lif_outputs_ab.py --save old.pt --dtypes float16
    PYTHONPATH=.            python scripts/lif_outputs_ab.py --compare old.pt

The grid, per dtype: the four ops (lif_forward / lif_backward and their affine
twins), every surrogate, hard and soft reset, decay_input on and off, v0 and
grad_v_last given or not, one shared decay or one per channel, with and without
a residual addend, over odd shapes (a ragged 128-lane group; T = 21 crosses a
16-step chunk) and a wide-group shape (T = 9, enough neurons for wide groups on
this machine's threads). For a change that moves a dtype from native kernels to
the float32 path (or back), or anything else that must not change a value.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def cases(dtypes):
    from tcl_fast.ops.lif_reference import SURROGATES

    wide_n = 4096 * 4 * torch.get_num_threads() + 300
    shapes = [(21, 3, 100), (9, wide_n)]
    for dtype, shape, surrogate_id, hard, decay_input, with_v0, with_gv, per_channel, affine in itertools.product(
            dtypes, shapes, range(len(SURROGATES)), (True, False), (True, False), (True, False), (True, False),
            (False, True), (None, "plain", "addend")):
        if shape[1] > 1000 and surrogate_id > 1:  # the wide shape: two surrogates (inline and by row) suffice
            continue
        if per_channel and len(shape) < 3:
            continue
        yield dict(dtype=dtype, shape=shape, surrogate=surrogate_id, hard=hard, decay_input=decay_input,
                   v0=with_v0, grad_v_last=with_gv, per_channel=per_channel, affine=affine)


def run(case):
    dtype, shape = DTYPES[case["dtype"]], case["shape"]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(hash((case["shape"], case["surrogate"])) % 2**31)
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).to(dtype)
    v0 = (torch.randn(shape[1:], generator=g) * 0.3).to(dtype) if case["v0"] else None
    decay = (torch.rand((shape[1], 1) if case["per_channel"] else (), generator=g, dtype=acc) * 0.5 + 0.2)
    grad_s = torch.randn(shape, generator=g).to(dtype)
    grad_v = torch.randn(shape[1:], generator=g).to(dtype) if case["grad_v_last"] else None
    v_reset = -0.2 if case["hard"] else 0.0
    scalars = (1.0, v_reset, case["hard"], case["decay_input"], False, case["surrogate"], 4.0, 0.1, False)
    ops = torch.ops.tcl_fast
    if case["affine"] is None:
        fwd = ops.lif_forward(x, v0, decay, *scalars)
        bwd = ops.lif_backward(grad_s, grad_v, x, v0, decay, *scalars, True)
    else:
        scale = torch.rand((shape[1], 1) if len(shape) == 3 else shape[1:], generator=g, dtype=acc) + 0.5
        shift = torch.randn(scale.shape, generator=g, dtype=acc) * 0.1
        addend = torch.randn(shape, generator=g).to(dtype) if case["affine"] == "addend" else None
        fwd = ops.lif_affine_forward(x, v0, decay, scale, shift, addend, *scalars)
        bwd = ops.lif_affine_backward(grad_s, grad_v, x, v0, decay, scale, shift, addend, *scalars,
                                      True, True, addend is not None)
    return [t.clone() for t in (*fwd, *bwd)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    side = ap.add_mutually_exclusive_group(required=True)
    side.add_argument("--save", help="record this build's outputs to this file")
    side.add_argument("--compare", help="compare this build's outputs with a recorded file")
    ap.add_argument("--dtypes", nargs="+", default=["float16"], choices=sorted(DTYPES))
    args = ap.parse_args()
    from tcl_fast import _extension

    if not _extension.has_cpp():
        print(f"tcl_fast._C is not built here: {_extension.load_error()}", file=sys.stderr)
        return 2

    if args.save:
        grid = list(cases(args.dtypes))
        torch.save({"cases": grid, "outputs": [run(c) for c in grid], "isa": torch.ops.tcl_fast._cpu_isa()},
                   args.save)
        print(f"{len(grid)} cases ({', '.join(args.dtypes)}), ISA {torch.ops.tcl_fast._cpu_isa()}: wrote {args.save}")
        return 0
    saved = torch.load(args.compare)
    differ = 0
    for case, want in zip(saved["cases"], saved["outputs"]):
        got = run(case)
        same = all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, want))
        if not same:
            differ += 1
            if differ <= 10:
                print("differs:", case)
    n = len(saved["cases"])
    print(f"{n - differ} of {n} cases identical in every output (recorded on {saved['isa']}, "
          f"run on {torch.ops.tcl_fast._cpu_isa()})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
