"""Test-wide settings: one torch thread per test process (pytest-xdist runs one process per core)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run interpreted on CPU-only machines

import torch

torch.set_num_threads(1)
