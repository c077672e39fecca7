"""Triton Sinkhorn-Knopp projection with a backward that recomputes the iterations from the logits alone.

Shape legend: T tokens, N streams (n), NP = n padded to a power of two; one token's n×n matrix is a [NP, NP]
slice of a [BLOCK_T, NP, NP] register tile (padding entries are 0 and are never divided by 0).

Forward (MHC_SPEC §2, §1.3; equal to `kernels.reference.sinkhorn`). The kernels work on the matrix in the
orientation that left-multiplies the streams, H[i, j]; a sequence of S normalisation steps follows a start M⁰:

    paper:        M⁰ = exp(L − max L);                     S = 2t steps: columns, rows, columns, rows, …
    deepseek-v4:  M⁰ = softmax_i(Lᵀ)[i, j] + ε, i.e. the    S = 2t − 1 steps: rows, (t − 1) × (columns, rows)
                  stored logits are Hᵀ, read transposed      (t = 0 behaves as t = 1, as in the reference)

A step divides every entry by its column (or row) sum plus ε (ε = 0 for 'paper', which has no floor):
y = x / d with d = s + ε, s = Σ x along the normalised axis. The last step normalises rows (forward gain 1).

Backward. Only the logits are saved. For one step, ∂y_a/∂x_b = δ_ab / d − x_a / d² within a line (a, b on the
same column for a column step, the same row for a row step), so

    g_x = (g_y − Σ_line(g_y ⊙ y)) / d          broadcast along the line

which needs the step's input x (and from it d and y = x / d). The kernel runs the steps in reverse and
recomputes each input from the start: with a checkpoint every ℓ = ⌈√S⌉ steps held in registers (one at a time,
rebuilt from M⁰ for each segment), the cost is ≈ S²/(2ℓ) + Sℓ/2 ≈ S^1.5 steps (≈ 250 for t = 20, versus 820
without checkpoints) and no memory traffic beyond the logits, the incoming gradient and the outgoing gradient.
The start's backward:

    paper:        M⁰ = exp(L − c), c = max L:  g_L = g ⊙ M⁰ − 1[L = c] · Σ(g ⊙ M⁰) / #{L = c}
                  (the gradient through the max, split evenly over ties as torch.amax does; it is ≈ 0 once a
                  normalisation step follows, since those are invariant to a global scale)
    deepseek-v4:  P = softmax over i, M⁰ = P + ε:  g_Lᵀ = P ⊙ (g − Σ_i(g ⊙ P)), written back transposed.

This is exact reverse-mode differentiation of the truncated iteration, the same gradient autograd gives for
the reference's unrolled loop, as in the paper's kernel ("recomputes the intermediate results on-chip and
traverses the entire iteration", §4.3.1) and TileKernels' `sinkhorn_kernel`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_launch import check_device, check_dtype, check_streams, launch_config, new_output

__all__ = ["sinkhorn"]

CONVENTIONS = ("paper", "deepseek-v4")


@triton.jit
def _tile_offsets(BLOCK_T: tl.constexpr, NP: tl.constexpr, N: tl.constexpr, num_tokens):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_i = tl.arange(0, NP)
    offs_j = tl.arange(0, NP)
    row_ok = offs_i < N
    col_ok = offs_j < N
    entry_ok = row_ok[None, :, None] & col_ok[None, None, :]
    mask = (offs_t < num_tokens)[:, None, None] & entry_ok
    return offs_t, offs_i, offs_j, row_ok, col_ok, entry_ok, mask


@triton.jit
def _load_logits(logits_ptr, offs_t, offs_i, offs_j, mask, entry_ok, stride_t, stride_i, stride_j):
    """Logits in H's orientation (the launcher swaps the strides for 'deepseek-v4'); −inf on the padding."""
    ptrs = (
        logits_ptr
        + offs_t.to(tl.int64)[:, None, None] * stride_t
        + offs_i[None, :, None] * stride_i
        + offs_j[None, None, :] * stride_j
    )
    logits = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return tl.where(entry_ok, logits, float("-inf"))


@triton.jit
def _start(logits, entry_ok, col_ok, eps, DEEPSEEK: tl.constexpr):
    """M⁰, and what its backward needs: P for 'deepseek-v4'; for 'paper' M⁰ itself and the per-token max."""
    if DEEPSEEK:
        col_max = tl.where(col_ok[None, :], tl.max(logits, axis=1), 0.0)
        e = tl.exp(logits - col_max[:, None, :])
        col_sum = tl.where(col_ok[None, :], tl.sum(e, axis=1), 1.0)
        p = e / col_sum[:, None, :]
        m0 = tl.where(entry_ok, p + eps, 0.0)
        shift = col_max
    else:
        shift = tl.max(tl.max(logits, axis=2), axis=1)
        m0 = tl.exp(logits - shift[:, None, None])
        p = m0
    return m0, p, shift


