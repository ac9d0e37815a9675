"""tcl_fast: fused spiking-neuron kernels and temporal contrastive learning for SNNs."""
from tcl_fast.losses import STCLLoss, SupConLoss, TCLLoss, stcl_loss, tcl_loss
from tcl_fast.nn import BNLIF, LIFMultiStep, bn_lif
from tcl_fast.pack import SavedTensorCounter, mark_spikes, pack_spikes
from tcl_fast.ops import lif_multistep, lif_multistep_reference, supcon_loss, supcon_loss_reference

__version__ = "0.1.0"
__all__ = [
    "LIFMultiStep", "lif_multistep", "lif_multistep_reference",
    "supcon_loss", "supcon_loss_reference", "tcl_loss", "stcl_loss",
    "SupConLoss", "TCLLoss", "STCLLoss", "BNLIF", "bn_lif", "pack_spikes", "mark_spikes", "SavedTensorCounter",
]
