import os
import sys

import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

# Without CUDA the Triton kernels run on CPU tensors through Triton's
# interpreter (backend="triton"); it must be chosen before Triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker owns one core: torch's intra-op threads would
# oversubscribe them and slow the per-position loops tenfold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=40)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
