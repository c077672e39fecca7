"""Triton kernels for the mHC coefficients: x·φ and Σx² in one pass, then scale, bias, σ and 2σ.

Shape legend: T tokens, K = n·C flattened stream width, M = 2n + R coefficient columns laid out
[pre (n) | post (n) | res (R)], R = n² (mHC) or n! (mHC-lite).

Forward (MHC_SPEC §1.2, the fused form of paper Eqs. 14-18; equal to `kernels.reference.mhc_coefficients`):

    mixes_TM  = x_TK @ φ_KM                        fp32 accumulation (TF32 tensor cores, see `dot_precision`)
    q_T       = Σ_k x_TK²                          accumulated in the same pass over x
    ρ_T       = (q_T / K + eps)^(-1/2)             the inverse RMS, applied after the GEMM (paper Eq. 15-16)
    z_TM      = mixes_TM · ρ_T · g_M + b_M         g_M = α_pre | α_post | α_res over the three column groups
    H_pre     = σ(z_pre) + pre_eps,   H_post = 2σ(z_post),   res_logits = z_res (returned raw)

One program owns BLOCK_T tokens and walks K in BLOCK_K steps; each x tile is read once and feeds both the
`tl.dot` into a [BLOCK_T, BLOCK_M] fp32 accumulator and the running Σx². The epilogue writes the three outputs
plus ``mixes`` and ``ρ`` (M + 1 floats per token, ≈ 0.5% of x's bytes at n = 4, C = 2560) for the backward.

Backward. With upstream gradients G_pre, G_post, G_res and s = σ(z):

    ∂z            = G_pre · s(1 − s)  |  G_post · 2s(1 − s)  |  G_res               (per column group)
    ∂b_M          = Σ_t ∂z_TM
    ∂g_M          = Σ_t ∂z_TM · mixes_TM · ρ_T          ∂α_group = Σ of ∂g over the group's columns
    ∂mixes_TM     = ∂z_TM · g_M · ρ_T
    ∂ρ_T          = Σ_m ∂z_TM · mixes_TM · g_M
    ∂q_T          = ∂ρ_T · dρ/dq = ∂ρ_T · (−ρ_T³ / (2K))
    ∂x_TK         = ∂mixes_TM @ φ_KMᵀ + 2 ∂q_T · x_TK
    ∂φ_KM         = x_TKᵀ @ ∂mixes_TM

Two kernels. `_bwd_prep_kernel` does the per-token algebra above (reading the saved mixes and ρ, M + 1 floats
per token) and writes ∂mixes, ∂q and per-token-block partial sums of ∂b and ∂g. `_bwd_kernel` is the fused
pair of GEMMs: one program holds a [BLOCK_K, BLOCK_M] tile of φ and of the ∂φ accumulator and walks its share
of the tokens, so each x tile is read once and serves both ∂x (written immediately) and ∂φ (the paper's
"backward (two matmuls) is one kernel, so x is not reloaded", MHC_SPEC §5). ∂mixes is re-read once per K
block; it is M floats per token and stays in L2. Token splits give the GPU enough programs; their partial ∂φ
are summed by one `torch.sum` (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.triton_launch import (
    MAX_COEFFICIENT_COLUMNS,
    check_device,
    check_dtype,
    check_streams,
    dot_precision,
    launch_config,
    new_output,
)

__all__ = ["mhc_coefficients"]


@triton.jit
def _gates(alpha_ptr, offs_m, N: tl.constexpr):
    """g_M: α_pre on the first n columns, α_post on the next n, α_res on the rest."""
    alpha_pre = tl.load(alpha_ptr).to(tl.float32)
    alpha_post = tl.load(alpha_ptr + 1).to(tl.float32)
    alpha_res = tl.load(alpha_ptr + 2).to(tl.float32)
    return tl.where(offs_m < N, alpha_pre, tl.where(offs_m < 2 * N, alpha_post, alpha_res))


@triton.jit
def _fwd_kernel(
    x_ptr, phi_ptr, alpha_ptr, bias_ptr,  # inputs
    pre_ptr, post_ptr, res_ptr, mixes_ptr, inv_rms_ptr,  # outputs
    num_tokens, K, M, stride_xt, stride_pk, stride_pm, eps, pre_eps,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_m = tl.arange(0, BLOCK_M)
    mask_t = offs_t < num_tokens
    mask_m = offs_m < M
    x_rows = x_ptr + offs_t.to(tl.int64)[:, None] * stride_xt

    mixes = tl.zeros([BLOCK_T, BLOCK_M], dtype=tl.float32)
    squares = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)  # reduced once after the loop
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=mask_t[:, None] & mask_k[None, :], other=0.0).to(
            tl.float32
        )
        phi = tl.load(
            phi_ptr + offs_k[:, None] * stride_pk + offs_m[None, :] * stride_pm,
            mask=mask_k[:, None] & mask_m[None, :],
            other=0.0,
        ).to(tl.float32)
        mixes = tl.dot(x, phi, mixes, input_precision=DOT_PRECISION)
        squares += x * x
    inv_rms = tl.rsqrt(tl.sum(squares, axis=1) / K + eps)

    gate = _gates(alpha_ptr, offs_m, N)
    bias = tl.load(bias_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
    logits = mixes * inv_rms[:, None] * gate[None, :] + bias[None, :]
    sig = tl.sigmoid(logits)

    rows = offs_t.to(tl.int64)[:, None]
    cols = offs_m[None, :]
    tmask = mask_t[:, None]
    tl.store(pre_ptr + rows * N + cols, sig + pre_eps, mask=tmask & (cols < N))
    tl.store(post_ptr + rows * N + (cols - N), 2.0 * sig, mask=tmask & (cols >= N) & (cols < 2 * N))
    tl.store(res_ptr + rows * (M - 2 * N) + (cols - 2 * N), logits, mask=tmask & (cols >= 2 * N) & (cols < M))
    tl.store(mixes_ptr + rows * M + cols, mixes, mask=tmask & (cols < M))
    tl.store(inv_rms_ptr + offs_t, inv_rms, mask=mask_t)


@triton.jit
def _bwd_prep_kernel(
    mixes_ptr, inv_rms_ptr, alpha_ptr, bias_ptr, g_pre_ptr, g_post_ptr, g_res_ptr,  # inputs
    g_mixes_ptr, g_sumsq_ptr, part_bias_ptr, part_gate_ptr,  # outputs
    num_tokens, K, M,
    N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_m = tl.arange(0, BLOCK_M)
    mask_t = offs_t < num_tokens
    mask_m = offs_m < M
    rows = offs_t.to(tl.int64)[:, None]
    cols = offs_m[None, :]
    tmask = mask_t[:, None]

    mixes = tl.load(mixes_ptr + rows * M + cols, mask=tmask & (cols < M), other=0.0)
    inv_rms = tl.load(inv_rms_ptr + offs_t, mask=mask_t, other=0.0)
    gate = _gates(alpha_ptr, offs_m, N)
    bias = tl.load(bias_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
    sig = tl.sigmoid(mixes * inv_rms[:, None] * gate[None, :] + bias[None, :])

    g_pre = tl.load(g_pre_ptr + rows * N + cols, mask=tmask & (cols < N), other=0.0).to(tl.float32)
    g_post = tl.load(
        g_post_ptr + rows * N + (cols - N), mask=tmask & (cols >= N) & (cols < 2 * N), other=0.0
    ).to(tl.float32)
    g_res = tl.load(
        g_res_ptr + rows * (M - 2 * N) + (cols - 2 * N), mask=tmask & (cols >= 2 * N) & (cols < M), other=0.0
    ).to(tl.float32)
    dsig = sig * (1.0 - sig)
    g_logits = tl.where(cols < N, g_pre * dsig, tl.where(cols < 2 * N, g_post * 2.0 * dsig, g_res))

    tl.store(
        g_mixes_ptr + rows * M + cols, g_logits * gate[None, :] * inv_rms[:, None], mask=tmask & (cols < M)
    )
    g_inv_rms = tl.sum(g_logits * mixes * gate[None, :], axis=1)
    g_sumsq = g_inv_rms * (-0.5 / K) * inv_rms * inv_rms * inv_rms
    tl.store(g_sumsq_ptr + offs_t, g_sumsq, mask=mask_t)
    tl.store(part_bias_ptr + pid * M + offs_m, tl.sum(g_logits, axis=0), mask=mask_m)
    tl.store(
        part_gate_ptr + pid * M + offs_m, tl.sum(g_logits * mixes * inv_rms[:, None], axis=0), mask=mask_m
    )


@triton.jit
def _bwd_kernel(
    x_ptr, phi_ptr, g_mixes_ptr, g_sumsq_ptr,  # inputs
    g_x_ptr, part_phi_ptr,  # outputs
    num_tokens, K, M, tokens_per_split, stride_xt, stride_pk, stride_pm,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    mask_k = offs_k < K
    mask_m = offs_m < M
    phi = tl.load(
        phi_ptr + offs_k[:, None] * stride_pk + offs_m[None, :] * stride_pm,
        mask=mask_k[:, None] & mask_m[None, :],
        other=0.0,
    ).to(tl.float32)
    g_phi = tl.zeros([BLOCK_K, BLOCK_M], dtype=tl.float32)

    t_begin = pid_s * tokens_per_split
    t_end = tl.minimum(t_begin + tokens_per_split, num_tokens)
    for t0 in range(t_begin, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < t_end
        rows = offs_t.to(tl.int64)[:, None]
        g_mixes = tl.load(
            g_mixes_ptr + rows * M + offs_m[None, :], mask=mask_t[:, None] & mask_m[None, :], other=0.0
        )
        g_sumsq = tl.load(g_sumsq_ptr + offs_t, mask=mask_t, other=0.0)
        tile_mask = mask_t[:, None] & mask_k[None, :]
        x = tl.load(x_ptr + rows * stride_xt + offs_k[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        g_x = tl.dot(g_mixes, tl.trans(phi), input_precision=DOT_PRECISION) + 2.0 * g_sumsq[:, None] * x
        tl.store(g_x_ptr + rows * K + offs_k[None, :], g_x.to(g_x_ptr.dtype.element_ty), mask=tile_mask)
        g_phi = tl.dot(tl.trans(x), g_mixes, g_phi, input_precision=DOT_PRECISION)

    part = part_phi_ptr + pid_s.to(tl.int64) * K * M
    tl.store(part + offs_k[:, None] * M + offs_m[None, :], g_phi, mask=mask_k[:, None] & mask_m[None, :])


def _coefficients_fwd(
    x_TK: Tensor, phi_KM: Tensor, alpha_3: Tensor, bias_M: Tensor, n: int, eps: float, pre_eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, K = x_TK.shape
    M = phi_KM.shape[1]
    device = x_TK.device
    h_pre_TN = new_output((T, n), torch.float32, device)
    h_post_TN = new_output((T, n), torch.float32, device)
    res_TR = new_output((T, M - 2 * n), torch.float32, device)
    mixes_TM = new_output((T, M), torch.float32, device)
    inv_rms_T = new_output((T,), torch.float32, device)
    if T > 0:
        cfg = launch_config("coefficients_fwd", num_tokens=T, n=n, width=K, num_cols=M, device=device)
        _fwd_kernel[(triton.cdiv(T, cfg.block_t),)](
            x_TK, phi_KM, alpha_3, bias_M,
            h_pre_TN, h_post_TN, res_TR, mixes_TM, inv_rms_T,
            T, K, M, x_TK.stride(0), phi_KM.stride(0), phi_KM.stride(1), eps, pre_eps,
            N=n, BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k, BLOCK_M=cfg.block_m,
            DOT_PRECISION=dot_precision(x_TK.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return h_pre_TN, h_post_TN, res_TR, mixes_TM, inv_rms_T


def _coefficients_bwd(
    x_TK: Tensor, phi_KM: Tensor, alpha_3: Tensor, bias_M: Tensor, mixes_TM: Tensor, inv_rms_T: Tensor,
    g_pre_TN: Tensor, g_post_TN: Tensor, g_res_TR: Tensor, n: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    T, K = x_TK.shape
    M = phi_KM.shape[1]
    device = x_TK.device
    prep = launch_config("coefficients_prep", num_tokens=T, n=n, width=K, num_cols=M, device=device)
    num_t_blocks = triton.cdiv(T, prep.block_t)
    g_mixes_TM = new_output((T, M), torch.float32, device)
    g_sumsq_T = new_output((T,), torch.float32, device)
    part_bias_BM = new_output((num_t_blocks, M), torch.float32, device)
    part_gate_BM = new_output((num_t_blocks, M), torch.float32, device)
    _bwd_prep_kernel[(num_t_blocks,)](
        mixes_TM, inv_rms_T, alpha_3, bias_M, g_pre_TN, g_post_TN, g_res_TR,
        g_mixes_TM, g_sumsq_T, part_bias_BM, part_gate_BM,
        T, K, M, N=n, BLOCK_T=prep.block_t, BLOCK_M=prep.block_m, num_warps=prep.num_warps,
    )  # fmt: skip

    cfg = launch_config("coefficients_bwd", num_tokens=T, n=n, width=K, num_cols=M, device=device)
    tokens_per_split = triton.cdiv(triton.cdiv(T, cfg.block_t), cfg.num_splits) * cfg.block_t
    num_splits = triton.cdiv(T, tokens_per_split)
    g_x_TK = new_output((T, K), x_TK.dtype, device)
    part_phi_SKM = new_output((num_splits, K, M), torch.float32, device)
    _bwd_kernel[(triton.cdiv(K, cfg.block_k), num_splits)](
        x_TK, phi_KM, g_mixes_TM, g_sumsq_T, g_x_TK, part_phi_SKM,
        T, K, M, tokens_per_split, x_TK.stride(0), phi_KM.stride(0), phi_KM.stride(1),
        BLOCK_T=cfg.block_t, BLOCK_K=cfg.block_k, BLOCK_M=cfg.block_m,
        DOT_PRECISION=dot_precision(x_TK.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip

    g_phi_KM = part_phi_SKM.sum(dim=0).to(phi_KM.dtype)
    g_bias_M = part_bias_BM.sum(dim=0).to(bias_M.dtype)
    g_gate_M = part_gate_BM.sum(dim=0)
    g_alpha_3 = torch.stack([g_gate_M[:n].sum(), g_gate_M[n : 2 * n].sum(), g_gate_M[2 * n :].sum()])
    return g_x_TK, g_phi_KM, g_alpha_3.to(alpha_3.dtype), g_bias_M


class _Coefficients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TK, phi_KM, alpha_3, bias_M, n, eps, pre_eps):
        h_pre_TN, h_post_TN, res_TR, mixes_TM, inv_rms_T = _coefficients_fwd(
            x_TK, phi_KM, alpha_3, bias_M, n, eps, pre_eps
        )
        ctx.save_for_backward(x_TK, phi_KM, alpha_3, bias_M, mixes_TM, inv_rms_T)
        ctx.n = n
        return h_pre_TN, h_post_TN, res_TR

    @staticmethod
    def backward(ctx, g_pre_TN, g_post_TN, g_res_TR):
        x_TK, phi_KM, alpha_3, bias_M, mixes_TM, inv_rms_T = ctx.saved_tensors
        if x_TK.shape[0] == 0:
            grads = (torch.zeros_like(x_TK), torch.zeros_like(phi_KM), torch.zeros_like(alpha_3))
            return (*grads, torch.zeros_like(bias_M), None, None, None)
        g_x_TK, g_phi_KM, g_alpha_3, g_bias_M = _coefficients_bwd(
            x_TK, phi_KM, alpha_3, bias_M, mixes_TM, inv_rms_T,
            g_pre_TN.contiguous(), g_post_TN.contiguous(), g_res_TR.contiguous(), ctx.n,
        )  # fmt: skip
        return g_x_TK, g_phi_KM, g_alpha_3, g_bias_M, None, None, None


def mhc_coefficients(
    x_TK: Tensor, phi_KM: Tensor, alpha_3: Tensor, bias_M: Tensor, n: int, eps: float, pre_eps: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of one mHC / mHC-lite connection, as `kernels.reference.mhc_coefficients`.

    Returns fp32 ``(h_pre_TN, h_post_TN, res_logits_TR)``. x may be fp32, bf16 or fp16; φ, α and b any of
    those. A copy is made only when x's last dimension (or α, b) is not contiguous; φ may have any strides.
    """
    check_streams(n)
    for name, tensor in (("x_TK", x_TK), ("phi_KM", phi_KM), ("alpha_3", alpha_3), ("bias_M", bias_M)):
        check_dtype(name, tensor)
    check_device(x_TK=x_TK, phi_KM=phi_KM, alpha_3=alpha_3, bias_M=bias_M)
    if x_TK.dim() != 2 or phi_KM.dim() != 2 or phi_KM.shape[0] != x_TK.shape[1]:
        raise ValueError(
            f"x_TK {tuple(x_TK.shape)} and phi_KM {tuple(phi_KM.shape)} must be (T, K) and (K, M)"
        )
    K, M = phi_KM.shape
    if K % n or 2 * n >= M:
        raise ValueError(f"phi_KM {tuple(phi_KM.shape)} must be (n·C, 2n + R) with R >= 1 for n = {n}")
    if M > MAX_COEFFICIENT_COLUMNS:
        raise ValueError(f"{M} coefficient columns exceed the Triton kernels' {MAX_COEFFICIENT_COLUMNS}")
    if alpha_3.shape != (3,) or bias_M.shape != (M,):
        raise ValueError(
            f"alpha_3 {tuple(alpha_3.shape)} must be (3,) and bias_M {tuple(bias_M.shape)} ({M},)"
        )
    if x_TK.stride(-1) != 1:
        x_TK = x_TK.contiguous()
    return _Coefficients.apply(
        x_TK, phi_KM, alpha_3.contiguous(), bias_M.contiguous(), n, float(eps), float(pre_eps)
    )
