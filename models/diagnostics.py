"""Diagnostics run at every evaluation: Amax gain, doubly-stochastic error, expert load.

Shape legend: L sublayers (residual connections, two per block), T tokens, N streams, E routed experts.

Amax gain (mHC paper §3.1, MHC_SPEC §3), for a mixing matrix M:
    forward  Amax_fwd(M) = max_i |Σ_j M_ij|   (max absolute row sum: worst-case expansion of the signal)
    backward Amax_bwd(M) = max_j |Σ_i M_ij|   (max absolute column sum: worst-case expansion of the gradient)
Per layer l: M = H_res_l. Composite (paper Figs. 3b, 7b), per token:
    forward at l:  H_l ⋯ H_1   (input → layer l)        backward at l:  H_L ⋯ H_l   (layer l → output)
The paper averages "over all tokens in a selected sequence" without saying whether before or after the max
(MHC_SPEC §7.2). We average the per-token gains (after the max), which never hides a token whose matrix
explodes; the per-layer profiles are what the analysis plots.

Doubly-stochastic error of H: max over tokens of max(|row sums − 1|, |column sums − 1|), plus the most negative
entry (0 for a true doubly stochastic matrix). Expert load: per MoE layer, MaxVio, CV and dead experts over the
batch's routing decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.moe import Router, expert_load_stats
from models.residual import ResidualConnection

__all__ = [
    "AmaxProfile",
    "ModelDiagnostics",
    "amax_backward",
    "amax_forward",
    "amax_profile",
    "collect_diagnostics",
    "doubly_stochastic_error",
]


def amax_forward(m_TNN: Tensor) -> Tensor:
    """Max absolute row sum of each matrix (..., N, N) → (...)."""
    return m_TNN.sum(dim=-1).abs().amax(dim=-1)


def amax_backward(m_TNN: Tensor) -> Tensor:
    """Max absolute column sum of each matrix (..., N, N) → (...)."""
    return m_TNN.sum(dim=-2).abs().amax(dim=-1)


@dataclass(frozen=True, slots=True)
class AmaxProfile:
    """Token-averaged Amax gains over depth, index l = 0 … L−1 (sublayers)."""

    layer_forward: list[float]
    layer_backward: list[float]
    composite_forward: list[float]
    composite_backward: list[float]

    @property
    def max_composite_forward(self) -> float:
        return max(self.composite_forward)

    @property
    def max_composite_backward(self) -> float:
        return max(self.composite_backward)


def amax_profile(h_res: list[Tensor]) -> AmaxProfile:
    """Per-layer and composite Amax from each sublayer's per-token H_res (a list of L tensors (T, N, N))."""
    h_LTNN = torch.stack([h.double() for h in h_res])
    forward, backward = [], []
    prefix_TNN = suffix_TNN = None
    for layer in range(len(h_res)):
        prefix_TNN = h_LTNN[layer] if prefix_TNN is None else h_LTNN[layer] @ prefix_TNN
        forward.append(prefix_TNN)
        top = len(h_res) - 1 - layer
        suffix_TNN = h_LTNN[top] if suffix_TNN is None else suffix_TNN @ h_LTNN[top]
        backward.append(suffix_TNN)
    backward.reverse()

    def mean_gains(gain: Tensor) -> list[float]:
        return gain.mean(dim=-1).tolist()

    return AmaxProfile(
        layer_forward=mean_gains(amax_forward(h_LTNN)),
        layer_backward=mean_gains(amax_backward(h_LTNN)),
        composite_forward=mean_gains(amax_forward(torch.stack(forward))),
        composite_backward=mean_gains(amax_backward(torch.stack(backward))),
    )


def doubly_stochastic_error(h_TNN: Tensor) -> tuple[float, float]:
    """(max |row or column sum − 1|, most negative entry clipped at 0) over all tokens."""
    h = h_TNN.double()
    sums_error = torch.maximum((h.sum(-1) - 1).abs().amax(), (h.sum(-2) - 1).abs().amax())
    return sums_error.item(), h.amin().clamp(max=0).item()


@dataclass(frozen=True, slots=True)
class ModelDiagnostics:
    """Everything one evaluation batch says about the residual mixing and the experts."""

    amax: AmaxProfile
    ds_error_per_layer: list[float]
    min_entry_per_layer: list[float]
    expert_load_per_layer: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Scalar metrics for tracking: composite maxima, worst DS error, worst load imbalance."""
        loads = self.expert_load_per_layer
        return {
            "amax_fwd_composite_max": self.amax.max_composite_forward,
            "amax_bwd_composite_max": self.amax.max_composite_backward,
            "amax_fwd_layer_max": max(self.amax.layer_forward),
            "amax_bwd_layer_max": max(self.amax.layer_backward),
            "ds_error_max": max(self.ds_error_per_layer),
            "expert_max_violation": max((load["max_violation"] for load in loads), default=0.0),
            "expert_cv": max((load["cv"] for load in loads), default=0.0),
            "dead_experts": sum(load["dead_experts"] for load in loads),
        }


@torch.no_grad()
def collect_diagnostics(model: nn.Module, tokens_BS: Tensor) -> ModelDiagnostics:
    """Run one forward pass over ``tokens_BS`` and measure every residual connection and router on it.

    Uses forward hooks, so the model carries no diagnostics state and the cost is one forward pass plus the
    recomputed coefficients (a small fraction of a training step).
    """
    h_res: list[Tensor] = []
    expert_counts: list[Tensor] = []

    def on_connection(module: ResidualConnection, args: tuple) -> None:
        h_res.append(module.mixing_matrix(args[0]).float())

    def on_router(module: Router, args: tuple, output: tuple) -> None:
        top_idx_TK, _, scores_TE = output
        expert_counts.append(torch.bincount(top_idx_TK.flatten(), minlength=scores_TE.shape[-1]).float())

    handles = [m.register_forward_pre_hook(on_connection) for m in model.modules() if isinstance(m, ResidualConnection)]
    handles += [m.register_forward_hook(on_router) for m in model.modules() if isinstance(m, Router)]
    was_training = model.training
    model.eval()
    try:
        model(tokens_BS)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    errors = [doubly_stochastic_error(h) for h in h_res]
    return ModelDiagnostics(
        amax=amax_profile(h_res),
        ds_error_per_layer=[e[0] for e in errors],
        min_entry_per_layer=[e[1] for e in errors],
        expert_load_per_layer=[expert_load_stats(counts) for counts in expert_counts],
    )
