"""DeepSeekMoE layer: routing, dropless grouped experts against float64 references, balancing state and stats.

Shape legend: B batch, S sequence, C model width, T tokens, E routed experts, K top_k, F expert_dim, N rows.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import MoEConfig
from models.moe import (
    GroupedExperts,
    GroupedMMFallbackWarning,
    MoE,
    Router,
    expert_load_stats,
    sequence_balance_loss,
)

# fp32 module vs float64 reference on O(1) values and widths <= 16: rounding stays well below 1e-5.
ATOL, RTOL = 1e-5, 1e-4
BACKENDS = ["grouped_mm", "loop"]


def _swiglu64(x_NC: Tensor, w1_CF: Tensor, w3_CF: Tensor, w2_FC: Tensor) -> Tensor:
    return (F.silu(x_NC @ w1_CF) * (x_NC @ w3_CF)) @ w2_FC


def test_router_selects_on_biased_scores_but_weights_with_unbiased_scores() -> None:
    config = MoEConfig(num_routed_experts=4, top_k=2, expert_dim=4, route_scale=2.5)
    router = Router(4, config)
    with torch.no_grad():
        router.weight.copy_(torch.eye(4))
        router.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    x_TC = torch.tensor([[2.0, 1.0, 0.0, -1.0]])  # scores σ(2), σ(1), σ(0), σ(-1): unbiased top-2 is {0, 1}

    top_idx_TK, weights_TK, scores_TE = router(x_TC)

    assert sorted(top_idx_TK[0].tolist()) == [0, 3]  # σ(-1) + 1 = 1.27 beats σ(1) = 0.73
    unbiased = torch.sigmoid(torch.tensor([2.0, -1.0]))
    expected = {0: unbiased[0] / unbiased.sum() * 2.5, 3: unbiased[1] / unbiased.sum() * 2.5}
    for idx, weight in zip(top_idx_TK[0].tolist(), weights_TK[0], strict=True):
        torch.testing.assert_close(weight, expected[idx])
    torch.testing.assert_close(scores_TE[0], torch.sigmoid(x_TC[0]))


def test_router_weights_sum_to_route_scale_per_token() -> None:
    torch.manual_seed(0)
    config = MoEConfig(num_routed_experts=16, top_k=6, expert_dim=4, route_scale=2.5)
    router = Router(12, config)
    router.expert_bias.normal_()

    _, weights_TK, _ = router(torch.randn(37, 12))

    assert (weights_TK > 0).all()
    torch.testing.assert_close(weights_TK.sum(-1), torch.full((37,), 2.5))


@pytest.mark.parametrize("loss", ["sum", "random_cotangent"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_experts_match_float64_per_expert_loop_with_empty_experts(backend: str, loss: str) -> None:
    torch.manual_seed(0)
    counts_E = torch.tensor([0, 13, 0, 20, 4])  # 37 rows; experts 0 and 2 get none
    experts = GroupedExperts(dim=8, expert_dim=12, num_experts=5, backend=backend)
    experts.reset_parameters(0.3)
    x_NC = torch.randn(37, 8, requires_grad=True)
    gate_N = (0.5 + torch.rand(37)).requires_grad_()  # each copy's routing weight
    params64 = [p.detach().double().requires_grad_() for p in (experts.w1, experts.w3, experts.w2)]
    x64_NC = x_NC.detach().double().requires_grad_()
    gate64_N = gate_N.detach().double().requires_grad_()

    y_NC = experts(x_NC, counts_E, gate_N)
    blocks = x64_NC.split(counts_E.tolist())
    y64_NC = gate64_N[:, None] * torch.cat([_swiglu64(b, *(p[e] for p in params64)) for e, b in enumerate(blocks)])
    if loss == "sum":  # .sum() hands back a stride-0 gradient, which raw torch._grouped_mm backward rejects
        cot_NC = torch.ones(37, 8)
        y_NC.sum().backward()
    else:
        cot_NC = torch.randn(37, 8)
        (y_NC * cot_NC).sum().backward()
    (y64_NC * cot_NC.double()).sum().backward()

    torch.testing.assert_close(y_NC, y64_NC.float(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(x_NC.grad, x64_NC.grad.float(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(gate_N.grad, gate64_N.grad.float(), atol=ATOL, rtol=RTOL)
    for param, param64 in zip((experts.w1, experts.w3, experts.w2), params64, strict=True):
        torch.testing.assert_close(param.grad, param64.grad.float(), atol=ATOL, rtol=RTOL)
        assert param.grad[[0, 2]].abs().max() == 0  # experts without tokens get exactly zero gradient


def _reference_moe64(moe: MoE, x64_BSC: Tensor, top_idx_TK: Tensor, params64: dict[str, Tensor]) -> Tensor:
    """Per token and per chosen expert, in float64, with the module's selection held fixed."""
    batch, seq_len, dim = x64_BSC.shape
    x64_TC = x64_BSC.reshape(-1, dim)
    scores_TE = torch.sigmoid(x64_TC @ params64["router.weight"].T)
    chosen_TK = scores_TE.gather(1, top_idx_TK)
    weights_TK = chosen_TK / chosen_TK.sum(-1, keepdim=True) * moe.config.route_scale
    shared = [params64[f"shared.{name}.weight"].T for name in ("w1", "w3", "w2")]
    rows = []
    for t in range(x64_TC.shape[0]):
        y_C = _swiglu64(x64_TC[t], *shared)
        for k, e in enumerate(top_idx_TK[t].tolist()):
            y_C = y_C + weights_TK[t, k] * _swiglu64(
                x64_TC[t], *(params64[f"experts.{w}"][e] for w in ("w1", "w3", "w2"))
            )
        rows.append(y_C)
    return torch.stack(rows).view(batch, seq_len, dim)


