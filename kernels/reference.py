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

import contextlib
import itertools
import math
from collections.abc import Iterator
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
    "rms_projection",
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
    scaled_TM = rms_projection(x32_TK, phi_KM.to(x32_TK.dtype), eps)  # mixes / r
    num_res = phi_KM.shape[1] - 2 * n
    gate_M = torch.cat([alpha_3[0].expand(n), alpha_3[1].expand(n), alpha_3[2].expand(num_res)])
    logits_TM = torch.addcmul(bias_M, scaled_TM, gate_M)
    h_pre_TN = torch.sigmoid(logits_TM[:, :n]) + pre_eps
    h_post_TN = 2.0 * torch.sigmoid(logits_TM[:, n : 2 * n])
    return h_pre_TN, h_post_TN, logits_TM[:, 2 * n :]


def rms_projection(x_RK: Tensor, w_KM: Tensor, eps: float) -> Tensor:
    """(x / r) @ w with r = sqrt(mean_K x² + eps) per row: an unweighted RMSNorm followed by a projection.

    mHC's coefficient GEMM over the flattened streams, and HC's per-stream one (with the norm weight folded
    into w). Computed as (x @ w) / r, so the normalised (R, K) rows are never materialised (`_RMSProjection`).
    """
    return _RMSProjection.apply(x_RK, w_KM, eps)


