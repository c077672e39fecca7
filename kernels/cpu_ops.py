"""The ``cpp`` backend of the mHC primitive ops: fused C++ CPU kernels (`kernels/cpu/mhc_cpu.cpp`).

Each op has the signature and output dtypes of its `kernels.reference` counterpart and a
`torch.autograd.Function` whose backward is one C++ kernel:

- `sinkhorn`: both conventions; the backward saves only the logits and recomputes the iterations per token,
  as the Triton kernel does. The reference's ≈ 300 tensor-wide ops become one loop over tokens.
- `pre_mix`, `post_res_mix`: one pass over each token's n rows of C, forward and backward (the backward of
  the post/residual mix produces ∂x, ∂f, ∂H_post and ∂H_res together).
- `mhc_read`: an mHC connection's whole read side (coefficients, Sinkhorn, pre-mix) as one kernel each way,
  so x is read once forward and once backward and the three ∂x contributions are summed in registers; ∂φ is
  the BLAS GEMM xᵀ ∂p. mHC-lite and HC, whose projections differ, use the composition of the ops, with
  `mhc_coefficients` from the reference.

Inputs are promoted to fp32 (float64 stays float64, for the parity tests) and made contiguous; outputs are
cast back to the input dtype, as the reference does. Importing this module builds or loads the kernels (and
raises RuntimeError, naming the cause, where they cannot be built); the ops are then called as
``torch.ops.mhc_cpu.*`` with fake-tensor shapes registered, so `torch.compile` traces through them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kernels import reference
from kernels.cpu_build import cpu_kernels
from kernels.dispatch import MHCOps, compose_mhc_read

__all__ = ["CPP_OPS", "mhc_read", "post_res_mix", "pre_mix", "sinkhorn"]

_KERNELS = cpu_kernels()


def _acc(t: Tensor) -> Tensor:
    return reference._acc(t).contiguous()


def _reference_case(num_iters: int, convention: str) -> bool:
    """What the kernels leave to the reference: an unknown convention (the reference raises the error) and
    the paper's t = 0, exp(L − max L) unnormalised, the one case whose gradient keeps max's term."""
    return convention not in ("paper", "deepseek-v4") or (convention == "paper" and num_iters == 0)


class _Sinkhorn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_TNN: Tensor, num_iters: int, deepseek: bool, eps: float) -> Tensor:
        ctx.args = (num_iters, deepseek, eps)
        ctx.save_for_backward(logits_TNN)
        return _KERNELS.sinkhorn_fwd(logits_TNN, num_iters, deepseek, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TNN: Tensor) -> tuple[Tensor, None, None, None]:
        (logits_TNN,) = ctx.saved_tensors
        grad = _KERNELS.sinkhorn_bwd(grad_TNN.to(logits_TNN.dtype).contiguous(), logits_TNN, *ctx.args)
        return grad, None, None, None


def sinkhorn(logits_TNN: Tensor, num_iters: int, convention: str = "paper", eps: float = 1e-6) -> Tensor:
    """`kernels.reference.sinkhorn` as one fused C++ loop over tokens, forward and backward."""
    if _reference_case(num_iters, convention):
        return reference.sinkhorn(logits_TNN, num_iters, convention, eps)
    return _Sinkhorn.apply(_acc(logits_TNN), num_iters, convention == "deepseek-v4", eps)


class _PreMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TNC: Tensor, h_pre_TN: Tensor) -> Tensor:
        ctx.save_for_backward(x_TNC, h_pre_TN)
        return _KERNELS.pre_mix_fwd(x_TNC, h_pre_TN)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TC: Tensor) -> tuple[Tensor, Tensor]:
        x_TNC, h_pre_TN = ctx.saved_tensors
        return _KERNELS.pre_mix_bwd(grad_TC.to(x_TNC.dtype).contiguous(), x_TNC, h_pre_TN)


def pre_mix(x_TNC: Tensor, h_pre_TN: Tensor) -> Tensor:
    """u = Σ_j H_pre[j] · x_j (`kernels.reference.pre_mix`), accumulated in fp32."""
    x_acc = _acc(x_TNC)
    return _PreMix.apply(x_acc, _acc(h_pre_TN).to(x_acc.dtype)).to(x_TNC.dtype)


class _PostResMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
        ctx.save_for_backward(x_TNC, f_TC, h_post_TN, h_res_TNN)
        return _KERNELS.post_res_mix_fwd(x_TNC, f_TC, h_post_TN, h_res_TNN)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        saved = ctx.saved_tensors
        return _KERNELS.post_res_mix_bwd(grad_TNC.to(saved[0].dtype).contiguous(), *saved)


def post_res_mix(x_TNC: Tensor, f_TC: Tensor, h_post_TN: Tensor, h_res_TNN: Tensor) -> Tensor:
    """x'_i = Σ_j H_res[i, j] · x_j + H_post[i] · f (`kernels.reference.post_res_mix`), accumulated in fp32."""
    x_acc = _acc(x_TNC)
    dtype = x_acc.dtype
    out_TNC = _PostResMix.apply(x_acc, _acc(f_TC).to(dtype), _acc(h_post_TN).to(dtype), _acc(h_res_TNN).to(dtype))
    return out_TNC.to(x_TNC.dtype)


