"""tcl_fast: fused spiking-neuron kernels and temporal contrastive learning for SNNs."""
from tcl_fast.nn import LIFMultiStep
from tcl_fast.ops import lif_multistep, lif_multistep_reference

__version__ = "0.1.0"
__all__ = ["LIFMultiStep", "lif_multistep", "lif_multistep_reference"]
