import os

import torch

# Triton kernels run on CPU tensors only in interpreter mode, which must be on
# before any @triton.jit function is defined (i.e. before tcl_fast imports them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