@triton.jit
def _normalize(m, step, row_ok, col_ok, eps, COL_PARITY: tl.constexpr):
    """One Sinkhorn step: columns when ``step % 2 == COL_PARITY``, else rows."""
    if step % 2 == COL_PARITY:
        d_col = tl.where(col_ok[None, :], tl.sum(m, axis=1) + eps, 1.0)
        m = m / d_col[:, None, :]
    else:
        d_row = tl.where(row_ok[None, :], tl.sum(m, axis=2) + eps, 1.0)
        m = m / d_row[:, :, None]
    return m


@triton.jit
def _normalize_bwd(x, g, step, row_ok, col_ok, entry_ok, eps, COL_PARITY: tl.constexpr):
    """Gradient w.r.t. a step's input x given the gradient g w.r.t. its output: (g − Σ_line g ⊙ y) / d."""
    if step % 2 == COL_PARITY:
        d_col = tl.where(col_ok[None, :], tl.sum(x, axis=1) + eps, 1.0)
        y_col = x / d_col[:, None, :]
        g = (g - tl.sum(g * y_col, axis=1)[:, None, :]) / d_col[:, None, :]
    else:
        d_row = tl.where(row_ok[None, :], tl.sum(x, axis=2) + eps, 1.0)
        y_row = x / d_row[:, :, None]
        g = (g - tl.sum(g * y_row, axis=2)[:, :, None]) / d_row[:, :, None]
    return tl.where(entry_ok, g, 0.0)


@triton.jit
def _fwd_kernel(
    logits_ptr, out_ptr,
    num_tokens, stride_t, stride_i, stride_j, num_steps, eps,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, DEEPSEEK: tl.constexpr,
):  # fmt: skip
    offs_t, offs_i, offs_j, row_ok, col_ok, entry_ok, mask = _tile_offsets(BLOCK_T, NP, N, num_tokens)
    logits = _load_logits(logits_ptr, offs_t, offs_i, offs_j, mask, entry_ok, stride_t, stride_i, stride_j)
    m, _p, _shift = _start(logits, entry_ok, col_ok, eps, DEEPSEEK)
    for step in range(num_steps):
        m = _normalize(m, step, row_ok, col_ok, eps, 1 if DEEPSEEK else 0)
    out = (
        out_ptr
        + offs_t.to(tl.int64)[:, None, None] * (N * N)
        + offs_i[None, :, None] * N
        + offs_j[None, None, :]
    )
    tl.store(out, m.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    logits_ptr, g_out_ptr, g_logits_ptr,
    num_tokens, stride_t, stride_i, stride_j, g_stride_i, g_stride_j, num_steps, seg_len, eps,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, DEEPSEEK: tl.constexpr,
):  # fmt: skip
    COL_PARITY: tl.constexpr = 1 if DEEPSEEK else 0
    offs_t, offs_i, offs_j, row_ok, col_ok, entry_ok, mask = _tile_offsets(BLOCK_T, NP, N, num_tokens)
    logits = _load_logits(logits_ptr, offs_t, offs_i, offs_j, mask, entry_ok, stride_t, stride_i, stride_j)
    m0, p, shift = _start(logits, entry_ok, col_ok, eps, DEEPSEEK)
    rows = offs_t.to(tl.int64)[:, None, None] * (N * N)
    g = tl.load(g_out_ptr + rows + offs_i[None, :, None] * N + offs_j[None, None, :], mask=mask, other=0.0)
    g = g.to(tl.float32)

    # Reverse sweep over the steps, segment by segment (last segment first); see the module docstring.
    num_segs = tl.cdiv(num_steps, seg_len)
    for q in range(num_segs):
        seg_begin = (num_segs - 1 - q) * seg_len
        seg_end = tl.minimum(seg_begin + seg_len, num_steps)
        checkpoint = m0
        for step in range(seg_begin):
            checkpoint = _normalize(checkpoint, step, row_ok, col_ok, eps, COL_PARITY)
        for r in range(seg_end - seg_begin):
            target = seg_end - 1 - r
            x = checkpoint
            for step in range(seg_begin, target):
                x = _normalize(x, step, row_ok, col_ok, eps, COL_PARITY)
            g = _normalize_bwd(x, g, target, row_ok, col_ok, entry_ok, eps, COL_PARITY)

    if DEEPSEEK:
        g_logits = p * (g - tl.sum(g * p, axis=1)[:, None, :])
    else:
        at_max = entry_ok & (logits == shift[:, None, None])
        num_max = tl.sum(tl.sum(at_max.to(tl.float32), axis=2), axis=1)
        through_max = tl.sum(tl.sum(g * m0, axis=2), axis=1) / num_max
        g_logits = g * m0 - tl.where(at_max, through_max[:, None, None], 0.0)
    g_ptrs = g_logits_ptr + rows + offs_i[None, :, None] * g_stride_i + offs_j[None, None, :] * g_stride_j
    tl.store(g_ptrs, g_logits.to(g_logits_ptr.dtype.element_ty), mask=mask)


