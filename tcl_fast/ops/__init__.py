from tcl_fast.ops.kernel_tuning import get_tuning, tuning
from tcl_fast.ops.lif import NeuronSpec, lif_affine_multistep, lif_multistep
from tcl_fast.ops.lif_reference import lif_multistep_reference
from tcl_fast.ops.supcon import supcon_loss
from tcl_fast.ops.supcon_reference import supcon_loss_reference

__all__ = ["NeuronSpec", "get_tuning", "lif_affine_multistep", "lif_multistep", "lif_multistep_reference", "supcon_loss",
           "supcon_loss_reference", "tuning"]
