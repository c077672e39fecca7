"""The hand-written autograd nodes of the PyTorch reference against plain autograd through the same equations.

`kernels.reference` replaces autograd's graphs with explicit backwards for speed (Sinkhorn's unrolled loop,
the coefficient equations, the two mixes). Each is checked here against float64 finite differences (gradcheck)
and against an autograd transcription of the equations: forward equal, every gradient equal to rounding,
including on strided inputs, stride-0 gradients and with only some outputs used.
"""

import pytest
import torch
from torch.autograd import gradcheck

from kernels.reference import mhc_coefficients, post_res_mix, pre_mix, rms_projection, sinkhorn


def _rand(*shape, seed=0, scale=1.0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator, dtype=dtype)).requires_grad_()


def _sinkhorn_unrolled(logits_TNN, num_iters, convention, eps):
    """The loop as plain autograd ops, on the (T, N, N) layout: what the custom node must reproduce."""
    if convention == "paper":
        m = torch.exp(logits_TNN - logits_TNN.amax(dim=(-2, -1), keepdim=True))
        for _ in range(num_iters):
            m = m / m.sum(dim=-2, keepdim=True)
            m = m / m.sum(dim=-1, keepdim=True)
        return m
    m = (torch.softmax(logits_TNN, dim=-1) + eps).transpose(-2, -1)
    m = m / (m.sum(dim=-1, keepdim=True) + eps)
    for _ in range(num_iters - 1):
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
    return m


def _coefficients_autograd(x_TK, phi_KM, alpha_3, bias_M, n, eps, pre_eps):
    mixes_TM = x_TK @ phi_KM
    inv_rms_T1 = torch.rsqrt(x_TK.square().mean(dim=-1, keepdim=True) + eps)
    gate_M = torch.cat(
        [alpha_3[0].expand(n), alpha_3[1].expand(n), alpha_3[2].expand(phi_KM.shape[1] - 2 * n)]
    )
    logits_TM = mixes_TM * inv_rms_T1 * gate_M + bias_M
    return (
        torch.sigmoid(logits_TM[:, :n]) + pre_eps,
        2 * torch.sigmoid(logits_TM[:, n : 2 * n]),
        logits_TM[:, 2 * n :],
    )


def _assert_same_values_and_gradients(ours, theirs, inputs, grad_outputs, rtol=1e-10, atol=1e-12):
    ours, theirs = (o if isinstance(o, tuple) else (o,) for o in (ours, theirs))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    used = [(o, g) for o, g in zip(ours, grad_outputs, strict=True) if g is not None]
    ref_used = [(o, g) for o, g in zip(theirs, grad_outputs, strict=True) if g is not None]
    ours_grads = torch.autograd.grad([o for o, _ in used], inputs, [g for _, g in used], allow_unused=True)
    ref_grads = torch.autograd.grad(
        [o for o, _ in ref_used], inputs, [g for _, g in ref_used], allow_unused=True
    )
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("convention", ["paper", "deepseek-v4"])
@pytest.mark.parametrize(("tokens", "n", "iters"), [(5, 1, 3), (7, 3, 0), (6, 4, 1), (9, 5, 20)])
def test_sinkhorn_node_equals_autograd_through_the_unrolled_loop(convention, tokens, n, iters):
    logits = _rand(tokens, n, n, seed=1, scale=2.0)
    grad = torch.randn(tokens, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _assert_same_values_and_gradients(
        sinkhorn(logits, iters, convention, 1e-6),
        _sinkhorn_unrolled(logits, iters, convention, 1e-6),
        (logits,),
        [grad],
    )


def test_sinkhorn_forward_is_bitwise_the_unrolled_loop_in_fp32():
    logits = torch.randn(300, 4, 4, generator=torch.Generator().manual_seed(3))
    m_NNT = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True)).permute(1, 2, 0).contiguous()
    for _ in range(20):
        m_NNT = m_NNT / m_NNT.sum(dim=0, keepdim=True)
        m_NNT = m_NNT / m_NNT.sum(dim=1, keepdim=True)
    assert torch.equal(sinkhorn(logits, 20), m_NNT.permute(2, 0, 1))


@pytest.mark.parametrize("convention", ["paper", "deepseek-v4"])
def test_sinkhorn_node_gradients_match_finite_differences_on_strided_logits(convention):
    logits = _rand(4, 6, 3, seed=4)[:, 1:4, :].transpose(-2, -1)  # (4, 3, 3), non-contiguous
    assert gradcheck(lambda logits: sinkhorn(logits, 7, convention, 1e-6), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("tokens", "n", "dim", "pre_eps"), [(5, 1, 3, 0.0), (7, 3, 5, 1e-6), (6, 4, 6, 0.0)])
