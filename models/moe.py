"""DeepSeekMoE layer (DeepSeek-V3, arXiv 2412.19437, §2.1.2): shared plus sigmoid top-k routed experts.

Shape legend: B batch, S sequence, C model width (dim), T tokens (B·S), E routed experts, K top_k,
F expert_dim, N token-copies (T·K, sorted by expert).

The layer is four small pieces:
- `Router`: s = sigmoid(x Wᵀ) in fp32 (eq. 15); the top-k is chosen on s + b (eq. 16), where b is the
  loss-free balancing bias (Wang et al. 2024, arXiv 2408.15664), but the gate weights are the UNBIASED s of
  the chosen experts normalised over the k (eqs. 13-14), times ``route_scale`` (V3's inference code).
- `sort_by_expert` (dispatch): a stable argsort of the flattened top-k ids groups the token-copies by expert;
  dropless, so no capacity factor and no token is ever discarded.
- `GroupedExperts`: every expert's SwiGLU, scaled by each copy's gate weight, in one `torch._grouped_mm` call
  per projection, or a per-expert loop where that kernel cannot run (`_select_backend` is the one place that
  decides).
- `MoE`: y = shared(x) + Σ_k g_k · expert_k(x) (eq. 12), with the load-balancing state.

Load-balancing state lives in named buffers: ``router.expert_bias`` (changed only by `MoE.update_expert_bias`,
which the trainer calls after each optimizer step) and ``tokens_per_expert`` (accumulated by training forward
passes). Keep both fp32: use autocast rather than ``model.to(torch.bfloat16)``, which would cast the buffers
too, and bf16 cannot resolve a γ = 1e-3 step on a bias near 1. The optional sequence-wise balance loss
(eqs. 17-20) is left in ``MoE.aux_loss`` for the model to add to the training loss.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import MoEConfig

__all__ = [
    "ExpertBackend",
    "GroupedExperts",
    "GroupedMMFallbackWarning",
    "MoE",
    "Router",
    "SwiGLU",
    "expert_load_stats",
    "sequence_balance_loss",
    "sort_by_expert",
]

ExpertBackend = Literal["auto", "grouped_mm", "loop"]

# Default std of the 3-D expert weights (GPT-2's and torchtitan's 0.02); the model normally re-initialises
# every weight with `ModelConfig.init_std` through `reset_parameters`.
DEFAULT_EXPERT_INIT_STD = 0.02
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# torch._grouped_mm rejects operands whose row stride is not a multiple of 16 bytes (CPU and CUDA alike).
_GROUPED_MM_ALIGN_BYTES = 16


class GroupedMMFallbackWarning(UserWarning):
    """The routed experts run as a per-expert loop because `torch._grouped_mm` cannot run on these inputs."""


class SwiGLU(nn.Module):
    """w2(silu(w1 x) ⊙ w3 x): the dense FFN, and V3's shared experts as ONE SwiGLU of their summed width."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def reset_parameters(self, init_std: float) -> None:
        """Draw every weight from N(0, init_std)."""
        for linear in (self.w1, self.w3, self.w2):
            nn.init.normal_(linear.weight, std=init_std)


