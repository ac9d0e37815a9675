from tcl_fast.nn.bnlif import BNLIF, bn_lif
from tcl_fast.nn.lif import LIFMultiStep
from tcl_fast.nn.neurons import BaseNode, IFNode, LIFNode, ParametricLIFNode

__all__ = ["LIFMultiStep", "BaseNode", "LIFNode", "ParametricLIFNode", "IFNode", "BNLIF", "bn_lif"]
