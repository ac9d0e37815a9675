from tcl_fast.ops.lif import lif_multistep
from tcl_fast.ops.lif_reference import lif_multistep_reference

__all__ = ["lif_multistep", "lif_multistep_reference"]
