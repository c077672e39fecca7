"""Configs reject bad input with messages that name the field path, the value and the rule."""

import pytest

from models import ConfigError, ModelConfig, get_preset, parse_config
from models.config import MoEConfig


def _nano_data(**overrides):
    data = get_preset("nano").model_dump()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        target = data
        for part in parents:
            target = target[part]
        target[leaf] = value
    return data


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"moe.top_k": 9}, "model.moe.top_k (9) must be <= num_routed_experts (8)"),
        ({"residual.variant": "mhc", "residual.n": 0}, "model.residual.n (0)"),
        ({"residual.variant": "mhc", "residual.n": 9}, "model.residual.n (9)"),
        ({"residual.variant": "mhc-lite", "residual.n": 7}, "model.residual.n (7) must be <= 6 for mhc-lite"),
        ({"residual.n": 4}, "model.residual.n (4) must be 1 for the plain residual variant"),
        ({"residual.variant": "dense-hc"}, "model.residual.variant ('dense-hc')"),
        ({"attention.qk_rope_head_dim": 7}, "model.attention.qk_rope_head_dim (7) must be even"),
        ({"num_dense_layers": 3}, "model.num_dense_layers (3) must be <= num_layers (2)"),
        ({"kernel_backend": "cuda"}, "model.kernel_backend ('cuda')"),
    ],
)
def test_invalid_model_config_names_field_value_and_rule(overrides, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(ModelConfig, _nano_data(**overrides), path="model")
    assert expected in str(error.value)


def test_direct_construction_raises_config_error_not_pydantic_error():
    with pytest.raises(ConfigError, match=r"model\.moe\.top_k \(5\) must be <= num_routed_experts \(4\)"):
        MoEConfig(num_routed_experts=4, top_k=5, expert_dim=8)


def test_unknown_field_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"model\.moe\.num_experts is not a known field"):
        parse_config(ModelConfig, _nano_data(**{"moe.num_experts": 3}), path="model")


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"model\.preset \('paper-1b'\) must be one of .*paper-3b.*nano"):
        get_preset("paper-1b")


def test_with_residual_revalidates():
    config = get_preset("nano").with_residual(variant="mhc", n=4, sinkhorn_iters=7)
    assert (config.residual.variant, config.residual.n, config.residual.sinkhorn_iters) == ("mhc", 4, 7)
    with pytest.raises(ConfigError, match="mhc-lite"):
        config.with_residual(variant="mhc-lite", n=8)


def test_configs_are_immutable():
    config = get_preset("nano")
    with pytest.raises(ValueError, match="frozen"):
        config.dim = 64
