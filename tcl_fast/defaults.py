"""The one default of each loss hyper-parameter (torch-free, so the CLI can read it).

Chosen by the digits sweep (``python scripts/sweep_digits.py``, docs/training.md):
the contrastive losses, ``build_objective`` and ``tcl-fast train`` all use these.
SupCon papers often use a temperature of 0.07-0.1: pass ``temperature=`` for that.
"""
TEMPERATURE = 0.5
LAMBDA = 0.1  # weight of the contrastive term next to CE
CE_MODE = "tet"  # CE inside tcl/stcl: per time step (tet) or on the time-averaged output (mean)

# Energy per operation for tcl-fast eval's estimate (tcl_fast.inference_cost), in picojoules:
# 45 nm, 32-bit float (Horowitz, "Computing's energy problem", ISSCC 2014).
E_AC_PJ = 0.9  # one accumulate (add): a synaptic operation driven by a spike
E_MAC_PJ = 4.6  # one multiply-accumulate (3.7 pJ multiply + 0.9 pJ add): the first layer's real-valued input
