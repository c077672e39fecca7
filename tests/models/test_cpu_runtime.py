"""The CPU process settings: freed tensors stay in the heap for reuse, and the thread count is applied."""

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from models.cpu_runtime import configure_cpu_runtime

# Frees a touched 256 MiB tensor and prints how many MiB the process's resident set fell by.
_FREE_AND_MEASURE = textwrap.dedent(
    """
    import os, sys
    import torch
    from models.cpu_runtime import retain_freed_memory

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    page = os.sysconf("SC_PAGE_SIZE")
    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * page
    x = torch.ones(64 * 2**20)
    before = resident()
    del x
    print((before - resident()) / 2**20)
    """
)


def _resident_drop_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _FREE_AND_MEASURE, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return float(done.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's mallopt settings")
def test_freed_large_tensors_stay_resident_only_with_the_thresholds_raised():
    # glibc's default serves and returns blocks above its (at most 32 MiB) mmap threshold straight to the OS.
    assert _resident_drop_mib("default") > 200
    assert _resident_drop_mib("retain") < 16


def test_configure_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        configure_cpu_runtime(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
