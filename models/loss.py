"""Output head fused with the next-token cross-entropy, computed in row chunks (never the full logits).

Shape legend: T tokens, C model width, V vocabulary, R rows of one chunk.

    loss = mean_t [ logsumexp_v(h_t · W_v) − h_t · W_{y_t} ]          over tokens whose target ≠ ignore_index
    ∂loss/∂logits_tv = (softmax(logits_t)_v − [v = y_t]) / num_valid
    ∂h = ∂logits · W,   ∂W = ∂logitsᵀ · h

On the CPU proxies the head and its loss are about half the step: the vocabulary (8192) dwarfs the width (96),
so the (T, V) logits and the three tensors of that size that `F.cross_entropy` and its backward allocate
(log-softmax, its gradient, the logit gradient) cost memory traffic and, being fresh allocations larger than the
allocator's mmap threshold, page faults on every step. Here each chunk's logits live in one reused buffer, and
the gradients are computed in the forward pass (as Liger-Kernel's fused linear cross-entropy does), so backward
only scales them by the incoming gradient. Differences from `F.cross_entropy(F.linear(h, W), y)` are rounding.

Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as the unfused head followed by
``.float()`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["chunk_rows", "linear_cross_entropy"]

# Elements of one chunk's logits: 2M fp32 (8 MiB) stays below glibc's largest mmap threshold (32 MiB), so the
# buffer is recycled by malloc instead of page-faulted in; 256 rows at V = 8192 measured fastest on 1-2 cores.
# GPUs want far larger chunks to fill the device.
_CHUNK_ELEMENTS = {"cpu": 1 << 21}
_DEFAULT_CHUNK_ELEMENTS = 1 << 26


def chunk_rows(num_rows: int, vocab_size: int, device: torch.device) -> int:
    """Rows per chunk: the one launch heuristic of this module."""
    elements = _CHUNK_ELEMENTS.get(device.type, _DEFAULT_CHUNK_ELEMENTS)
    return max(1, min(num_rows, elements // vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ Wᵀ`` against ``targets``; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, h_TC: Tensor, weight_VC: Tensor, targets_T: Tensor, ignore_index: int, rows: int) -> Tensor:
        device = h_TC.device.type
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h_TC.dtype
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid_T = targets_T != ignore_index
        # One host sync: the mean's denominator scales every gradient.
        num_valid = int(valid_T.sum())
        h_TC_, weight_VC_ = h_TC.to(compute_dtype), weight_VC.to(compute_dtype)
        acc_dtype = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 for float64 checks
        loss_sum = torch.zeros((), dtype=acc_dtype, device=h_TC.device)
        grad_h_TC = torch.empty_like(h_TC) if needs_grad else None
        grad_weight_VC = torch.zeros(weight_VC.shape, dtype=acc_dtype, device=weight_VC.device) if needs_grad else None
        with torch.autocast(device, enabled=False):
            for start in range(0, h_TC.shape[0], rows):
                h_RC = h_TC_[start : start + rows]
                targets_R, valid_R = targets_T[start : start + rows], valid_T[start : start + rows]
                safe_targets_R1 = torch.where(valid_R, targets_R, 0)[:, None]
                logits_RV = (h_RC @ weight_VC_.T).to(acc_dtype)
                max_R1 = logits_RV.amax(dim=-1, keepdim=True)
                target_logit_R = logits_RV.gather(1, safe_targets_R1).squeeze(1)
                probs_RV = logits_RV.sub_(max_R1).exp_()  # in place: the chunk's logits buffer becomes softmax
                sum_R1 = probs_RV.sum(dim=-1, keepdim=True)
                loss_R = sum_R1.log().squeeze(1) + max_R1.squeeze(1) - target_logit_R
                loss_sum += torch.where(valid_R, loss_R, 0.0).sum()
                if not needs_grad:
                    continue
                probs_RV.div_(sum_R1)
                probs_RV.scatter_add_(1, safe_targets_R1, torch.full_like(target_logit_R, -1.0)[:, None])
                grad_logits_RV = probs_RV.mul_(torch.where(valid_R, 1.0 / max(num_valid, 1), 0.0)[:, None])
                grad_logits_RV = grad_logits_RV.to(compute_dtype)
                grad_h_TC[start : start + rows] = grad_logits_RV @ weight_VC_
                if grad_weight_VC.dtype == compute_dtype:
                    grad_weight_VC.addmm_(grad_logits_RV.T, h_RC)
                else:
                    grad_weight_VC += grad_logits_RV.T @ h_RC
        if needs_grad:
            ctx.save_for_backward(grad_h_TC, grad_weight_VC.to(weight_VC.dtype))
        return loss_sum / num_valid

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        grad_h_TC, grad_weight_VC = ctx.saved_tensors
        return grad_h_TC * grad_loss, grad_weight_VC * grad_loss, None, None, None


def linear_cross_entropy(
    h_TC: Tensor, weight_VC: Tensor, targets_T: Tensor, *, ignore_index: int = -100, rows: int | None = None
) -> Tensor:
    """``F.cross_entropy(F.linear(h, W).float(), targets)`` (mean over non-ignored targets), in chunks of ``rows``."""
    rows = rows or chunk_rows(h_TC.shape[0], weight_VC.shape[0], h_TC.device)
    return _LinearCrossEntropy.apply(h_TC, weight_VC, targets_T, ignore_index, rows)