def test_coefficients_node_equals_autograd_of_the_equations(tokens, n, dim, pre_eps):
    columns = n * n + 2 * n
    inputs = (
        _rand(tokens, n * dim, seed=5),
        _rand(n * dim, columns, seed=6, scale=0.3),
        _rand(3, seed=7),
        _rand(columns, seed=8),
    )
    grads = [torch.randn(tokens, k, dtype=torch.float64) for k in (n, n, n * n)]
    _assert_same_values_and_gradients(
        mhc_coefficients(*inputs, n, 1e-6, pre_eps),
        _coefficients_autograd(*inputs, n, 1e-6, pre_eps),
        inputs,
        grads,
    )


@pytest.mark.parametrize("used", [(True, False, False), (False, True, False), (False, False, True)])
def test_coefficients_node_handles_outputs_without_gradient(used):
    n, dim, tokens = 3, 4, 5
    columns = n * n + 2 * n
    inputs = (
        _rand(tokens, n * dim, seed=9),
        _rand(n * dim, columns, seed=10, scale=0.3),
        _rand(3, seed=11),
        _rand(columns, seed=12),
    )
    grads = [
        torch.randn(tokens, k, dtype=torch.float64) if u else None
        for k, u in zip((n, n, n * n), used, strict=True)
    ]
    _assert_same_values_and_gradients(
        mhc_coefficients(*inputs, n, 1e-6), _coefficients_autograd(*inputs, n, 1e-6, 0.0), inputs, grads
    )


def test_mixes_match_autograd_on_stride_zero_streams_and_gradients():
    tokens, n, dim = 6, 3, 5
    x = _rand(tokens, 1, dim, seed=13).expand(tokens, n, dim)  # what expand_streams hands the first layer
    f, h_pre, h_post, h_res = (
        _rand(tokens, dim, seed=14),
        _rand(tokens, n, seed=15),
        _rand(tokens, n, seed=16),
        _rand(tokens, n, n, seed=17),
    )
    grad_u = torch.randn(tokens, 1, dtype=torch.float64).expand(tokens, dim)
    grad_x = torch.randn(tokens, 1, dim, dtype=torch.float64).expand(
        tokens, n, dim
    )  # the stream sum's gradient
    _assert_same_values_and_gradients(pre_mix(x, h_pre), (h_pre[:, :, None] * x).sum(1), (x, h_pre), [grad_u])
    inputs = (x, f, h_post, h_res.transpose(-2, -1))
    expected = inputs[3] @ x + h_post[:, :, None] * f[:, None, :]
    _assert_same_values_and_gradients(post_res_mix(*inputs), expected, (x, f, h_post, h_res), [grad_x])


@pytest.mark.parametrize("n", [1, 2, 8])
def test_mix_gradients_match_finite_differences_for_every_stream_count(n):
    x, f = _rand(3, n, 4, seed=18), _rand(3, 4, seed=19)
    h_pre, h_post, h_res = _rand(3, n, seed=20), _rand(3, n, seed=21), _rand(3, n, n, seed=22)
    assert gradcheck(pre_mix, (x, h_pre), eps=1e-6, atol=1e-6)
    assert gradcheck(post_res_mix, (x, f, h_post, h_res), eps=1e-6, atol=1e-6)


def test_bf16_inputs_give_bf16_outputs_and_gradients_of_the_input_dtype():
    x = torch.randn(5, 2, 8, dtype=torch.bfloat16, requires_grad=True)
    f = torch.randn(5, 8, dtype=torch.bfloat16, requires_grad=True)
    h = torch.rand(5, 2, requires_grad=True)
    h_res = torch.rand(5, 2, 2, requires_grad=True)
    u, out = pre_mix(x, h), post_res_mix(x, f, h, h_res)
    assert u.dtype == out.dtype == torch.bfloat16
    (u.float().sum() + out.float().sum()).backward()
    assert (
        x.grad.dtype == f.grad.dtype == torch.bfloat16 and h.grad.dtype == h_res.grad.dtype == torch.float32
    )


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 6)])
def test_rms_projection_equals_autograd_of_norm_then_matmul(shape):
    x, w = _rand(*shape, seed=23), _rand(shape[-1], 5, seed=24)
    expected = (x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-6)) @ w
    grad = torch.randn(*shape[:-1], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    _assert_same_values_and_gradients(rms_projection(x, w, 1e-6), expected, (x, w), [grad])
    assert gradcheck(lambda x, w: rms_projection(x, w, 1e-6), (x, w), eps=1e-6, atol=1e-6)
