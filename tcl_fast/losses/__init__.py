"""Losses built on tcl_fast ops: the temporal supervised-contrastive TCL / STCL family."""
from tcl_fast.losses.contrastive import (
    STCLLoss,
    SupConLoss,
    TCLLoss,
    stcl_loss,
    tcl_loss,
)

__all__ = ["STCLLoss", "SupConLoss", "TCLLoss", "stcl_loss", "tcl_loss"]
