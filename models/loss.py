"""Output head fused with the next-token cross-entropy, computed in row chunks (never the full logits).

Shape legend: T tokens, C model width, V vocabulary, R rows of one chunk.

    loss = mean_t [ logsumexp_v(h_t · W_v) − h_t · W_{y_t} ]          over tokens whose target ≠ ignore_index
    ∂loss/∂logits_tv = (softmax(logits_t)_v − [v = y_t]) / num_valid
    ∂h = ∂logits · W,   ∂W = ∂logitsᵀ · h

On the CPU proxies the head and its loss are about half the step: the vocabulary (8192) dwarfs the width
(96), so the (T, V) logits and the three tensors of that size that `F.cross_entropy` and its backward
allocate (log-softmax, its gradient, the logit gradient) cost memory traffic and, being fresh allocations
larger than the allocator's mmap threshold, page faults on every step. Here each chunk's logits live in one
reused buffer, and the gradients are computed in the forward pass (as Liger-Kernel's fused linear
cross-entropy does), so backward only scales them by the incoming gradient. Differences from
`F.cross_entropy(F.linear(h, W), y)` are rounding.

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
    """Mean cross-entropy of ``h @ Wᵀ`` against ``targets``; with ``needs_grad``, the gradients of the mean
    are computed chunk by chunk in forward and backward only scales them."""

    @staticmethod
    def forward(
        ctx,
        h_TC: Tensor,
        weight_VC: Tensor,
        targets_T: Tensor,
        ignore_index: int,
        rows: int,
        needs_grad: bool,
    ) -> Tensor:
        device = h_TC.device.type
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h_TC.dtype
        acc_dtype = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 for float64 checks
        valid_T = targets_T != ignore_index
        num_valid = valid_T.sum()  # kept on the device: no host sync
        grad_scale_T = valid_T.to(acc_dtype) / num_valid.clamp(min=1)
        h_TC_, weight_VC_ = h_TC.to(compute_dtype), weight_VC.to(compute_dtype)
        loss_sum = torch.zeros((), dtype=acc_dtype, device=h_TC.device)
        if needs_grad:
            grad_h_TC = torch.empty(h_TC.shape, dtype=compute_dtype, device=h_TC.device)
            grad_weight_VC = torch.zeros(weight_VC.shape, dtype=acc_dtype, device=weight_VC.device)
        with torch.autocast(device, enabled=False):
            for start in range(0, h_TC.shape[0], rows):
                h_RC = h_TC_[start : start + rows]
                valid_R = valid_T[start : start + rows]
                targets_R1 = torch.where(valid_R, targets_T[start : start + rows], 0)[:, None]
                logits_RV = (h_RC @ weight_VC_.T).to(acc_dtype)
                max_R1 = logits_RV.amax(dim=-1, keepdim=True)
                target_logit_R1 = logits_RV.gather(1, targets_R1)
                # In place: the chunk's one (R, V) buffer becomes the softmax and then the logit gradient.
                probs_RV = logits_RV.sub_(max_R1).exp_()
                sum_R1 = probs_RV.sum(dim=-1, keepdim=True)
                loss_R1 = sum_R1.log() + max_R1 - target_logit_R1
                loss_sum += loss_R1.squeeze(1).where(valid_R, 0.0).sum()
                if not needs_grad:
                    continue
                probs_RV.div_(sum_R1).scatter_add_(1, targets_R1, torch.full_like(target_logit_R1, -1.0))
                grad_logits_RV = probs_RV.mul_(grad_scale_T[start : start + rows, None]).to(compute_dtype)
                torch.mm(grad_logits_RV, weight_VC_, out=grad_h_TC[start : start + rows])
                if acc_dtype == compute_dtype:
                    grad_weight_VC.addmm_(grad_logits_RV.T, h_RC)
                else:
                    grad_weight_VC += grad_logits_RV.T @ h_RC
        if needs_grad:
            ctx.save_for_backward(grad_h_TC.to(h_TC.dtype), grad_weight_VC.to(weight_VC.dtype))
        return loss_sum / num_valid

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
        grad_h_TC, grad_weight_VC = ctx.saved_tensors
        return grad_h_TC * grad_loss, grad_weight_VC * grad_loss, None, None, None, None


def linear_cross_entropy(
    h_TC: Tensor, weight_VC: Tensor, targets_T: Tensor, *, ignore_index: int = -100, rows: int | None = None
) -> Tensor:
    """``F.cross_entropy(F.linear(h, W).float(), targets)`` (mean over non-ignored targets), by row chunks."""
    rows = rows or chunk_rows(h_TC.shape[0], weight_VC.shape[0], h_TC.device)
    # A Function's forward cannot tell no_grad from grad mode (needs_input_grad ignores it): decide here, so
    # evaluation computes the loss alone.
    needs_grad = torch.is_grad_enabled() and (h_TC.requires_grad or weight_VC.requires_grad)
    return _LinearCrossEntropy.apply(h_TC, weight_VC, targets_T, ignore_index, rows, needs_grad)
