"""Build and load the fused C++ CPU kernels (`kernels/cpu/mhc_cpu.cpp`) with torch's JIT extension builder.

The first call on a machine compiles the source (≈ 1 minute on 2 cores, spent on the kernels' templates) into
torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later calls, in
this or any other process (Ray workers, test workers), load the cached library in milliseconds. torch keys
the cache by the source and flags and rebuilds when either changes, and a file lock makes concurrent first
calls wait for one build instead of racing.

The build needs a C++ compiler and ninja (the ``ninja`` package, a dependency, ships the binary; its folder is
put on ``PATH`` for the build, since a venv's ``bin`` is not on ``PATH`` when Ray starts a worker).

`torch.utils.cpp_extension` imports setuptools, whose distutils override asserts when, later in a process,
its shim falls back to the standard library's distutils (seen inside a training run under pytest); so this
module imports it once, when `kernels` is first imported (≈ 0.17 s of the package's 2.4 s import, most of it
torch), and keeps the error if that import fails.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from types import ModuleType

import torch

_IMPORT_ERROR: Exception | None = None
try:
    from torch.utils import cpp_extension
except Exception as error:  # any failure here only means "no C++ kernels"
    cpp_extension, _IMPORT_ERROR = None, error

__all__ = ["SOURCE", "cpu_kernels", "cpu_kernels_error"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "cpu" / "mhc_cpu.cpp"
# -fopenmp: ATen's inline `at::parallel_for` is an OpenMP region, and the `omp simd` pragmas vectorise the
# reductions. The library links libgomp.so.1, the soname of the copy torch bundles and has already loaded, so
# the kernels share torch's thread pool and `torch.set_num_threads`. -march=native: AVX2/FMA where the CPU has
# them, which is why the build is keyed by the CPU (`_extension_name`).
_CFLAGS = ["-O3", "-fopenmp", "-march=native"]


def _extension_name() -> str:
    """One build per CPU instruction set: a cache shared between machines (an NFS home on a Ray cluster) must
    not hand a -march=native library to a CPU that lacks its instructions."""
    features = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                features = line
                break
    return f"mhc_ladder_cpu_{hashlib.sha256(features.encode()).hexdigest()[:10]}"


def _put_ninja_on_path() -> None:
    import ninja

    bin_dir = str(Path(ninja.BIN_DIR))
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])


@functools.cache
def _load() -> ModuleType | Exception:
    """The `torch.ops.mhc_cpu` namespace, or the error that stopped the build (cached either way)."""
    try:
        if _IMPORT_ERROR is not None:
            raise _IMPORT_ERROR
        _put_ninja_on_path()
        cpp_extension.load(
            _extension_name(),
            [str(SOURCE)],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # a compiler, ninja or linker failure of any kind means "unavailable"
        log.warning("the C++ CPU kernels could not be built (%s); the PyTorch reference path is used", error)
        return error
    _register_fakes()
    return torch.ops.mhc_cpu


def _register_fakes() -> None:
    """Output shapes of every op for fake tensors, so `torch.compile` can trace a model that calls them."""

    def like(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.empty_like(t) for t in tensors)

    fakes = {
        "sinkhorn_fwd": lambda logits, iters, deepseek, eps: torch.empty_like(logits),
        "sinkhorn_bwd": lambda grad, logits, iters, deepseek, eps: torch.empty_like(logits),
        "pre_mix_fwd": lambda x, h_pre: x.new_empty(x.shape[0], x.shape[2]),
        "pre_mix_bwd": lambda grad_u, x, h_pre: like(x, h_pre),
        "post_res_mix_fwd": lambda x, f, h_post, h_res: torch.empty_like(x),
        "post_res_mix_bwd": lambda grad, x, f, h_post, h_res: like(x, f, h_post, h_res),
        "mhc_read_fwd": _read_fwd_fake,
        "mhc_read_bwd": lambda grad_u, grad_post, grad_res, x, phi, alpha, bias, scaled, *rest: like(x, scaled, scaled),
    }
    for name, fake in fakes.items():
        torch.library.register_fake(f"mhc_cpu::{name}", fake)


def _read_fwd_fake(x, phi, alpha, bias, eps, pre_eps, iters, deepseek):
    tokens, n, width = x.shape
    return (
        x.new_empty(tokens, width),
        x.new_empty(tokens, n),
        x.new_empty(tokens, n),
        x.new_empty(tokens, n, n),
        x.new_empty(tokens, phi.shape[1]),
        x.new_empty(tokens),
    )


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
