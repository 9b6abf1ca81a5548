import os

import torch

# DeepSpeed picks its accelerator at import: CPU here unless a GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from runs import base_run  # noqa: E402,F401  (a session fixture: one 2-rank run shared by several test files)