@pytest.mark.parametrize("backend", BACKENDS)
def test_moe_output_and_all_gradients_match_float64_per_token_reference(backend: str) -> None:
    torch.manual_seed(0)
    config = MoEConfig(num_routed_experts=6, top_k=2, num_shared_experts=1, expert_dim=12, route_scale=2.5)
    moe = MoE(8, config)
    moe.reset_parameters(0.3)
    moe.experts.backend = backend
    moe.router.expert_bias[[1, 4]] = -10.0  # experts 1 and 4 receive no tokens
    x_BSC = torch.randn(3, 13, 8, requires_grad=True)  # 39 tokens
    params64 = {name: p.detach().double().requires_grad_() for name, p in moe.named_parameters()}
    x64_BSC = x_BSC.detach().double().requires_grad_()

    y_BSC = moe(x_BSC)
    top_idx_TK = moe.router(x_BSC.detach().reshape(-1, 8))[0]
    y64_BSC = _reference_moe64(moe, x64_BSC, top_idx_TK, params64)
    y_BSC.sum().backward()
    y64_BSC.sum().backward()

    assert not torch.isin(top_idx_TK, torch.tensor([1, 4])).any()
    torch.testing.assert_close(y_BSC, y64_BSC.float(), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(x_BSC.grad, x64_BSC.grad.float(), atol=ATOL, rtol=RTOL)
    for name, param in moe.named_parameters():
        torch.testing.assert_close(param.grad, params64[name].grad.float(), atol=ATOL, rtol=RTOL, msg=name)


def test_reruns_under_a_fixed_seed_are_bitwise_identical() -> None:
    def run() -> tuple[Tensor, Tensor]:
        torch.manual_seed(1)
        moe = MoE(16, MoEConfig(num_routed_experts=8, top_k=3, expert_dim=8))
        x_BSC = torch.randn(2, 19, 16, requires_grad=True)
        moe(x_BSC).square().sum().backward()
        return moe(x_BSC).detach(), x_BSC.grad

    first, second = run(), run()
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_grouped_mm_backend_rejects_rows_that_are_not_16_byte_aligned() -> None:
    experts = GroupedExperts(dim=6, expert_dim=8, num_experts=3, backend="grouped_mm")
    with pytest.raises(ValueError, match=r"dim \(6\) and expert_dim \(8\) must be multiples of 4"):
        experts(torch.randn(5, 6), torch.tensor([2, 0, 3]), torch.ones(5))


def test_auto_backend_falls_back_to_the_loop_with_exactly_one_warning() -> None:
    torch.manual_seed(0)
    experts = GroupedExperts(dim=10, expert_dim=8, num_experts=3)  # 10 fp32 = 40 bytes: unaligned
    x_NC, counts_E, gate_N = torch.randn(7, 10), torch.tensor([4, 0, 3]), torch.rand(7)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y_NC = experts(x_NC, counts_E, gate_N)
        experts(x_NC, counts_E, gate_N)

    fallbacks = [w for w in caught if issubclass(w.category, GroupedMMFallbackWarning)]
    assert len(fallbacks) == 1
    assert "dim (10)" in str(fallbacks[0].message) and "silence" in str(fallbacks[0].message)
    experts.backend = "loop"
    assert torch.equal(y_NC, experts(x_NC, counts_E, gate_N))


def test_bias_update_moves_a_skewed_load_toward_balance() -> None:
    torch.manual_seed(0)
    config = MoEConfig(
        num_routed_experts=8, top_k=2, num_shared_experts=0, expert_dim=8, bias_update_rate=0.01
    )
    moe = MoE(16, config).train()
    with torch.no_grad():
        moe.router.weight.normal_(std=0.25)
        gate_E = moe.router.weight
        # Every token leans toward experts 0 and 1: all copies land on 2 of 8 experts, MaxVio = 8/2 - 1 = 3.
        x_BSC = (2 * (gate_E[0] + gate_E[1]) + 0.5 * torch.randn(512, 16))[None]
        violations = []
        for _ in range(50):
            moe(x_BSC)
            violations.append(expert_load_stats(moe.update_expert_bias())["max_violation"])

    assert violations[0] > 2.5
    assert max(violations[-10:]) < 0.25


def test_bias_update_adds_gamma_times_sign_of_mean_minus_load_then_restarts_counting() -> None:
    config = MoEConfig(num_routed_experts=4, top_k=1, expert_dim=4, bias_update_rate=0.01)
    moe = MoE(4, config)
    moe.tokens_per_expert.copy_(torch.tensor([5.0, 1.0, 3.0, 3.0]))  # mean 3

    used = moe.update_expert_bias()

    torch.testing.assert_close(moe.router.expert_bias, torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    torch.testing.assert_close(used, torch.tensor([5.0, 1.0, 3.0, 3.0]))
    assert moe.expert_load().sum() == 0


def test_only_training_forwards_count_load_and_an_empty_count_leaves_the_bias_alone() -> None:
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(num_routed_experts=4, top_k=2, expert_dim=4))
    x_BSC = torch.randn(2, 5, 8)

    moe.eval()(x_BSC)
    moe.update_expert_bias()
    assert moe.router.expert_bias.abs().sum() == 0

    moe.train()(x_BSC)
    assert moe.expert_load().sum() == 2 * 5 * 2
    assert set(dict(moe.named_buffers())) == {"router.expert_bias", "tokens_per_expert"}
    assert set(moe.state_dict()) >= {"router.expert_bias", "tokens_per_expert"}


def test_sequence_balance_loss_matches_a_direct_per_sequence_formula() -> None:
    torch.manual_seed(0)
    config = MoEConfig(num_routed_experts=4, top_k=2, expert_dim=4, seq_aux_loss_coef=0.1)
    moe = MoE(8, config)
    moe.router.expert_bias.normal_()
    x_BSC = torch.randn(2, 5, 8)

    moe(x_BSC)
    top_idx_TK, _, scores_TE = moe.router(x_BSC.reshape(-1, 8))
    num_experts, top_k, seq_len = 4, 2, 5
    per_sequence = []
    for b in range(2):
        rows = range(b * seq_len, (b + 1) * seq_len)
        total = 0.0
        for i in range(num_experts):
            f_i = num_experts / (top_k * seq_len) * sum(i in top_idx_TK[t].tolist() for t in rows)
            p_i = sum((scores_TE[t, i] / scores_TE[t].sum()).item() for t in rows) / seq_len
            total += f_i * p_i
        per_sequence.append(0.1 * total)

    assert moe.aux_loss is not None
    assert moe.aux_loss.item() == pytest.approx(sum(per_sequence) / 2, rel=1e-6)
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # the loss trains the gate through P


def test_sequence_balance_loss_is_coef_on_a_perfectly_balanced_sequence() -> None:
    scores_BSE = torch.full((1, 4, 4), 0.5)  # uniform scores: P_i = 1/E
    top_idx_BSK = torch.tensor([[[0, 1], [2, 3], [0, 1], [2, 3]]])  # every expert twice: f_i = 1
    assert sequence_balance_loss(scores_BSE, top_idx_BSK, 0.3).item() == pytest.approx(0.3)


def test_sequence_balance_loss_is_none_when_disabled() -> None:
    moe = MoE(8, MoEConfig(num_routed_experts=4, top_k=2, expert_dim=4))
    moe(torch.randn(2, 5, 8))
    assert moe.aux_loss is None


@pytest.mark.parametrize(("num_shared", "dim", "expert_dim"), [(2, 16, 8), (0, 12, 5), (3, 8, 4)])
def test_parameter_count_matches_the_formula(num_shared: int, dim: int, expert_dim: int) -> None:
    config = MoEConfig(num_routed_experts=7, top_k=3, num_shared_experts=num_shared, expert_dim=expert_dim)
    moe = MoE(dim, config)
    expected = 7 * dim + 3 * 7 * dim * expert_dim + 3 * dim * num_shared * expert_dim
    assert sum(p.numel() for p in moe.parameters()) == expected


def test_one_token_activates_router_shared_and_top_k_experts_parameters_only() -> None:
    torch.manual_seed(0)
    dim, expert_dim, top_k = 8, 4, 3
    config = MoEConfig(num_routed_experts=8, top_k=top_k, num_shared_experts=2, expert_dim=expert_dim)
    moe = MoE(dim, config)
    moe(torch.randn(1, 1, dim)).sum().backward()
    # The router computes all E scores (E·C activated), but only the K chosen rows receive a gradient.
    touched = {name: int((p.grad != 0).sum()) for name, p in moe.named_parameters()}
    assert touched.pop("router.weight") == top_k * dim
    activated = moe.router.weight.numel() + sum(touched.values())
    assert activated == 8 * dim + 3 * dim * 2 * expert_dim + 3 * top_k * dim * expert_dim


def test_reset_parameters_draws_every_weight_from_the_given_std_and_keeps_balancing_state() -> None:
    torch.manual_seed(0)
    moe = MoE(32, MoEConfig(num_routed_experts=16, top_k=2, expert_dim=32))
    moe.router.expert_bias.fill_(0.5)
    moe.reset_parameters(0.5)
    for name, param in moe.named_parameters():
        assert param.std().item() == pytest.approx(0.5, rel=0.15), name
    assert (moe.router.expert_bias == 0.5).all()


@pytest.mark.parametrize(
    ("counts", "max_violation", "cv", "dead"),
    [
        ([4, 4, 4, 4], 0.0, 0.0, 0),
        ([8, 0, 4, 4], 1.0, math.sqrt(8) / 4, 1),
        ([0, 0, 0, 12], 3.0, math.sqrt(3), 3),
    ],
)
def test_expert_load_stats_on_hand_built_counts(
    counts: list[int], max_violation: float, cv: float, dead: int
) -> None:
    stats = expert_load_stats(torch.tensor(counts, dtype=torch.float32))
    assert stats == {
        "max_violation": pytest.approx(max_violation),
        "cv": pytest.approx(cv),
        "dead_experts": dead,
    }


def test_expert_load_stats_of_an_empty_count_are_undefined_not_balanced() -> None:
    stats = expert_load_stats(torch.zeros(4))
    assert math.isnan(stats["max_violation"]) and math.isnan(stats["cv"])
    assert stats["dead_experts"] == 4


def test_bf16_autocast_on_cpu_keeps_the_router_in_fp32_and_tracks_the_fp32_output() -> None:
    torch.manual_seed(0)
    moe = MoE(16, MoEConfig(num_routed_experts=8, top_k=2, expert_dim=16))
    x_BSC = torch.randn(2, 7, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_BSC = moe(x_BSC)
        scores_TE = moe.router(x_BSC.reshape(-1, 16))[2]
    assert y_BSC.dtype == torch.bfloat16 and scores_TE.dtype == torch.float32
    torch.testing.assert_close(y_BSC.float(), moe(x_BSC), atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device for the bf16 grouped_mm kernel"
)
def test_cuda_bf16_autocast_grouped_mm_matches_the_loop() -> None:
    torch.manual_seed(0)
    moe = MoE(64, MoEConfig(num_routed_experts=8, top_k=2, expert_dim=32)).cuda()
    x_BSC = torch.randn(3, 37, 64, device="cuda", requires_grad=True)
    outputs, grads = [], []
    for backend in BACKENDS:
        moe.experts.backend = backend
        x_BSC.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y_BSC = moe(x_BSC)
        y_BSC.float().sum().backward()
        outputs.append(y_BSC.float())
        grads.append(x_BSC.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads[0], grads[1], atol=2e-2, rtol=2e-2)