class _MHCRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TNC, phi_KM, alpha_3, bias_M, eps, pre_eps, num_iters, deepseek):
        u_TC, h_pre_TN, h_post_TN, h_res_TNN, scaled_TM, inv_rms_T = _KERNELS.mhc_read_fwd(
            x_TNC, phi_KM, alpha_3, bias_M, eps, pre_eps, num_iters, deepseek
        )
        ctx.args = (eps, pre_eps, num_iters, deepseek)
        ctx.save_for_backward(x_TNC, phi_KM, alpha_3, bias_M, scaled_TM, inv_rms_T, h_pre_TN, h_post_TN)
        return u_TC, h_post_TN, h_res_TNN

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u_TC, grad_post_TN, grad_res_TNN):
        x_TNC, phi_KM, alpha_3, bias_M, scaled_TM, inv_rms_T, h_pre_TN, h_post_TN = ctx.saved_tensors
        T, n, C = x_TNC.shape

        def dense(grad: Tensor | None, like: Tensor) -> Tensor:
            return torch.zeros_like(like) if grad is None else grad.to(like.dtype).contiguous()

        grad_x, grad_logits_TM, grad_p_TM = _KERNELS.mhc_read_bwd(
            dense(grad_u_TC, x_TNC[:, 0]),
            dense(grad_post_TN, h_post_TN),
            dense(grad_res_TNN, x_TNC.new_empty(T, n, n)),
            x_TNC, phi_KM, alpha_3, bias_M, scaled_TM, inv_rms_T, h_pre_TN, h_post_TN, *ctx.args,
        )
        grad_phi = x_TNC.view(T, n * C).T @ grad_p_TM
        weighted_TM = grad_logits_TM * scaled_TM
        grad_alpha = torch.stack(
            [weighted_TM[:, :n].sum(), weighted_TM[:, n : 2 * n].sum(), weighted_TM[:, 2 * n :].sum()]
        )
        return grad_x, grad_phi, grad_alpha, grad_logits_TM.sum(dim=0), None, None, None, None


_COMPOSED_READ = compose_mhc_read(reference.mhc_coefficients, sinkhorn, pre_mix)


def mhc_read(
    x_TNC: Tensor, phi_KM: Tensor, alpha_3: Tensor, bias_M: Tensor, eps: float, pre_eps: float, num_iters: int,
    convention: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """`kernels.dispatch.compose_mhc_read`'s result (u, H_post, H_res) from one fused kernel each way."""
    if _reference_case(num_iters, convention):
        return _COMPOSED_READ(x_TNC, phi_KM, alpha_3, bias_M, eps, pre_eps, num_iters, convention)
    x_acc = _acc(x_TNC)
    dtype = x_acc.dtype
    u_TC, h_post_TN, h_res_TNN = _MHCRead.apply(
        x_acc, _acc(phi_KM).to(dtype), _acc(alpha_3).to(dtype), _acc(bias_M).to(dtype),
        eps, pre_eps, num_iters, convention == "deepseek-v4",
    )
    return u_TC.to(x_TNC.dtype), h_post_TN, h_res_TNN


CPP_OPS = MHCOps(
    name="cpp",
    coefficients=reference.mhc_coefficients,
    sinkhorn=sinkhorn,
    pre_mix=pre_mix,
    post_res_mix=post_res_mix,
    mhc_read=mhc_read,
)
