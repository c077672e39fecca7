"""PyTorch reference of the mHC primitive ops: the ground truth every other backend must match.

Shape legend (suffixes on tensor names):
    T  tokens (batch × sequence, flattened)       N  residual streams (expansion rate n)
    C  model width                                K  flattened stream width n·C
    M  coefficient columns, laid out [pre (n) | post (n) | res (R)]; R = n² (mHC) or n! (mHC-lite)
    P  permutation matrices (n!)

Equations (shared MHC_SPEC §1.2, paper Eqs. 7-9 and the fused form Eqs. 14-19):
    mixes_TM = x_TK @ phi_KM                       one GEMM for all three mappings
    r_T      = sqrt(mean_K(x_TK²) + eps)           unweighted RMSNorm over the flattened n·C vector: a norm
                                                   weight γ would be redundant, x/r·diag(γ)·φ = x/r·φ'
    logits   = alpha_group · mixes / r + bias      α = (α_pre, α_post, α_res) gates its column group
    H_pre    = σ(logits_pre)   (+eps in the deepseek-v4 convention)
    H_post   = 2σ(logits_post)
    H_res    = Sinkhorn-Knopp(logits_res) (mHC) or Σ_p softmax(logits_res)_p · P_p (mHC-lite)
    u_TC     = Σ_j H_pre[j] · x_TjC                                     pre-mix: the sublayer input
    x'_TiC   = Σ_j H_res[i, j] · x_TjC + H_post[i] · f_TC               post + residual mix

Sinkhorn conventions (MHC_SPEC §1.3). Both return the matrix that *left-multiplies* the streams, so that its
rows, normalised last, sum to exactly 1 (forward gain 1):
    paper:        M = exp(L − max L); repeat t times: normalise columns, then rows.
    deepseek-v4:  the logits are stored as C = H_resᵀ; M = softmax over H's columns + eps, then rows (+eps),
                  then (t − 1) × (columns, rows), every denominator floored by +eps.
The gradient is the exact gradient of the truncated (unrolled) loop, as the Triton backward computes it by
recomputing from the saved logits; here a hand-written reverse pass does the same (`_SinkhornIterations`).
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "birkhoff_mix",
    "mhc_coefficients",
    "permutation_matrices",
    "post_res_mix",
    "pre_mix",
    "sinkhorn",
]


def mhc_coefficients(
    x_TK: Tensor, phi_KM: Tensor, alpha_3: Tensor, bias_M: Tensor, n: int, eps: float, pre_eps: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of one mHC / mHC-lite connection for every token, in fp32.

    Returns ``(h_pre_TN, h_post_TN, res_logits_TR)``; the caller projects the residual logits (Sinkhorn or the
    Birkhoff combination). ``pre_eps`` is added to H_pre (1e-6 in the deepseek-v4 convention, else 0).
    """
    x32_TK = _acc(x_TK)
    dtype = x32_TK.dtype
    return _Coefficients.apply(x32_TK, phi_KM.to(dtype), alpha_3.to(dtype), bias_M.to(dtype), n, eps, pre_eps)


