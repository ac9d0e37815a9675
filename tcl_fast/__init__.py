"""tcl_fast: fused spiking-neuron kernels and temporal contrastive learning for SNNs.

The public names are imported on first use (PEP 562), so ``import tcl_fast``
and the ``tcl-fast`` command's ``--help`` don't pay for importing torch.
Touching any of them (or importing ``tcl_fast.ops``) loads the kernels and
registers the ``torch.ops.tcl_fast`` ops.
"""
from __future__ import annotations

from tcl_fast._lazy import lazy_names

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "LIFMultiStep": "tcl_fast.nn",
    "LIFNode": "tcl_fast.nn",
    "ParametricLIFNode": "tcl_fast.nn",
    "IFNode": "tcl_fast.nn",
    "convert_spikingjelly": "tcl_fast.convert",
    "ConversionError": "tcl_fast.convert",
    "fuse_bn_lif": "tcl_fast.fuse",
    "optimize_memory": "tcl_fast.memory",
    "BNLIF": "tcl_fast.nn",
    "bn_lif": "tcl_fast.nn",
    "pack_spikes": "tcl_fast.ops.pack",
    "mark_spikes": "tcl_fast.ops.pack",
    "SavedTensorCounter": "tcl_fast.ops.pack",
    "lif_multistep": "tcl_fast.ops",
    "NeuronSpec": "tcl_fast.ops",
    "lif_multistep_reference": "tcl_fast.ops",
    "supcon_loss": "tcl_fast.ops",
    "supcon_loss_reference": "tcl_fast.ops",
    "tcl_loss": "tcl_fast.losses",
    "stcl_loss": "tcl_fast.losses",
    "SupConLoss": "tcl_fast.losses",
    "TCLLoss": "tcl_fast.losses",
    "STCLLoss": "tcl_fast.losses",
    "to_nir": "tcl_fast.nir_exchange",
    "from_nir": "tcl_fast.nir_exchange",
    "NIRExportError": "tcl_fast.nir_exchange",
    "NIRImportError": "tcl_fast.nir_exchange",
}
__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
