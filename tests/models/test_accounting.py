"""Parameter and FLOP accounting: formulas equal the built modules and reproduce the paper's Table 5."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, count_parameters, flops_per_token, get_preset, tokens_for_budget
from models.residual import ResidualConnection

# mHC paper Table 5: (total, active) parameters.
TABLE_5 = {"paper-3b": (2.97e9, 612e6), "paper-9b": (9.18e9, 1.66e9), "paper-27b": (27.0e9, 4.14e9)}
VARIANTS = [("residual", 1), ("hc", 4), ("mhc", 4), ("mhc-lite", 4), ("mhc", 2), ("hc", 3)]


@pytest.mark.parametrize("preset", list(TABLE_5))
def test_paper_presets_match_table_5_within_one_percent(preset):
    counts = count_parameters(get_preset(preset))
    total, active = TABLE_5[preset]
    assert counts.total == pytest.approx(total, rel=0.01)
    assert counts.activated == pytest.approx(active, rel=0.01)
    assert counts.vocab == 2 * 129280 * get_preset(preset).dim  # the paper's "Vocab params"


@pytest.mark.parametrize("preset", list(TABLE_5))
def test_paper_preset_built_on_meta_device_has_the_formula_parameter_count(preset):
    config = get_preset(preset).with_residual(variant="mhc", n=4)
    model = build_model(config, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count_parameters(config).total


@pytest.mark.parametrize("preset", ["p1", "p4", "p16", "p64", "nano"])
@pytest.mark.parametrize(("variant", "n"), VARIANTS)
def test_formula_parameter_count_equals_built_module(preset, variant, n):
    config = get_preset(preset).with_residual(variant=variant, n=n)
    model = build_model(config, device="meta")
    counts = count_parameters(config)
    assert sum(p.numel() for p in model.parameters()) == counts.total
    connections = [m for m in model.modules() if isinstance(m, ResidualConnection)]
    assert sum(p.numel() for c in connections for p in c.parameters()) == counts.residual


@pytest.mark.parametrize(("preset", "millions"), [("p1", 1), ("p4", 4), ("p16", 16), ("p64", 64)])
def test_proxy_ladder_lands_near_its_nominal_activated_size(preset, millions):
    n_active = count_parameters(get_preset(preset)).activated_non_embedding
    assert 0.85 * millions * 1e6 <= n_active <= 1.15 * millions * 1e6


def test_architecture_flops_match_torch_flop_counter_for_the_baseline():
    """The forward matmul + attention FLOPs we charge equal what torch counts on the real module.

    FlopCounterMode counts matmuls and attention (non-causal, as DeepSeek's M does); it has no formula for
    torch._grouped_mm (the routed experts), so the test supplies one: 2 · rows · in · out. The lm head is a matmul
    too. Norms and elementwise ops are counted by neither side. The count runs SDPA's math backend: the counter
    has no formula for the CPU flash kernel the model otherwise uses (which also sees zero-padded values).
    """
    config = get_preset("nano")
    seq_len = 48
    model = build_model(config)
    tokens = torch.randint(0, config.vocab_size, (3, seq_len))

    def grouped_mm_flops(a_shape, b_shape, *args, out_val=None, **kwargs):
        return 2 * a_shape[0] * a_shape[1] * b_shape[-1]

    mapping = {torch.ops.aten._grouped_mm: grouped_mm_flops}
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(tokens)
    expected = flops_per_token(config, seq_len)
    forward_per_token = (expected.deepseek_m + expected.lm_head) / 3
    assert counter.get_total_flops() / tokens.numel() == pytest.approx(forward_per_token, rel=0.02)


def test_mhc_extra_flops_are_small_but_positive_and_zero_for_residual():
    base = get_preset("paper-27b")
    assert flops_per_token(base, 4096).residual_extra == 0
    mhc = flops_per_token(base.with_residual(variant="mhc", n=4), 4096)
    assert 0 < mhc.residual_extra < 0.01 * mhc.total


def test_budget_converts_to_tokens_with_the_baseline_count_for_every_variant():
    base = get_preset("p1")
    budget = 1e15
    tokens = {tokens_for_budget(base.with_residual(variant=v, n=n), budget, 256) for v, n in VARIANTS}
    assert tokens == {int(budget // flops_per_token(base, 256).total)}