class _Coefficients(torch.autograd.Function):
    """The coefficient equations above as one autograd node, with a backward of two GEMMs and one pass over x.

    Autograd's own graph keeps ~15 nodes and, in backward, three (T, K) temporaries for the RMS term alone.
    With s = mixes · r⁻¹ (so logits = s ⊙ gate + bias), ∂ℓ = ∂logits (σ' = σ(1 − σ) on the pre/post columns,
    times 2 on post):
        ∂bias = Σ_t ∂ℓ,    ∂gate = Σ_t ∂ℓ ⊙ s (summed per column group for α),
        ∂mixes = ∂ℓ ⊙ gate · r⁻¹,    ∂r⁻¹ = Σ_m ∂ℓ ⊙ gate ⊙ mixes,
        ∂φ = xᵀ ∂mixes,    ∂x = ∂mixes φᵀ − (∂r⁻¹ · r⁻³ / K) · x      (r⁻¹ = (Σ_k x²/K + ε)^(−1/2)).
    The sum of squares comes from `vector_norm`, which allocates no (T, K) temporary (equal to mean(x²) up to
    rounding).
    """

    @staticmethod
    def forward(ctx, x_TK, phi_KM, alpha_3, bias_M, n, eps, pre_eps):
        num_res = phi_KM.shape[1] - 2 * n
        mixes_TM = x_TK @ phi_KM
        mean_square_T1 = torch.linalg.vector_norm(x_TK, dim=-1, keepdim=True).square_().div_(x_TK.shape[1])
        inv_rms_T1 = mean_square_T1.add_(eps).rsqrt_()
        gate_M = torch.cat([alpha_3[0].expand(n), alpha_3[1].expand(n), alpha_3[2].expand(num_res)])
        scaled_TM = mixes_TM * inv_rms_T1
        logits_TM = torch.addcmul(bias_M, scaled_TM, gate_M)
        sig_pre_TN = torch.sigmoid(logits_TM[:, :n])
        sig_post_TN = torch.sigmoid(logits_TM[:, n : 2 * n])
        ctx.n = n
        ctx.save_for_backward(x_TK, phi_KM, mixes_TM, inv_rms_T1, scaled_TM, gate_M, sig_pre_TN, sig_post_TN)
        return sig_pre_TN + pre_eps, 2.0 * sig_post_TN, logits_TM[:, 2 * n :]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pre_TN, grad_post_TN, grad_res_TR):
        x_TK, phi_KM, mixes_TM, inv_rms_T1, scaled_TM, gate_M, sig_pre_TN, sig_post_TN = ctx.saved_tensors
        n = ctx.n
        grad_logits_TM = torch.zeros_like(mixes_TM)
        if grad_pre_TN is not None:
            grad_logits_TM[:, :n] = grad_pre_TN * sig_pre_TN * (1.0 - sig_pre_TN)
        if grad_post_TN is not None:
            grad_logits_TM[:, n : 2 * n] = 2.0 * grad_post_TN * sig_post_TN * (1.0 - sig_post_TN)
        if grad_res_TR is not None:
            grad_logits_TM[:, 2 * n :] = grad_res_TR
        grad_bias_M = grad_logits_TM.sum(dim=0)
        grad_gate_M = (grad_logits_TM * scaled_TM).sum(dim=0)
        grad_alpha_3 = torch.stack([grad_gate_M[:n].sum(), grad_gate_M[n : 2 * n].sum(), grad_gate_M[2 * n :].sum()])
        grad_scaled_TM = grad_logits_TM.mul_(gate_M)
        grad_inv_rms_T1 = (grad_scaled_TM * mixes_TM).sum(dim=-1, keepdim=True)
        grad_mixes_TM = grad_scaled_TM.mul_(inv_rms_T1)
        grad_x_TK = grad_mixes_TM @ phi_KM.T
        grad_x_TK.addcmul_(x_TK, grad_inv_rms_T1.mul_(inv_rms_T1.pow(3)), value=-1.0 / x_TK.shape[1])
        grad_phi_KM = x_TK.T @ grad_mixes_TM
        return grad_x_TK, grad_phi_KM, grad_alpha_3, grad_bias_M, None, None, None


def sinkhorn(logits_TNN: Tensor, num_iters: int, convention: str = "paper", eps: float = 1e-6) -> Tensor:
    """Project logits onto (approximately) doubly stochastic matrices; rows are normalised last (exact).

    The iterations run on a contiguous token-last copy (N, N, T): every row/column sum then reduces over an
    outer axis with the token axis contiguous, which is ~4× faster on CPU than reducing over a trailing axis
    of length n (measured at T = 2048, n = 4, forward + backward). The loop itself is one autograd node
    (`_SinkhornIterations`) with a hand-written reverse pass; the start (exp or softmax) is left to autograd.
    """
    if convention == "paper":
        m_NNT = torch.exp(logits_TNN - logits_TNN.amax(dim=(-2, -1), keepdim=True)).permute(1, 2, 0).contiguous()
        axes, floor = (0, 1) * num_iters, 0.0  # (columns, rows) × t
    elif convention == "deepseek-v4":
        # logits hold C = H_resᵀ: softmax over C's rows = over H's columns.
        m_NNT = (torch.softmax(logits_TNN, dim=-1) + eps).permute(2, 1, 0).contiguous()
        axes, floor = (1,) + (0, 1) * (num_iters - 1), eps  # rows, then (columns, rows) × (t − 1)
    else:
        raise ValueError(f"convention ({convention!r}) must be 'paper' or 'deepseek-v4'")
    return _SinkhornIterations.apply(m_NNT, axes, floor).permute(2, 0, 1)


