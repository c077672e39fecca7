"""`models.norm.RMSNorm` equals `nn.RMSNorm`: output and every gradient, in float64, on any leading dims."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from models.norm import RMSNorm


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 6)])
def test_fused_rms_norm_equals_nn_rms_norm_forward_and_backward(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()
    grad = torch.randn(*shape, generator=generator, dtype=torch.float64)
    ours, theirs = RMSNorm(shape[-1], eps=1e-6).double(), nn.RMSNorm(shape[-1], eps=1e-6).double()
    with torch.no_grad():
        ours.weight.copy_(torch.randn(shape[-1], generator=generator))
        theirs.weight.copy_(ours.weight)
    out, expected = ours(x), theirs(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)
    ours_grads = torch.autograd.grad(out, (x, ours.weight), grad)
    theirs_grads = torch.autograd.grad(expected, (x, theirs.weight), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    weight = ours.weight.detach().clone().requires_grad_()
    assert gradcheck(
        lambda x, w: functional_call(ours, {"weight": w}, (x,)), (x, weight), eps=1e-6, atol=1e-7
    )


def test_fused_rms_norm_keeps_nn_rms_norm_state_dict_and_isinstance():
    norm = RMSNorm(8, eps=1e-6)
    assert isinstance(norm, nn.RMSNorm)
    assert norm.state_dict().keys() == nn.RMSNorm(8).state_dict().keys()
