"""Triton kernels for the two stream mixes: the pre-mix and the fused post + residual mix.

Shape legend: T tokens, N streams (n, a compile-time constant), NP = n padded to a power of two, C model
width. Tiles are [NP, BLOCK_T, BLOCK_C] with the streams *outermost* and C contiguous: Triton's default layout
then puts the threads along C (16-byte vector loads) and the warps along tokens (the launcher keeps BLOCK_T >=
num_warps), so a token's n values of one column sit in one thread and every sum over streams is a register
add, with no shared memory or barrier in the loops (checked on the sm_90 SASS). All arithmetic is fp32;
outputs are stored in the dtype of the tensor they stand for (mixes in x's dtype, gradients in their input's
dtype).

Pre-mix (MHC_SPEC §1.1, TileKernels `pre_apply_mix`):

    u_TC = Σ_j H_pre[t, j] · x_TjC
    backward:  ∂x_TjC = H_pre[t, j] · ∂u_TC,   ∂H_pre[t, j] = Σ_c ∂u_TC · x_TjC

Post + residual mix, fused (MHC_SPEC §5 "F_post,res"; it reads (n+1)C and writes nC per token):

    x'_TiC = Σ_j H_res[t, i, j] · x_TjC + H_post[t, i] · f_TC
    backward:  ∂x_TjC          = Σ_i H_res[t, i, j] · ∂x'_TiC         (H_resᵀ applied to the gradient)
               ∂f_TC           = Σ_i H_post[t, i] · ∂x'_TiC
               ∂H_res[t, i, j] = Σ_c ∂x'_TiC · x_TjC
               ∂H_post[t, i]   = Σ_c ∂x'_TiC · f_TC

The forward kernels tile (tokens × C) over a 2-D grid. The backward kernels own a block of tokens and walk all
of C, so the per-token reductions over C (∂H_pre, ∂H_res, ∂H_post) finish in registers (warp shuffles) without
atomics, and each input byte is read once. The input streams j of the post mix are unrolled over the constexpr
n (`tl.static_range`) as [BLOCK_T, BLOCK_C] tiles; the tiny [n, BLOCK_T] coefficient columns are re-read per C
step (L1 hits) rather than held n times in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_launch import check_device, check_dtype, check_streams, launch_config, new_output

__all__ = ["post_res_mix", "pre_mix"]


@triton.jit
def _stream_tile(ptr, rows, offs_n, offs_c, mask, stride_t, stride_n):
    """The [NP, BLOCK_T, BLOCK_C] tile (streams outermost) of a (T, N, C) tensor with C stride 1, as fp32."""
    ptrs = ptr + rows[None, :, None] * stride_t + offs_n[:, None, None] * stride_n + offs_c[None, None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _coef_tile(ptr, rows, offs_n, mask, stride_t, stride_n):
    """The [NP, BLOCK_T] tile of per-token, per-stream coefficients, as fp32."""
    return tl.load(ptr + rows[None, :] * stride_t + offs_n[:, None] * stride_n, mask=mask, other=0.0).to(
        tl.float32
    )


@triton.jit
def _pre_mix_fwd_kernel(
    x_ptr, h_ptr, u_ptr,
    num_tokens, C, stride_xt, stride_xn, stride_ht, stride_hn,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, NP)
    mask_t = offs_t < num_tokens
    mask_c = offs_c < C
    rows = offs_t.to(tl.int64)
    h_mask = (offs_n < N)[:, None] & mask_t[None, :]
    h = _coef_tile(h_ptr, rows, offs_n, h_mask, stride_ht, stride_hn)
    x = _stream_tile(
        x_ptr, rows, offs_n, offs_c, h_mask[:, :, None] & mask_c[None, None, :], stride_xt, stride_xn
    )
    u = tl.sum(h[:, :, None] * x, axis=0)
    u_mask = mask_t[:, None] & mask_c[None, :]
    tl.store(u_ptr + rows[:, None] * C + offs_c[None, :], u.to(u_ptr.dtype.element_ty), mask=u_mask)


@triton.jit
def _pre_mix_bwd_kernel(
    x_ptr, h_ptr, g_u_ptr, g_x_ptr, g_h_ptr,
    num_tokens, C, stride_xt, stride_xn, stride_ht, stride_hn,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, NP)
    mask_t = offs_t < num_tokens
    rows = offs_t.to(tl.int64)
    h_mask = (offs_n < N)[:, None] & mask_t[None, :]
    h = _coef_tile(h_ptr, rows, offs_n, h_mask, stride_ht, stride_hn)
    g_h = tl.zeros([NP, BLOCK_T], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        tile_mask = h_mask[:, :, None] & mask_c[None, None, :]
        row_mask = mask_t[:, None] & mask_c[None, :]
        g_u = tl.load(g_u_ptr + rows[:, None] * C + offs_c[None, :], mask=row_mask, other=0.0).to(tl.float32)
        g_x = h[:, :, None] * g_u[None, :, :]
        g_x_ptrs = g_x_ptr + rows[None, :, None] * (N * C) + offs_n[:, None, None] * C + offs_c[None, None, :]
        tl.store(g_x_ptrs, g_x.to(g_x_ptr.dtype.element_ty), mask=tile_mask)
        x = _stream_tile(x_ptr, rows, offs_n, offs_c, tile_mask, stride_xt, stride_xn)
        g_h += tl.sum(x * g_u[None, :, :], axis=2)
    tl.store(g_h_ptr + rows[None, :] * N + offs_n[:, None], g_h.to(g_h_ptr.dtype.element_ty), mask=h_mask)


@triton.jit
def _post_res_mix_fwd_kernel(
    x_ptr, f_ptr, h_post_ptr, h_res_ptr, out_ptr,
    num_tokens, C, stride_xt, stride_xn, stride_ft, stride_pt, stride_pn, stride_rt, stride_ri, stride_rj,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n = tl.arange(0, NP)
    mask_t = offs_t < num_tokens
    mask_c = offs_c < C
    rows = offs_t.to(tl.int64)
    h_mask = (offs_n < N)[:, None] & mask_t[None, :]
    row_mask = mask_t[:, None] & mask_c[None, :]
    f = tl.load(f_ptr + rows[:, None] * stride_ft + offs_c[None, :], mask=row_mask, other=0.0).to(tl.float32)
    h_post = _coef_tile(h_post_ptr, rows, offs_n, h_mask, stride_pt, stride_pn)
    out = h_post[:, :, None] * f[None, :, :]  # [NP (output stream i), BLOCK_T, BLOCK_C]
    for j in tl.static_range(N):
        h_res_j = _coef_tile(
            h_res_ptr + j * stride_rj, rows, offs_n, h_mask, stride_rt, stride_ri
        )  # H[:, :, j]
        x_j = tl.load(
            x_ptr + rows[:, None] * stride_xt + j * stride_xn + offs_c[None, :], mask=row_mask, other=0.0
        )
        out += h_res_j[:, :, None] * x_j.to(tl.float32)[None, :, :]
    out_ptrs = out_ptr + rows[None, :, None] * (N * C) + offs_n[:, None, None] * C + offs_c[None, None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=h_mask[:, :, None] & mask_c[None, None, :])


@triton.jit
def _post_res_mix_bwd_kernel(
    x_ptr, f_ptr, h_post_ptr, h_res_ptr, g_out_ptr,  # inputs
    g_x_ptr, g_f_ptr, g_post_ptr, g_res_ptr,  # outputs
    num_tokens, C, stride_xt, stride_xn, stride_ft, stride_pt, stride_pn, stride_rt, stride_ri, stride_rj,
    N: tl.constexpr, NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, NP)
    mask_t = offs_t < num_tokens
    rows = offs_t.to(tl.int64)
    h_mask = (offs_n < N)[:, None] & mask_t[None, :]
    h_post = _coef_tile(h_post_ptr, rows, offs_n, h_mask, stride_pt, stride_pn)
    g_post = tl.zeros([NP, BLOCK_T], dtype=tl.float32)
    g_res = tl.zeros([NP, BLOCK_T, NP], dtype=tl.float32)  # [i, t, j]: j last keeps the update barrier-free
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        tile_mask = h_mask[:, :, None] & mask_c[None, None, :]
        row_mask = mask_t[:, None] & mask_c[None, :]
        g_out = _stream_tile(g_out_ptr, rows, offs_n, offs_c, tile_mask, N * C, C)  # [i, t, c]
        f = tl.load(f_ptr + rows[:, None] * stride_ft + offs_c[None, :], mask=row_mask, other=0.0).to(
            tl.float32
        )
        g_f = tl.sum(h_post[:, :, None] * g_out, axis=0)
        tl.store(
            g_f_ptr + rows[:, None] * C + offs_c[None, :], g_f.to(g_f_ptr.dtype.element_ty), mask=row_mask
        )
        g_post += tl.sum(g_out * f[None, :, :], axis=2)
        for j in tl.static_range(N):
            h_res_j = _coef_tile(
                h_res_ptr + j * stride_rj, rows, offs_n, h_mask, stride_rt, stride_ri
            )  # H[:, :, j]
            g_x_j = tl.sum(h_res_j[:, :, None] * g_out, axis=0)
            g_x_ptrs = g_x_ptr + rows[:, None] * (N * C) + j * C + offs_c[None, :]
            tl.store(g_x_ptrs, g_x_j.to(g_x_ptr.dtype.element_ty), mask=row_mask)
            x_j = tl.load(
                x_ptr + rows[:, None] * stride_xt + j * stride_xn + offs_c[None, :], mask=row_mask, other=0.0
            )
            g_res_j = tl.sum(g_out * x_j.to(tl.float32)[None, :, :], axis=2)
            g_res += tl.where(offs_n[None, None, :] == j, g_res_j[:, :, None], 0.0)
    tl.store(
        g_post_ptr + rows[None, :] * N + offs_n[:, None], g_post.to(g_post_ptr.dtype.element_ty), mask=h_mask
    )
    g_res_ptrs = g_res_ptr + rows[None, :, None] * (N * N) + offs_n[:, None, None] * N + offs_n[None, None, :]
    g_res_mask = h_mask[:, :, None] & (offs_n < N)[None, None, :]
    tl.store(g_res_ptrs, g_res.to(g_res_ptr.dtype.element_ty), mask=g_res_mask)


def _mix_grid(cfg, T: int, C: int) -> tuple[int, int]:
    return triton.cdiv(T, cfg.block_t), triton.cdiv(C, cfg.block_c)


class _PreMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TNC, h_pre_TN):
        T, n, C = x_TNC.shape
        u_TC = new_output((T, C), x_TNC.dtype, x_TNC.device)
        if T * C > 0:
            cfg = launch_config("mix_fwd", num_tokens=T, n=n, width=C, device=x_TNC.device)
            _pre_mix_fwd_kernel[_mix_grid(cfg, T, C)](
                x_TNC, h_pre_TN, u_TC, T, C, x_TNC.stride(0), x_TNC.stride(1), *h_pre_TN.stride(),
                N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps,
            )  # fmt: skip
        ctx.save_for_backward(x_TNC, h_pre_TN)
        return u_TC

    @staticmethod
    def backward(ctx, g_u_TC):
        x_TNC, h_pre_TN = ctx.saved_tensors
        T, n, C = x_TNC.shape
        g_x_TNC = new_output((T, n, C), x_TNC.dtype, x_TNC.device)
        g_h_TN = new_output((T, n), h_pre_TN.dtype, x_TNC.device)
        if T * C == 0:
            return g_x_TNC, torch.zeros_like(h_pre_TN)
        cfg = launch_config("mix_bwd", num_tokens=T, n=n, width=C, device=x_TNC.device)
        _pre_mix_bwd_kernel[(triton.cdiv(T, cfg.block_t),)](
            x_TNC, h_pre_TN, g_u_TC.contiguous(), g_x_TNC, g_h_TN,
            T, C, x_TNC.stride(0), x_TNC.stride(1), *h_pre_TN.stride(),
            N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps,
        )  # fmt: skip
        return g_x_TNC, g_h_TN


class _PostResMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TNC, f_TC, h_post_TN, h_res_TNN):
        T, n, C = x_TNC.shape
        out_TNC = new_output((T, n, C), x_TNC.dtype, x_TNC.device)
        if T * C > 0:
            cfg = launch_config("mix_fwd", num_tokens=T, n=n, width=C, device=x_TNC.device)
            _post_res_mix_fwd_kernel[_mix_grid(cfg, T, C)](
                x_TNC, f_TC, h_post_TN, h_res_TNN, out_TNC,
                T, C, x_TNC.stride(0), x_TNC.stride(1), f_TC.stride(0),
                *h_post_TN.stride(), *h_res_TNN.stride(),
                N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c,
                num_warps=cfg.num_warps,
            )  # fmt: skip
        ctx.save_for_backward(x_TNC, f_TC, h_post_TN, h_res_TNN)
        return out_TNC

    @staticmethod
    def backward(ctx, g_out_TNC):
        x_TNC, f_TC, h_post_TN, h_res_TNN = ctx.saved_tensors
        T, n, C = x_TNC.shape
        device = x_TNC.device
        g_x_TNC = new_output((T, n, C), x_TNC.dtype, device)
        g_f_TC = new_output((T, C), f_TC.dtype, device)
        g_post_TN = new_output((T, n), h_post_TN.dtype, device)
        g_res_TNN = new_output((T, n, n), h_res_TNN.dtype, device)
        if T * C == 0:
            return g_x_TNC, g_f_TC, torch.zeros_like(h_post_TN), torch.zeros_like(h_res_TNN)
        cfg = launch_config("mix_bwd", num_tokens=T, n=n, width=C, device=device)
        _post_res_mix_bwd_kernel[(triton.cdiv(T, cfg.block_t),)](
            x_TNC, f_TC, h_post_TN, h_res_TNN, g_out_TNC.contiguous(), g_x_TNC, g_f_TC, g_post_TN, g_res_TNN,
            T, C, x_TNC.stride(0), x_TNC.stride(1), f_TC.stride(0), *h_post_TN.stride(), *h_res_TNN.stride(),
            N=n, NP=triton.next_power_of_2(n), BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps,
        )  # fmt: skip
        return g_x_TNC, g_f_TC, g_post_TN, g_res_TNN


def _last_dim_contiguous(tensor: Tensor) -> Tensor:
    """Views with stride 1 along C pass as they are (an `expand`ed stream axis too); others are copied."""
    return tensor if tensor.stride(-1) == 1 or tensor.shape[-1] == 1 else tensor.contiguous()


def _check_streams_input(x_TNC: Tensor) -> int:
    if x_TNC.dim() != 3:
        raise ValueError(f"x_TNC {tuple(x_TNC.shape)} must be (T, n, C)")
    n = x_TNC.shape[1]
    check_streams(n)
    return n


def pre_mix(x_TNC: Tensor, h_pre_TN: Tensor) -> Tensor:
    """u = Σ_j H_pre[j] · x_j, as `kernels.reference.pre_mix` (fp32 accumulation, x's dtype out)."""
    n = _check_streams_input(x_TNC)
    check_dtype("x_TNC", x_TNC)
    check_dtype("h_pre_TN", h_pre_TN)
    check_device(x_TNC=x_TNC, h_pre_TN=h_pre_TN)
    if h_pre_TN.shape != (x_TNC.shape[0], n):
        raise ValueError(f"h_pre_TN {tuple(h_pre_TN.shape)} must be (T, n) = {(x_TNC.shape[0], n)}")
    return _PreMix.apply(_last_dim_contiguous(x_TNC), h_pre_TN)


def post_res_mix(x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
    """x'_i = Σ_j H_res[i, j] · x_j + H_post[i] · f, as `kernels.reference.post_res_mix` (x's dtype out)."""
    n = _check_streams_input(x_TNC)
    T, _, C = x_TNC.shape
    for name, tensor in (
        ("x_TNC", x_TNC),
        ("f_TC", f_TC),
        ("h_post_TN", h_post_TN),
        ("h_res_TNN", h_res_TNN),
    ):
        check_dtype(name, tensor)
    check_device(x_TNC=x_TNC, f_TC=f_TC, h_post_TN=h_post_TN, h_res_TNN=h_res_TNN)
    if f_TC.shape != (T, C) or h_post_TN.shape != (T, n) or h_res_TNN.shape != (T, n, n):
        raise ValueError(
            f"f_TC {tuple(f_TC.shape)}, h_post_TN {tuple(h_post_TN.shape)} and "
            f"h_res_TNN {tuple(h_res_TNN.shape)} "
            f"must be (T, C), (T, n) and (T, n, n) with (T, n, C) = {(T, n, C)}"
        )
    return _PostResMix.apply(_last_dim_contiguous(x_TNC), _last_dim_contiguous(f_TC), h_post_TN, h_res_TNN)