def _normaliser(m_NNT: Tensor, axis: int, floor: float) -> Tensor:
    """d = Σ_axis m (+ floor): axis 0 sums a column (normalises columns), axis 1 a row."""
    sum_NNT = m_NNT.sum(dim=axis, keepdim=True)
    return sum_NNT.add_(floor) if floor else sum_NNT


class _SinkhornIterations(torch.autograd.Function):
    """The alternating normalisations y = m / d(m), d = Σ_axis m + floor, on a token-last (N, N, T) tensor.

    Autograd through the unrolled loop records ~5 nodes per normalisation (40 for the paper's t = 20), each a
    tiny op; this is one node. Vector-Jacobian product of one normalisation (d broadcast along ``axis``):
        ∂y/∂m contributes ∂y / d;   through d: −Σ_axis(∂y ⊙ m) / d² = −Σ_axis(∂y ⊙ y) / d
        ⇒ ∂m = (∂y − Σ_axis(∂y ⊙ y)) / d
    Forward saves only its input; backward recomputes the iterates with the same ops (so the same values) and
    applies the products in reverse: the exact gradient of the truncated iteration, as autograd's, up to rounding.
    """

    @staticmethod
    def forward(ctx, m_NNT: Tensor, axes: tuple[int, ...], floor: float) -> Tensor:
        ctx.axes, ctx.floor = axes, floor
        ctx.save_for_backward(m_NNT)
        m_NNT = m_NNT.clone()
        for axis in axes:
            m_NNT.div_(_normaliser(m_NNT, axis, floor))
        return m_NNT

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_NNT: Tensor) -> tuple[Tensor, None, None]:
        (m_NNT,) = ctx.saved_tensors
        iterates = []
        for axis in ctx.axes:
            d_NNT = _normaliser(m_NNT, axis, ctx.floor)
            m_NNT = m_NNT / d_NNT
            iterates.append((m_NNT, d_NNT))
        grad_NNT = grad_NNT.clone(memory_format=torch.contiguous_format)
        for axis, (y_NNT, d_NNT) in zip(reversed(ctx.axes), reversed(iterates), strict=True):
            grad_NNT.sub_((grad_NNT * y_NNT).sum(dim=axis, keepdim=True)).div_(d_NNT)
        return grad_NNT, None, None


def _acc(t: Tensor) -> Tensor:
    """Accumulation precision: at least fp32 (bf16/fp16 are promoted; float64 stays float64 for checks)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@cache
def _permutations(n: int) -> tuple[tuple[int, ...], ...]:
    return tuple(itertools.permutations(range(n)))


def permutation_matrices(n: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """All n! permutation matrices, shape (n!, n, n), identity first (itertools order)."""
    eye_NN = torch.eye(n, dtype=dtype, device=device)
    return torch.stack([eye_NN[list(p)] for p in _permutations(n)])


def birkhoff_mix(res_logits_TP: Tensor, perms_PNN: Tensor) -> Tensor:
    """mHC-lite's H_res: softmax weights over the permutation matrices; exactly doubly stochastic."""
    assert res_logits_TP.shape[-1] == perms_PNN.shape[0] == math.factorial(perms_PNN.shape[-1])
    weights_TP = torch.softmax(_acc(res_logits_TP), dim=-1)
    return torch.einsum("tp,pij->tij", weights_TP, perms_PNN.to(weights_TP.dtype))


def pre_mix(x_TNC: Tensor, h_pre_TN: Tensor) -> Tensor:
    """Read the streams into one sublayer input: u = Σ_j H_pre[j] · x_j, accumulated in fp32."""
    return _PreMix.apply(_acc(x_TNC), _acc(h_pre_TN)).to(x_TNC.dtype)


