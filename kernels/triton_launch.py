"""Shared plumbing of the Triton mHC kernels: launch heuristics, input checks, output allocation, test hooks.

Every launcher in `kernels.triton_coefficients`, `kernels.triton_sinkhorn` and `kernels.triton_mix` asks
`launch_config` for its block sizes and warp count, so the tuning lives in one place. The heuristics are
written for an H100/H200 (132 SMs, 228 KiB shared memory per SM) and bf16 activations, and follow two rules:

- The memory-bound mixing kernels hold [NP, BLOCK_T, BLOCK_C] tiles (NP = n padded to a power of two) of 8192
  elements (32 fp32 registers per thread per tile at 8 warps), contiguous along C so that each warp reads
  whole 128-byte lines, and launch thousands of programs at 16k tokens.
- The coefficient GEMM is skinny (M = 2n + n² = 24 columns at n = 4): its cost is streaming x once, so one
  program owns a block of tokens and walks K = n·C; the backward walks tokens for one block of K (see its
  module).

The register budgets behind these choices come from building every kernel for sm_90 on a CPU machine
(`python -m kernels.triton_aot`: the real compiler and the ptxas bundled with the triton wheel), not from
timings: no GPU run exists yet (benchmarks/KERNELS.md).

Block sizes are capped at the (power-of-two rounded) problem size so that small problems, such as the parity
tests under ``TRITON_INTERPRET=1``, do not launch mostly-masked tiles. `override_launch` lets tests force
small blocks (and several K-splits) so that every tail mask and multi-program path runs on CPU;
`poison_outputs` makes every buffer the launchers allocate start as NaN, so an element a kernel forgets to
write fails the parity test.

`tl.dot` precision: 16-bit x is exact in TF32, so the coefficient GEMM runs in TF32 against an fp32 φ as in
the paper (MHC_SPEC §5: "bf16 x converted to fp32, TF32 against fp32 φ"); fp32 x uses the 3×TF32 split, which
keeps fp32 accuracy on tensor cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton

__all__ = [
    "MAX_COEFFICIENT_COLUMNS",
    "MAX_STREAMS",
    "SUPPORTED_DTYPES",
    "LaunchConfig",
    "check_device",
    "check_dtype",
    "check_streams",
    "dot_precision",
    "kernels_interpreted",
    "launch_config",
    "new_output",
    "override_launch",
    "poison_outputs",
]

# Streams the kernels support: n is a compile-time constant padded to a power of two inside the kernels.
MAX_STREAMS = 8
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The largest coefficient row one program holds: 2n + n² = 80 at n = 8 (mHC); mHC-lite's 2n + n! up to n = 6.
MAX_COEFFICIENT_COLUMNS = 1024
# SM count assumed without a CUDA device (interpreter runs); it only sets the coefficient backward's K-split.
_DEFAULT_NUM_SMS = 4

_LAUNCH_OVERRIDES: dict[str, int] = {}
_POISON = False


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """Block sizes and warps of one kernel launch (unused fields are 1)."""

    block_t: int = 1  # tokens per program (or per inner step of a token loop)
    block_c: int = 1  # model-width columns per tile (mixing kernels)
    block_k: int = 1  # flattened-width columns per tile (coefficient GEMM)
    block_m: int = 1  # coefficient columns, the whole padded row 2n + R
    num_splits: int = 1  # token splits of the coefficient backward (partial dφ summed afterwards)
    num_warps: int = 4
    num_stages: int = 2


def _interpret_knob() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# `triton.jit` reads TRITON_INTERPRET when it decorates a kernel; the kernel modules import this one first, so
# the value read here is the one their kernels were built with (setting the variable later changes nothing).
_INTERPRETED = _interpret_knob()


def kernels_interpreted() -> bool:
    """Whether the mHC kernels were built for the Triton interpreter (and so run on CPU tensors)."""
    return _INTERPRETED


def _pow2(value: int) -> int:
    return triton.next_power_of_2(max(int(value), 1))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _DEFAULT_NUM_SMS


def launch_config(
    op: str,
    *,
    num_tokens: int,
    n: int,
    width: int = 1,
    num_cols: int = 1,
    device: torch.device | None = None,
) -> LaunchConfig:
    """Launch heuristics of every mHC kernel (the single place to tune them).

    ``op``: coefficients_fwd | coefficients_prep | coefficients_bwd | sinkhorn_fwd | sinkhorn_bwd | mix_fwd |
    mix_bwd. ``width`` is C for the mixing kernels and K = n·C for the coefficient kernels; ``num_cols`` is
    the coefficient row length M = 2n + R.
    """
    np_ = _pow2(n)
    tokens_pow2 = _pow2(num_tokens)
    if op in ("coefficients_fwd", "coefficients_prep", "coefficients_bwd"):
        # Register budgets from the sm_90 builds (no spills at n <= 8 for bf16 x): [64, 64] x tiles while the
        # coefficient row fits 64 columns (mHC up to n = 6), [32, 32] beyond (mHC n = 7, 8; mHC-lite n >= 5).
        block_m = max(16, _pow2(num_cols))  # tl.dot needs every tile dimension >= 16
        block = 64 if block_m <= 64 else 32
        block_t = max(16, min(block, tokens_pow2))
        block_k = max(16, min(block, _pow2(width)))
        config = LaunchConfig(block_t=block_t, block_k=block_k, block_m=block_m, num_warps=8, num_stages=3)
        if op == "coefficients_prep":
            config = LaunchConfig(
                block_t=max(1, min(2048 // block_m, tokens_pow2)), block_m=block_m, num_warps=4
            )
        if op == "coefficients_bwd":
            # Enough (K block, token split) programs to fill the GPU twice; each split writes a partial dφ.
            k_blocks = triton.cdiv(width, block_k)
            t_blocks = triton.cdiv(num_tokens, block_t)
            splits = max(1, min(t_blocks, triton.cdiv(2 * _num_sms(device or torch.device("cpu")), k_blocks)))
            config = dataclasses.replace(config, num_splits=splits)
    elif op in ("sinkhorn_fwd", "sinkhorn_bwd"):
        # One token's n×n matrix lives in registers, about 4 entries per thread: the backward is a long chain
        # of dependent divisions and reductions (≈ 300 steps at t = 20), so it wants many resident warps.
        block_t = max(1, min(512 // (np_ * np_), tokens_pow2))
        config = LaunchConfig(block_t=block_t, num_warps=max(1, min(4, block_t * np_ * np_ // 128)))
    elif op in ("mix_fwd", "mix_bwd"):
        # [NP, BLOCK_T, BLOCK_C] tiles of 8192 elements; warps go along tokens (BLOCK_T >= num_warps keeps the
        # streams of one column inside a thread, see kernels.triton_mix).
        block_c = min(256, _pow2(width))
        block_t = max(1, min(8192 // (np_ * block_c), tokens_pow2))
        config = LaunchConfig(block_t=block_t, block_c=block_c, num_warps=max(1, min(8, block_t)))
    else:
        raise ValueError(f"unknown kernel op {op!r}")
    if _LAUNCH_OVERRIDES:
        fields = {f.name for f in dataclasses.fields(LaunchConfig)}
        config = dataclasses.replace(config, **{k: v for k, v in _LAUNCH_OVERRIDES.items() if k in fields})
    return config


@contextlib.contextmanager
def override_launch(**fields: int) -> Iterator[None]:
    """Test hook: force LaunchConfig fields (e.g. ``block_t=16``) for every launch inside the block."""
    unknown = set(fields) - {f.name for f in dataclasses.fields(LaunchConfig)}
    if unknown:
        raise ValueError(f"unknown LaunchConfig fields {sorted(unknown)}")
    for name, value in fields.items():
        if value < 1 or (name.startswith("block_") and value & (value - 1)):
            raise ValueError(f"{name} ({value}) must be a positive power of two")
    saved = dict(_LAUNCH_OVERRIDES)
    _LAUNCH_OVERRIDES.update(fields)
    try:
        yield
    finally:
        _LAUNCH_OVERRIDES.clear()
        _LAUNCH_OVERRIDES.update(saved)


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Test hook: every buffer the launchers allocate inside the block starts filled with NaN."""
    global _POISON
    saved, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = saved


def new_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocate a buffer a kernel fully writes (NaN-filled under `poison_outputs`)."""
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision for a GEMM whose activation operand has ``dtype`` (see the module doc)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def check_streams(n: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= MAX_STREAMS:
        raise ValueError(f"n ({n!r}) must be an int from 1 to {MAX_STREAMS} for the Triton kernels")


def check_dtype(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{name} has dtype {tensor.dtype}; the Triton kernels take float32, bfloat16 or float16 "
            "(use kernel_backend: torch for other dtypes)"
        )


def check_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device on which the kernels can run; returns that device."""
    devices = {name: t.device for name, t in tensors.items()}
    device = next(iter(devices.values()))
    if any(d != device for d in devices.values()):
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"the inputs of one mHC op must share a device; got {listed}")
    if device.type != "cuda" and not kernels_interpreted():
        raise RuntimeError(
            f"Triton kernels got tensors on {device}: they need a CUDA device, or TRITON_INTERPRET=1 set "
            "before kernels.triton_ops is first imported (CPU parity tests); use kernel_backend: torch on CPU"
        )
    return device