def _num_steps(num_iters: int, convention: str) -> int:
    if convention == "paper":
        return 2 * num_iters
    return 1 + 2 * max(num_iters - 1, 0)  # the reference's first row step is unconditional


def _strides(logits_TNN: Tensor, deepseek: bool) -> tuple[int, int, int]:
    """(token, i, j) strides that read H[i, j]: the logits are Hᵀ in the 'deepseek-v4' convention."""
    stride_t, stride_r, stride_c = logits_TNN.stride()
    return (stride_t, stride_c, stride_r) if deepseek else (stride_t, stride_r, stride_c)


def _sinkhorn_fwd(logits_TNN: Tensor, num_iters: int, convention: str, eps: float) -> Tensor:
    T, n, _ = logits_TNN.shape
    deepseek = convention == "deepseek-v4"
    out_TNN = new_output((T, n, n), logits_TNN.dtype, logits_TNN.device)
    if T > 0:
        cfg = launch_config("sinkhorn_fwd", num_tokens=T, n=n, device=logits_TNN.device)
        _fwd_kernel[(triton.cdiv(T, cfg.block_t),)](
            logits_TNN, out_TNN, T, *_strides(logits_TNN, deepseek), _num_steps(num_iters, convention),
            eps if deepseek else 0.0,
            N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, DEEPSEEK=deepseek,
            num_warps=cfg.num_warps,
        )  # fmt: skip
    return out_TNN


def _sinkhorn_bwd(
    logits_TNN: Tensor, g_out_TNN: Tensor, num_iters: int, convention: str, eps: float
) -> Tensor:
    T, n, _ = logits_TNN.shape
    deepseek = convention == "deepseek-v4"
    g_logits_TNN = new_output((T, n, n), logits_TNN.dtype, logits_TNN.device)
    num_steps = _num_steps(num_iters, convention)
    seg_len = max(1, math.isqrt(max(num_steps - 1, 0)) + 1)  # ⌈√S⌉
    cfg = launch_config("sinkhorn_bwd", num_tokens=T, n=n, device=logits_TNN.device)
    _bwd_kernel[(triton.cdiv(T, cfg.block_t),)](
        logits_TNN, g_out_TNN, g_logits_TNN, T, *_strides(logits_TNN, deepseek),
        *((1, n) if deepseek else (n, 1)), num_steps, seg_len, eps if deepseek else 0.0,
        N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, DEEPSEEK=deepseek, num_warps=cfg.num_warps,
    )  # fmt: skip
    return g_logits_TNN


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_TNN, num_iters, convention, eps):
        ctx.save_for_backward(logits_TNN)
        ctx.config = (num_iters, convention, eps)
        return _sinkhorn_fwd(logits_TNN, num_iters, convention, eps)

    @staticmethod
    def backward(ctx, g_out_TNN):
        (logits_TNN,) = ctx.saved_tensors
        if logits_TNN.shape[0] == 0:
            return torch.zeros_like(logits_TNN), None, None, None
        return _sinkhorn_bwd(logits_TNN, g_out_TNN.contiguous(), *ctx.config), None, None, None


def sinkhorn(logits_TNN: Tensor, num_iters: int, convention: str = "paper", eps: float = 1e-6) -> Tensor:
    """Sinkhorn-Knopp projection as `kernels.reference.sinkhorn`: any leading dims, fp32 math and out dtype.

    Only the logits are saved for the backward, which recomputes the iterations in registers.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention ({convention!r}) must be 'paper' or 'deepseek-v4'")
    if not isinstance(num_iters, int) or num_iters < 0:
        raise ValueError(f"num_iters ({num_iters!r}) must be a non-negative int")
    if logits_TNN.dim() < 3 or logits_TNN.shape[-1] != logits_TNN.shape[-2]:
        raise ValueError(f"logits {tuple(logits_TNN.shape)} must be (..., n, n)")
    n = logits_TNN.shape[-1]
    check_streams(n)
    check_dtype("logits_TNN", logits_TNN)
    check_device(logits_TNN=logits_TNN)
    lead_shape = logits_TNN.shape[:-2]
    out_TNN = _Sinkhorn.apply(logits_TNN.reshape(-1, n, n), num_iters, convention, float(eps))
    return out_TNN.view(*lead_shape, n, n)