class Router(nn.Module):
    """Sigmoid top-k gate with a selection-only bias (loss-free balancing)."""

    def __init__(self, dim: int, config: MoEConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.route_scale = config.route_scale
        self.weight = nn.Parameter(torch.empty(config.num_routed_experts, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default: U(-1/√dim, 1/√dim)
        # Changed only by MoE.update_expert_bias (after each optimizer step); persistent so resumes keep it.
        self.register_buffer("expert_bias", torch.zeros(config.num_routed_experts, dtype=torch.float32))

    def forward(self, x_TC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (top_idx_TK, weights_TK fp32, scores_TE fp32)."""
        # fp32 even under autocast: near-tied scores decide the selection and bf16 would reorder them.
        with torch.autocast(x_TC.device.type, enabled=False):
            scores_TE = torch.sigmoid(F.linear(x_TC.float(), self.weight.float()))
        top_idx_TK = torch.topk(scores_TE + self.expert_bias, self.top_k, dim=-1).indices
        top_scores_TK = scores_TE.gather(-1, top_idx_TK)
        # 1e-20 (HF's DeepSeek-V3) only guards 0/0 when every chosen sigmoid underflows.
        weights_TK = top_scores_TK / (top_scores_TK.sum(-1, keepdim=True) + 1e-20) * self.route_scale
        return top_idx_TK, weights_TK, scores_TE

    def reset_parameters(self, init_std: float) -> None:
        """Draw the gate weight from N(0, init_std); the balancing bias is state, not a weight: kept."""
        nn.init.normal_(self.weight, std=init_std)


def _recomputing() -> bool:
    """True while activation checkpointing reruns a forward inside the backward pass (`models.recompute`).

    The rerun must not count its tokens a second time. Autograd has no public flag for it: the engine's
    current graph-task id is −1 outside a backward pass.
    """
    return torch._C._current_graph_task_id() != -1


def sort_by_expert(top_idx_TK: Tensor, num_experts: int) -> tuple[Tensor, Tensor]:
    """Dispatch: order_N lists the flattened (token, k) positions grouped by expert; counts_E the group sizes.

    Stable, so within an expert the copies keep token order and reruns are bitwise identical.
    """
    expert_N = top_idx_TK.reshape(-1)
    order_N = torch.argsort(expert_N, stable=True)
    counts_E = torch.bincount(expert_N, minlength=num_experts)
    return order_N, counts_E


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    `torch._grouped_mm`'s backward rejects stride-0 gradients such as the expanded one ``y.sum()`` produces
    ("Invalid strides/sizes, got [0, 0]").
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class _GatedSiLUMul(torch.autograd.Function):
    """h = silu(a) ⊙ b ⊙ g, one gate weight g per token-copy: the expert's SwiGLU product with its routing weight
    folded in, so the expert output needs no scaling before the scatter-add.

    Scaling the (N, C) expert outputs instead cost a pass forward and two backward over N = T·K rows of width C
    (5 % of the P1 step); here the gate rides on passes over the (N, F) rows that SwiGLU makes anyway. Backward
    recomputes silu(a) rather than keeping it:
        ∂b = ∂h ⊙ g ⊙ silu(a),   ∂a = silu'(a) ⊙ ∂h ⊙ g ⊙ b,   ∂g = Σ_f ∂h ⊙ silu(a) ⊙ b
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a_NF: Tensor, b_NF: Tensor, gate_N: Tensor) -> Tensor:
        ctx.save_for_backward(a_NF, b_NF, gate_N)
        return (F.silu(a_NF) * b_NF).mul_(gate_N[:, None])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_NF: Tensor) -> tuple[Tensor | None, ...]:
        a_NF, b_NF, gate_N = ctx.saved_tensors
        silu_NF = F.silu(a_NF)
        grad_gate = torch.linalg.vecdot(grad_NF, silu_NF * b_NF) if ctx.needs_input_grad[2] else None
        gated_NF = grad_NF * gate_N[:, None]
        grad_b = gated_NF * silu_NF if ctx.needs_input_grad[1] else None
        grad_a = torch.ops.aten.silu_backward(gated_NF.mul_(b_NF), a_NF) if ctx.needs_input_grad[0] else None
        return grad_a, grad_b, grad_gate


def _grouped_mm(x_NA: Tensor, w_EAB: Tensor, offs_E: Tensor) -> Tensor:
    """Row block e of x_NA (rows offs[e-1]:offs[e]) times w_EAB[e]."""
    return _ContiguousGrad.apply(torch._grouped_mm(x_NA, w_EAB, offs=offs_E))


def _grouped_swiglu(
    x_NC: Tensor, w1_ECF: Tensor, w3_ECF: Tensor, w2_EFC: Tensor, counts_E: Tensor, gate_N: Tensor
) -> Tensor:
    """All experts' gated SwiGLU with three grouped GEMMs; offsets stay on the device, so no host sync."""
    offs_E = torch.cumsum(counts_E, dim=0, dtype=torch.int32)
    h_NF = _GatedSiLUMul.apply(_grouped_mm(x_NC, w1_ECF, offs_E), _grouped_mm(x_NC, w3_ECF, offs_E), gate_N)
    return _grouped_mm(h_NF, w2_EFC, offs_E)


def _looped_swiglu(
    x_NC: Tensor, w1_ECF: Tensor, w3_ECF: Tensor, w2_EFC: Tensor, counts_E: Tensor, gate_N: Tensor
) -> Tensor:
    """The same with one matmul per expert and projection; reads the counts on the host."""
    sizes = counts_E.tolist()
    return torch.cat(
        [
            _GatedSiLUMul.apply(x_MC @ w1, x_MC @ w3, gate_M) @ w2
            for x_MC, gate_M, w1, w3, w2 in zip(
                x_NC.split(sizes), gate_N.split(sizes), w1_ECF, w3_ECF, w2_EFC, strict=True
            )
        ]
    )


def _grouped_mm_blocker(x_NC: Tensor, w1_ECF: Tensor) -> str | None:
    """Why `torch._grouped_mm` cannot run on these operands, or None if it can."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm (added in 2.8, CPU kernel in 2.9)"
    if x_NC.device.type not in ("cpu", "cuda"):
        return f"torch._grouped_mm has no kernel for device type {x_NC.device.type!r}"
    if x_NC.dtype not in _GROUPED_MM_DTYPES:
        return f"torch._grouped_mm supports float32/bfloat16/float16, not {x_NC.dtype}"
    align = _GROUPED_MM_ALIGN_BYTES // x_NC.element_size()
    dim, expert_dim = w1_ECF.shape[1:]
    if dim % align or expert_dim % align:
        return (
            f"torch._grouped_mm needs 16-byte-aligned rows: dim ({dim}) and expert_dim ({expert_dim}) "
            f"must be multiples of {align} in {x_NC.dtype}"
        )
    return None


_warned_fallbacks: set[str] = set()


def _select_backend(requested: ExpertBackend, x_NC: Tensor, w1_ECF: Tensor) -> Literal["grouped_mm", "loop"]:
    """The one place that picks the expert kernel: grouped_mm when it can run, else the loop (warned once)."""
    if requested == "loop":
        return "loop"
    blocker = _grouped_mm_blocker(x_NC, w1_ECF)
    if blocker is None:
        return "grouped_mm"
    if requested == "grouped_mm":
        raise ValueError(f"expert backend 'grouped_mm' cannot run: {blocker}")
    if blocker not in _warned_fallbacks:
        _warned_fallbacks.add(blocker)
        warnings.warn(
            f"MoE routed experts fall back to a per-expert loop (slower; it syncs with the host): {blocker}. "
            "To silence: choose aligned sizes, set `GroupedExperts.backend = 'loop'`, or filter "
            "`models.moe.GroupedMMFallbackWarning`.",
            GroupedMMFallbackWarning,
            stacklevel=2,
        )
    return "loop"


class GroupedExperts(nn.Module):
    """E SwiGLU experts stored as 3-D weights, applied to token-copies already sorted by expert."""

    def __init__(self, dim: int, expert_dim: int, num_experts: int, backend: ExpertBackend = "auto") -> None:
        super().__init__()
        self.backend: ExpertBackend = backend
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, expert_dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, expert_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, expert_dim, dim))
        self.reset_parameters(DEFAULT_EXPERT_INIT_STD)

    def forward(self, x_NC: Tensor, counts_E: Tensor, gate_N: Tensor) -> Tensor:
        """gate[n] · SwiGLU_e(x[n]), where the first counts[0] rows go to expert 0, the next counts[1] to expert 1,
        and so on.

        Autocast does not cover torch._grouped_mm, so both backends cast to the autocast dtype here.
        """
        device = x_NC.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x_NC.dtype
        x_NC, gate_N, w1_ECF, w3_ECF, w2_EFC = (t.to(dtype) for t in (x_NC, gate_N, self.w1, self.w3, self.w2))
        if _select_backend(self.backend, x_NC, w1_ECF) == "grouped_mm":
            return _grouped_swiglu(x_NC, w1_ECF, w3_ECF, w2_EFC, counts_E, gate_N)
        return _looped_swiglu(x_NC, w1_ECF, w3_ECF, w2_EFC, counts_E, gate_N)

    def reset_parameters(self, init_std: float) -> None:
        """Draw every expert weight from N(0, init_std)."""
        for weight in (self.w1, self.w3, self.w2):
            nn.init.normal_(weight, std=init_std)


def sequence_balance_loss(scores_BSE: Tensor, top_idx_BSK: Tensor, coef: float) -> Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (eqs. 17-20), averaged over sequences.

    f_i = E/(K·S) · #{t : t routes to i}, P_i = mean_t s'_{i,t} with s' the scores normalised over all
    experts; L = coef · Σ_i f_i P_i. The indicator uses the actual (bias-shifted) selection; f has no grad.
    """
    batch, seq_len, num_experts = scores_BSE.shape
    top_k = top_idx_BSK.shape[-1]
    hits_BE = torch.zeros(batch, num_experts, device=scores_BSE.device, dtype=scores_BSE.dtype)
    idx_BN = top_idx_BSK.reshape(batch, -1)
    hits_BE.scatter_add_(1, idx_BN, torch.ones(idx_BN.shape, device=hits_BE.device, dtype=hits_BE.dtype))
    f_BE = hits_BE * (num_experts / (top_k * seq_len))
    p_BE = (scores_BSE / scores_BSE.sum(-1, keepdim=True)).mean(1)
    return coef * (f_BE * p_BE).sum(-1).mean()


def expert_load_stats(counts_E: Tensor) -> dict[str, float]:
    """Balance diagnostics of a load vector: max_violation = (max − mean)/mean, cv = std/mean, dead_experts.

    std is the population std. With no tokens counted the two ratios are NaN (undefined, not "balanced").
    """
    load_E = counts_E.detach().double()
    mean = load_E.mean()
    return {
        "max_violation": ((load_E.max() - mean) / mean).item(),
        "cv": (load_E.std(correction=0) / mean).item(),
        "dead_experts": float((load_E == 0).sum().item()),
    }


class MoE(nn.Module):
    """DeepSeekMoE block: shared SwiGLU + dropless top-k routed experts, loss-free balancing."""

    def __init__(self, dim: int, config: MoEConfig) -> None:
        super().__init__()
        self.config = config
        num_experts = config.num_routed_experts
        self.router = Router(dim, config)
        self.experts = GroupedExperts(dim, config.expert_dim, num_experts)
        self.shared = (
            SwiGLU(dim, config.num_shared_experts * config.expert_dim) if config.num_shared_experts else None
        )
        # Token-copies per expert since the last bias update: added to by training forward passes, read and
        # zeroed by update_expert_bias. Persistent so a checkpoint taken mid-accumulation resumes exactly.
        self.register_buffer("tokens_per_expert", torch.zeros(num_experts, dtype=torch.float32))
        self.aux_loss: Tensor | None = None

    def forward(self, x_BSC: Tensor) -> Tensor:
        batch, seq_len, dim = x_BSC.shape
        top_idx_TK, weights_TK, scores_TE = self.router(x_BSC.reshape(-1, dim))
        order_N, counts_E = sort_by_expert(top_idx_TK, self.config.num_routed_experts)
        if self.training and not _recomputing():
            with torch.no_grad():
                self.tokens_per_expert += counts_E
        coef = self.config.seq_aux_loss_coef
        scores_BSE, top_idx_BSK = scores_TE.view(batch, seq_len, -1), top_idx_TK.view(batch, seq_len, -1)
        self.aux_loss = sequence_balance_loss(scores_BSE, top_idx_BSK, coef) if coef > 0 else None
        y_BSC = self._routed(x_BSC.reshape(-1, dim), weights_TK, order_N, counts_E).view_as(x_BSC)
        return y_BSC if self.shared is None else self.shared(x_BSC) + y_BSC

    def _routed(self, x_TC: Tensor, weights_TK: Tensor, order_N: Tensor, counts_E: Tensor) -> Tensor:
        """Gather the copies in expert order, run the experts, weight them, scatter-add them per token."""
        token_N = order_N // self.config.top_k
        y_NC = self.experts(x_TC.index_select(0, token_N), counts_E, weights_TK.reshape(-1)[order_N])
        return torch.zeros(x_TC.shape, device=x_TC.device, dtype=y_NC.dtype).index_add_(0, token_N, y_NC)

    @torch.no_grad()
    def update_expert_bias(self) -> Tensor:
        """Loss-free balancing step, for the trainer to call after each optimizer step; returns the load used.

        b += γ · sign(mean load − load), then the counts restart. With nothing counted every sign is 0, so the
        call is a no-op without a host sync. Forward passes rerun by activation checkpointing do not count
        (`_recomputing`), so the counts, and the logged load statistics, are the same with or without it.
        Under data parallelism all-reduce
        ``tokens_per_expert`` (sum) before calling this.
        """
        load_E = self.tokens_per_expert.clone()
        self.router.expert_bias += self.config.bias_update_rate * torch.sign(load_E.mean() - load_E)
        self.tokens_per_expert.zero_()
        return load_E

    def expert_load(self) -> Tensor:
        """A copy of the token-copies each expert received since the last bias update."""
        return self.tokens_per_expert.clone()

    def reset_parameters(self, init_std: float) -> None:
        """Draw the router, routed and shared weights from N(0, init_std); balancing state is kept."""
        self.router.reset_parameters(init_std)
        self.experts.reset_parameters(init_std)
        if self.shared is not None:
            self.shared.reset_parameters(init_std)
