import os

import torch

# Small models run no faster with more threads, and CI has two cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
