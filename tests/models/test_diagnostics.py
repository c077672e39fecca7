"""Amax gain, doubly-stochastic error and expert-load diagnostics (MHC_SPEC §3)."""

import pytest
import torch

from models import build_model, collect_diagnostics, get_preset
from models.diagnostics import amax_backward, amax_forward, amax_profile, doubly_stochastic_error

HC_LIKE = torch.tensor([[1.2, -0.5], [0.3, 0.9]])  # row sums 0.7, 1.2; column sums 1.5, 0.4


def test_amax_of_identity_is_one():
    eye = torch.eye(4)[None]
    assert amax_forward(eye).item() == 1.0
    assert amax_backward(eye).item() == 1.0


def test_amax_of_a_hand_built_hc_like_matrix():
    assert amax_forward(HC_LIKE).item() == pytest.approx(1.2)
    assert amax_backward(HC_LIKE).item() == pytest.approx(1.5)


def test_amax_uses_the_absolute_sum_not_the_induced_norm():
    m = torch.tensor([[2.0, -2.0], [0.5, 0.0]])  # |row sums| 0 and 0.5; induced ∞-norm would be 4
    assert amax_forward(m).item() == pytest.approx(0.5)


def test_composite_profile_multiplies_in_depth_order():
    # Two layers, one token each. M² = [[1.29, -1.05], [0.63, 0.66]]: row sums 0.24, 1.29; column sums 1.92, -0.39.
    second = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    profile = amax_profile([HC_LIKE[None], second[None]])
    # forward composite at l=1 is H_2·H_1; backward composite at l=0 is H_2·H_1 too, at l=1 just H_2.
    product = second @ HC_LIKE
    assert profile.composite_forward == pytest.approx([1.2, amax_forward(product).item()])
    assert profile.composite_backward == pytest.approx([amax_backward(product).item(), 1.5])
    assert profile.layer_forward == pytest.approx([1.2, 1.0])
    squared = amax_profile([HC_LIKE[None], HC_LIKE[None]])
    assert squared.max_composite_forward == pytest.approx(1.29)
    assert squared.max_composite_backward == pytest.approx(1.92)


def test_gains_are_averaged_over_tokens():
    profile = amax_profile([torch.stack([torch.eye(2), 3 * torch.eye(2)])])
    assert profile.layer_forward == pytest.approx([2.0])


def test_doubly_stochastic_error_of_hand_built_matrices():
    assert doubly_stochastic_error(torch.full((1, 3, 3), 1 / 3, dtype=torch.float64)) == pytest.approx(
        (0, 0), abs=1e-12
    )
    error, most_negative = doubly_stochastic_error(torch.tensor([[[1.1, -0.1], [0.0, 1.0]]]))
    assert error == pytest.approx(0.1)
    assert most_negative == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("variant", "n", "max_ds_error"), [("mhc", 4, 1e-3), ("mhc-lite", 4, 1e-5), ("hc", 4, 1e-6)]
)
def test_model_diagnostics_at_init(variant, n, max_ds_error):
    config = get_preset("nano").with_residual(variant=variant, n=n)
    model = build_model(config, seed=0)
    tokens = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    diagnostics = collect_diagnostics(model, tokens)
    assert len(diagnostics.amax.layer_forward) == config.num_sublayers
    assert diagnostics.amax.layer_forward == pytest.approx([1.0] * config.num_sublayers, abs=1e-5)
    assert diagnostics.amax.max_composite_backward == pytest.approx(1.0, abs=1e-2)
    assert max(diagnostics.ds_error_per_layer) < max_ds_error
    assert len(diagnostics.expert_load_per_layer) == config.num_moe_layers
    summary = diagnostics.summary()
    assert summary["dead_experts"] >= 0 and summary["expert_max_violation"] >= 0
    assert model.training  # diagnostics restore the training mode


def test_hc_diagnostics_see_an_exploding_mixing_matrix():
    config = get_preset("nano").with_residual(variant="hc", n=2)
    model = build_model(config, seed=0)
    with torch.no_grad():
        for block in model.blocks:
            for connection in (block.attn_connection, block.ffn_connection):
                connection.bias_res.copy_(HC_LIKE)
    tokens = torch.randint(0, config.vocab_size, (1, 16))
    diagnostics = collect_diagnostics(model, tokens)
    expected = amax_profile([HC_LIKE[None]] * config.num_sublayers)
    assert diagnostics.amax.composite_forward == pytest.approx(expected.composite_forward, rel=1e-3)
    assert diagnostics.amax.max_composite_backward > 1.5
    assert max(diagnostics.ds_error_per_layer) == pytest.approx(0.6, rel=1e-3)  # column sum 0.4
