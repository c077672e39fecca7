"""The PyTorch reference of the mHC ops: gradients against float64 finite differences, and the properties
the equations promise (doubly stochastic projections, exact row sums, mHC-lite exactness)."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from kernels.reference import (
    birkhoff_mix,
    mhc_coefficients,
    permutation_matrices,
    post_res_mix,
    pre_mix,
    sinkhorn,
)


def _rand(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize(("tokens", "n", "dim"), [(5, 1, 3), (7, 3, 5), (3, 4, 6)])
def test_coefficients_gradients_match_finite_differences(tokens, n, dim):
    columns = n * n + 2 * n
    x = _rand(tokens, n * dim, seed=1)
    phi = _rand(n * dim, columns, seed=2, scale=0.3)
    alpha = _rand(3, seed=3)
    bias = _rand(columns, seed=4)

    def fn(x, phi, alpha, bias):
        return mhc_coefficients(x, phi, alpha, bias, n, eps=1e-6)

    # mhc_coefficients computes in fp32 by design; run it in float64 for the check by keeping inputs float64.
    assert gradcheck(lambda *a: tuple(t.double() for t in fn(*a)), (x, phi, alpha, bias), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("convention", ["paper", "deepseek-v4"])
@pytest.mark.parametrize(("tokens", "n", "iters"), [(3, 2, 1), (4, 3, 5), (2, 4, 20)])
def test_sinkhorn_gradients_match_finite_differences(convention, tokens, n, iters):
    logits = _rand(tokens, n, n, seed=5)
    assert gradcheck(lambda logits_: sinkhorn(logits_, iters, convention, 1e-6), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(("tokens", "n", "dim"), [(5, 1, 3), (7, 3, 5), (4, 4, 7)])
def test_mix_gradients_match_finite_differences(tokens, n, dim):
    x = _rand(tokens, n, dim, seed=6)
    f = _rand(tokens, dim, seed=7)
    h_pre = _rand(tokens, n, seed=8)
    h_post = _rand(tokens, n, seed=9)
    h_res = _rand(tokens, n, n, seed=10)
    assert gradcheck(pre_mix, (x, h_pre), eps=1e-6, atol=1e-5)
    assert gradcheck(post_res_mix, (x, f, h_post, h_res), eps=1e-6, atol=1e-5)


def test_birkhoff_mix_gradients_match_finite_differences():
    perms = permutation_matrices(3, dtype=torch.float64)
    logits = _rand(4, 6, seed=11)
    assert gradcheck(lambda logits_: birkhoff_mix(logits_, perms).double(), (logits,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("convention", ["paper", "deepseek-v4"])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_sinkhorn_after_20_iterations_is_doubly_stochastic_on_realistic_logits(convention, n):
    # Logit std 1 spans the range trained mHC models show. Columns converge slowest for n = 2 (measured worst
    # case 5e-3 over 256 matrices, mean 3e-5); the paper's own column sums deviate by a few percent.
    logits = torch.randn(256, n, n, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    h = sinkhorn(logits, 20, convention, 1e-6)
    column_error = (h.sum(-2) - 1).abs().amax(-1)
    assert h.min() >= 0
    assert (h.sum(-1) - 1).abs().max() < 1e-5  # rows are normalised last: exact up to eps
    assert column_error.max() < 1e-2
    assert column_error.mean() < 1e-4


def test_deepseek_v4_convention_is_the_transposed_paper_projection_up_to_eps():
    logits = torch.randn(64, 4, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    paper = sinkhorn(logits, 20, "paper")
    v4 = sinkhorn(logits.transpose(-2, -1), 20, "deepseek-v4", 1e-6)
    assert (paper - v4).abs().max() < 1e-4  # MHC_SPEC §1.3: 3e-6 at logit std 1
    assert (paper - v4).abs().max() > 0  # the eps floors do change the result


def test_sinkhorn_with_one_stream_is_one():
    assert torch.equal(sinkhorn(torch.randn(5, 1, 1), 20), torch.ones(5, 1, 1))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_permutation_matrices_are_all_distinct_permutations_identity_first(n):
    perms = permutation_matrices(n)
    assert perms.shape == (math.factorial(n), n, n)
    assert torch.equal(perms[0], torch.eye(n))
    assert torch.equal(perms.sum(-1), torch.ones(math.factorial(n), n))
    assert torch.equal(perms.sum(-2), torch.ones(math.factorial(n), n))
    assert len({tuple(p.flatten().tolist()) for p in perms}) == math.factorial(n)


def test_mhc_lite_is_exactly_doubly_stochastic():
    logits = 5 * torch.randn(100, 24, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    h = birkhoff_mix(logits, permutation_matrices(4, dtype=torch.float64)).double()
    assert h.min() >= 0
    assert (h.sum(-1) - 1).abs().max() < 1e-6  # fp32 softmax weights: exact to rounding
    assert (h.sum(-2) - 1).abs().max() < 1e-6


def test_coefficient_ranges_follow_the_projections():
    n = 4
    h_pre, h_post, res = mhc_coefficients(
        torch.randn(50, n * 8),
        torch.randn(n * 8, n * n + 2 * n),
        torch.full((3,), 0.1),
        torch.zeros(n * n + 2 * n),
        n,
        1e-6,
    )
    assert h_pre.min() > 0 and h_pre.max() < 1
    assert h_post.min() > 0 and h_post.max() < 2
    assert res.shape == (50, n * n)
