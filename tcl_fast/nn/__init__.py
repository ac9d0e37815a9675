from tcl_fast.nn.lif import LIFMultiStep

__all__ = ["LIFMultiStep"]
