"""The fused, chunked head + cross-entropy equals the unfused one: the loss and every gradient."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from models import build_model, get_preset
from models.loss import linear_cross_entropy


def _inputs(tokens, dim, vocab, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, dim, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, dim, generator=generator, dtype=dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    return h, weight, targets


@pytest.mark.parametrize("rows", [1, 4, 7, 64])
def test_fused_loss_gradients_match_finite_differences_for_any_chunking(rows):
    h, weight, targets = _inputs(13, 5, 11)
    targets[[2, 9]] = -100  # ignored positions leave the mean and get no gradient
    assert gradcheck(
        lambda h, w: linear_cross_entropy(h, w, targets, rows=rows), (h, weight), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("ignore", [False, True])
def test_fused_loss_and_gradients_equal_cross_entropy_of_the_logits(ignore):
    h, weight, targets = _inputs(37, 6, 19, seed=1)
    if ignore:
        targets[::5] = -100
    expected = F.cross_entropy(F.linear(h, weight), targets)
    loss = linear_cross_entropy(h, weight, targets, rows=8)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    ours = torch.autograd.grad(loss, (h, weight))
    theirs = torch.autograd.grad(expected, (h, weight))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_loss_scales_its_gradients_by_the_incoming_gradient():
    h, weight, targets = _inputs(9, 4, 7, seed=2)
    (3.0 * linear_cross_entropy(h, weight, targets, rows=2)).backward()
    expected = torch.autograd.grad(3.0 * F.cross_entropy(F.linear(h, weight), targets), (h, weight))
    torch.testing.assert_close(h.grad, expected[0])
    torch.testing.assert_close(weight.grad, expected[1])


def test_fused_loss_without_grad_computes_only_the_loss():
    h, weight, targets = _inputs(10, 4, 9, seed=3)
    with torch.no_grad():
        loss = linear_cross_entropy(h, weight, targets, rows=3)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(h, weight), targets).detach())


@pytest.mark.parametrize("variant", ["residual", "mhc"])
def test_model_loss_path_equals_cross_entropy_of_its_logits(variant):
    config = get_preset("nano").with_residual(variant=variant, n=1 if variant == "residual" else 2)
    model = build_model(config, seed=0)
    tokens = torch.randint(0, config.vocab_size, (3, 21), generator=torch.Generator().manual_seed(4))
    expected = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    expected.backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
