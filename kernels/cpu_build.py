"""Build and load the fused C++ CPU kernels (`kernels/cpu/mhc_cpu.cpp`) with torch's JIT extension builder.

The first call on a machine compiles the source (≈ 15 s on 2 cores; it includes only light ATen headers) into
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later calls, in
this or any other process (Ray workers, test workers), load the cached library in milliseconds. torch keys
the cache by the source and flags and rebuilds when either changes, and a file lock makes concurrent first
calls wait for one build instead of racing.

The build needs a C++ compiler and ninja (the ``ninja`` package, a dependency, ships the binary; its folder is
put on ``PATH`` for the build, since a venv's ``bin`` is not on ``PATH`` when Ray starts a worker).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["SOURCE", "cpu_kernels", "cpu_kernels_error"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "cpu" / "mhc_cpu.cpp"
_EXTENSION_NAME = "mhc_ladder_cpu"
# -fopenmp-simd: honour the `omp simd` reductions (vectorised dot products) without an OpenMP runtime.
_CFLAGS = ["-O3", "-fopenmp", "-march=native"]


def _put_ninja_on_path() -> None:
    import ninja

    bin_dir = str(Path(ninja.BIN_DIR))
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


@functools.cache
def _load() -> ModuleType | Exception:
    """The `torch.ops.mhc_cpu` namespace, or the error that stopped the build (cached either way)."""
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        load(
            _EXTENSION_NAME,
            [str(SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # a compiler, ninja or linker failure of any kind means "unavailable"
        log.warning("the C++ CPU kernels could not be built (%s); the PyTorch reference path is used", error)
        return error
    return torch.ops.mhc_cpu


def cpu_kernels() -> ModuleType:
    """The loaded C++ ops (``sinkhorn_fwd``, ``pre_mix_bwd``, ...); raises RuntimeError when the build failed."""
    loaded = _load()
    if isinstance(loaded, Exception):
        raise RuntimeError(
            f"kernel_backend 'cpp' is unavailable: building {SOURCE.name} failed ({loaded}); it needs a C++ "
            "compiler (g++ or clang++) and ninja. Set kernel_backend: torch to use the PyTorch reference."
        ) from loaded
    return loaded


def cpu_kernels_error() -> Exception | None:
    """Why the C++ kernels are unavailable, or None when they are built and loaded."""
    loaded = _load()
    return loaded if isinstance(loaded, Exception) else None