def _combine_streams(x_TNC: Tensor, w_TN: Tensor) -> Tensor:
    """Σ_j w[:, j] · x[:, j] as n fused multiply-adds on (T, C) slices.

    No (T, N, C) temporary: on CPU ~1.5× faster than a broadcast multiply + sum and ~6× faster than the
    batched (1×n)@(n×C) matmul (T = 4096, n = 4, C = 96).
    """
    out_TC = x_TNC[:, 0] * w_TN[:, 0, None]
    for j in range(1, x_TNC.shape[1]):
        out_TC.addcmul_(x_TNC[:, j], w_TN[:, j, None])
    return out_TC


def _stream_dots(x_TNC: Tensor, v_TC: Tensor) -> Tensor:
    """Σ_c x[:, j, c] · v[:, c] for each stream j, shape (T, N): a batched matrix-vector product, which writes
    (T, N) instead of the (T, N, C) product a broadcast multiply + sum would allocate."""
    return torch.bmm(x_TNC, v_TC[:, :, None]).squeeze(-1)


class _PreMix(torch.autograd.Function):
    """u = Σ_j H_pre[j] x_j.   Gradients: ∂x_j = H_pre[j] ∂u,   ∂H_pre[j] = Σ_c x_j ∂u."""

    @staticmethod
    def forward(ctx, x_TNC: Tensor, h_pre_TN: Tensor) -> Tensor:
        ctx.save_for_backward(x_TNC, h_pre_TN)
        return _combine_streams(x_TNC, h_pre_TN)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TC: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x_TNC, h_pre_TN = ctx.saved_tensors
        grad_x = h_pre_TN[:, :, None] * grad_TC[:, None, :] if ctx.needs_input_grad[0] else None
        grad_h_pre = _stream_dots(x_TNC, grad_TC) if ctx.needs_input_grad[1] else None
        return grad_x, grad_h_pre


class _PostResMix(torch.autograd.Function):
    """x'_i = Σ_j H_res[i, j] x_j + H_post[i] f with an explicit backward of batched matmuls.

    CPU `bmm` runs one batched GEMM when every (n × n) / (n × C) operand is row- or column-major, but falls into
    a per-token loop otherwise (~20× slower at T = 4096, n = 4, C = 96): Sinkhorn returns a permuted view whose
    batch stride is 1, so H_res is made contiguous; the transposed views the backward passes are column-major,
    which is fine. Gradients:
        ∂x = H_resᵀ g,   ∂H_res = g xᵀ,   ∂H_post[i] = Σ_c g_i f,   ∂f = Σ_i H_post[i] g_i.
    """

    @staticmethod
    def forward(ctx, x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
        x_TNC, h_res_TNN = x_TNC.contiguous(), h_res_TNN.contiguous()
        ctx.save_for_backward(x_TNC, f_TC, h_post_TN, h_res_TNN)
        return torch.bmm(h_res_TNN, x_TNC).addcmul_(h_post_TN[:, :, None], f_TC[:, None, :])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TNC: Tensor) -> tuple[Tensor | None, ...]:
        x_TNC, f_TC, h_post_TN, h_res_TNN = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = torch.bmm(h_res_TNN.transpose(1, 2), grad_TNC) if needs[0] else None
        grad_f = _combine_streams(grad_TNC, h_post_TN) if needs[1] else None
        grad_h_post = _stream_dots(grad_TNC, f_TC) if needs[2] else None
        grad_h_res = torch.bmm(grad_TNC, x_TNC.transpose(1, 2)) if needs[3] else None
        return grad_x, grad_f, grad_h_post, grad_h_res


def post_res_mix(x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
    """Write back: x'_i = Σ_j H_res[i, j] · x_j + H_post[i] · f, accumulated in fp32."""
    out_TNC = _PostResMix.apply(_acc(x_TNC), _acc(f_TC), _acc(h_post_TN), _acc(h_res_TNN))
    return out_TNC.to(x_TNC.dtype)
