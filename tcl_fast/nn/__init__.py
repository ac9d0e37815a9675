from tcl_fast.nn.bnlif import BNLIF, bn_lif
from tcl_fast.nn.lif import LIFMultiStep

__all__ = ["LIFMultiStep", "BNLIF", "bn_lif"]