class _RMSProjection(torch.autograd.Function):
    """z = p · r⁻¹ with p = x w and r⁻¹ = (Σ_k x²/K + ε)^(−1/2), over the last dim of x (any leading dims).

    Autograd's graph of the same keeps the normalised rows and, in backward, three (R, K) temporaries for the
    RMS term alone; here backward is two GEMMs and one pass over x:
        ∂p = ∂z · r⁻¹,   ∂r⁻¹ = Σ_m ∂z ⊙ p,   ∂w = xᵀ ∂p,   ∂x = ∂p wᵀ − (∂r⁻¹ · r⁻³ / K) · x
    The sum of squares comes from `vector_norm`, which allocates no (R, K) temporary (equal to mean(x²) up to
    rounding).
    """

    @staticmethod
    def forward(ctx, x_RK: Tensor, w_KM: Tensor, eps: float) -> Tensor:
        p_RM = x_RK @ w_KM
        inv_rms_R1 = torch.linalg.vector_norm(x_RK, dim=-1, keepdim=True).square_()
        inv_rms_R1 = inv_rms_R1.div_(x_RK.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x_RK, w_KM, p_RM, inv_rms_R1)
        return p_RM * inv_rms_R1

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_RM: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x_RK, w_KM, p_RM, inv_rms_R1 = ctx.saved_tensors
        grad_p_RM = grad_RM * inv_rms_R1
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_inv_rms_R1 = (grad_RM * p_RM).sum(dim=-1, keepdim=True)
            grad_x = grad_p_RM @ w_KM.T
            grad_x.addcmul_(x_RK, grad_inv_rms_R1.mul_(inv_rms_R1.pow(3)), value=-1.0 / x_RK.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = x_RK.reshape(-1, x_RK.shape[-1]).T @ grad_p_RM.reshape(-1, grad_p_RM.shape[-1])
        return grad_x, grad_w, None


def sinkhorn(logits_TNN: Tensor, num_iters: int, convention: str = "paper", eps: float = 1e-6) -> Tensor:
    """Project logits onto (approximately) doubly stochastic matrices; rows are normalised last (exact).

    The iterations run on a contiguous token-last copy (N, N, T): every row/column sum then reduces over an
    outer axis with the token axis contiguous, which is ~4× faster on CPU than reducing over a trailing axis
    of length n (measured at T = 2048, n = 4, forward + backward). The whole projection is one autograd node
    (`_Sinkhorn`) with a hand-written reverse pass.
    """
    if convention not in ("paper", "deepseek-v4"):
        raise ValueError(f"convention ({convention!r}) must be 'paper' or 'deepseek-v4'")
    if convention == "paper" and num_iters == 0:
        # exp(L − max L) itself: the only case whose value depends on the shift, so autograd keeps max's term.
        return torch.exp(logits_TNN - logits_TNN.amax(dim=(-2, -1), keepdim=True))
    return _Sinkhorn.apply(logits_TNN, num_iters, convention, eps)


def _sinkhorn_start(logits_TNN: Tensor, num_iters: int, convention: str, eps: float):
    """The token-last starting matrix, the normalisation axes in order and the denominator floor.

    paper: exp(L − max L), then (columns, rows) × t. deepseek-v4: the logits hold C = H_resᵀ, so the softmax
    over C's rows is over H's columns; + eps, then rows, then (columns, rows) × (t − 1), every denominator
    floored by + eps. Axis 0 of the (N, N, T) tensor indexes rows (a sum over it normalises columns).
    """
    if convention == "paper":
        m_NNT = torch.exp(logits_TNN - logits_TNN.amax(dim=(-2, -1), keepdim=True)).permute(1, 2, 0)
        return m_NNT.contiguous(), (0, 1) * num_iters, 0.0
    m_NNT = (torch.softmax(logits_TNN, dim=-1) + eps).permute(2, 1, 0)
    return m_NNT.contiguous(), (1,) + (0, 1) * (num_iters - 1), eps


@contextlib.contextmanager
def _one_cpu_thread(t: Tensor) -> Iterator[None]:
    """Run a CPU block on one intra-op thread: Sinkhorn's ~300 ops on (n, n, T) tensors are each too small to
    amortise an OpenMP fork/join (T = 4096, n = 4 is 64K elements, above ATen's 32K grain, so each would split
    over two threads); on a busy 2-core machine every join can wait a scheduler slice."""
    if t.device.type != "cpu" or torch.compiler.is_compiling() or torch.get_num_threads() == 1:
        yield
        return
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(num_threads)


def _normaliser(m_NNT: Tensor, axis: int, floor: float) -> Tensor:
    """d = Σ_axis m (+ floor): axis 0 sums a column (normalises columns), axis 1 a row."""
    sum_NNT = m_NNT.sum(dim=axis, keepdim=True)
    return sum_NNT.add_(floor) if floor else sum_NNT


class _Sinkhorn(torch.autograd.Function):
    """The projection as one autograd node: start m₀, then y = m / d(m), d = Σ_axis m + floor, repeatedly.

    Autograd through the unrolled loop records ~5 nodes per normalisation (40 normalisations for the paper's
    t = 20), each a tiny op; this is one. Vector-Jacobian product of one normalisation (d broadcast along the
    normalised axis):
        ∂y/∂m contributes ∂y / d;   through d: −Σ_axis(∂y ⊙ m) / d² = −Σ_axis(∂y ⊙ y) / d
        ⇒ ∂m = (∂y − Σ_axis(∂y ⊙ y)) / d
    and of the start: paper, m₀ = exp(L − max L): ∂L = m₀ ⊙ ∂m₀ (the max term, −Σ ∂m₀ ⊙ m₀ on the argmax, is
    zero: with t ≥ 1 the output does not depend on a per-token shift); deepseek-v4, m₀ = softmax(L) + eps:
    ∂L = P ⊙ (∂P − Σ_row(∂P ⊙ P)). Forward saves only the logits; backward recomputes the iterates with the
    same ops (so the same values) and applies the products in reverse: the exact gradient of the truncated
    iteration, as autograd's.
    """

    @staticmethod
    def forward(ctx, logits_TNN: Tensor, num_iters: int, convention: str, eps: float) -> Tensor:
        ctx.args = (num_iters, convention, eps)
        ctx.save_for_backward(logits_TNN)
        with _one_cpu_thread(logits_TNN):
            m_NNT, axes, floor = _sinkhorn_start(logits_TNN, num_iters, convention, eps)
            for axis in axes:
                m_NNT.div_(_normaliser(m_NNT, axis, floor))
        return m_NNT.permute(2, 0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TNN: Tensor) -> tuple[Tensor, None, None, None]:
        with _one_cpu_thread(grad_TNN):
            return _Sinkhorn._backward(ctx, grad_TNN)

    @staticmethod
    def _backward(ctx, grad_TNN: Tensor) -> tuple[Tensor, None, None, None]:
        (logits_TNN,) = ctx.saved_tensors
        num_iters, convention, eps = ctx.args
        m0_NNT, axes, floor = _sinkhorn_start(logits_TNN, num_iters, convention, eps)
        iterates, m_NNT = [], m0_NNT
        for axis in axes:
            d_NNT = _normaliser(m_NNT, axis, floor)
            m_NNT = m_NNT / d_NNT
            iterates.append((m_NNT, d_NNT))
        grad_NNT = grad_TNN.permute(1, 2, 0).contiguous()
        for axis, (y_NNT, d_NNT) in zip(reversed(axes), reversed(iterates), strict=True):
            grad_NNT.sub_((grad_NNT * y_NNT).sum(dim=axis, keepdim=True)).div_(d_NNT)
        if convention == "paper":
            return grad_NNT.mul_(m0_NNT).permute(2, 0, 1), None, None, None
        probs_TNN = torch.softmax(logits_TNN, dim=-1)
        grad_probs_TNN = grad_NNT.permute(2, 1, 0)
        grad_probs_TNN = grad_probs_TNN - (grad_probs_TNN * probs_TNN).sum(dim=-1, keepdim=True)
        return grad_probs_TNN.mul_(probs_TNN), None, None, None


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
        grad_TC = grad_TC.contiguous()
        grad_x = h_pre_TN[:, :, None] * grad_TC[:, None, :] if ctx.needs_input_grad[0] else None
        grad_h_pre = _stream_dots(x_TNC, grad_TC) if ctx.needs_input_grad[1] else None
        return grad_x, grad_h_pre


class _PostResMix(torch.autograd.Function):
    """x'_i = Σ_j H_res[i, j] x_j + H_post[i] f with an explicit backward of batched matmuls.

    CPU `bmm` runs one batched GEMM when every (n × n) / (n × C) operand is row- or column-major, but falls
    into a per-token loop otherwise (~20× slower at T = 4096, n = 4, C = 96): Sinkhorn returns a permuted view
    whose batch stride is 1, so H_res is made contiguous, and so is the incoming gradient (the stream sum
    before the final norm hands back a stride-0 expanded one); the transposed views passed in backward are
    column-major, which is fine. Gradients:
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
        grad_TNC = grad_TNC.contiguous()
        grad_x = torch.bmm(h_res_TNN.transpose(1, 2), grad_TNC) if needs[0] else None
        grad_f = _combine_streams(grad_TNC, h_post_TN) if needs[1] else None
        grad_h_post = _stream_dots(grad_TNC, f_TC) if needs[2] else None
        grad_h_res = torch.bmm(grad_TNC, x_TNC.transpose(1, 2)) if needs[3] else None
        return grad_x, grad_f, grad_h_post, grad_h_res


def post_res_mix(x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
    """Write back: x'_i = Σ_j H_res[i, j] · x_j + H_post[i] · f, accumulated in fp32."""
    out_TNC = _PostResMix.apply(_acc(x_TNC), _acc(f_TC), _acc(h_post_TN), _acc(h_res_TNN))
    return out_TNC.to(x_TNC.dtype)
