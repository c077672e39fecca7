"""Test-wide settings: one torch thread per test process (pytest-xdist runs one process per core), and the C++
CPU kernels built before the first test, so that no test (nor a Ray worker it starts) waits out the one-time
compile (≈ 1 minute on 2 cores) inside its own deadlines."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run interpreted on CPU-only machines

import torch

from kernels.cpu_build import cpu_kernels_error

torch.set_num_threads(1)


def pytest_sessionstart(session):
    cpu_kernels_error()  # build or load once per process; the tests that need the kernels assert they loaded
