import os

import torch

# DeepSpeed picks its accelerator at import: CPU here unless a GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
