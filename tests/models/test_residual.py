"""Residual connection modules: gradients of the whole read → sublayer → write path against float64 finite
differences, for every variant, on odd shapes and with non-trivial (trained-like) parameters."""

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from kernels import get_ops
from models import ModelConfig, get_preset
from models.residual import build_connection, collapse_streams, expand_streams


def _config(variant: str, n: int, dim: int) -> ModelConfig:
    data = get_preset("nano").model_dump()
    data["dim"] = dim
    data["residual"] = {"variant": variant, "n": n, "sinkhorn_iters": 6}
    return ModelConfig(**data)


@pytest.mark.parametrize(("variant", "n"), [("hc", 1), ("hc", 3), ("mhc", 2), ("mhc", 3), ("mhc-lite", 3)])
def test_connection_gradients_match_finite_differences(variant, n):
    dim = 5
    connection = build_connection(
        _config(variant, n, dim), sublayer_index=1, ops=get_ops("torch", torch.device("cpu"))
    )
    connection.double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move away from the identity-like init so every path carries gradient
        for parameter in connection.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    weight = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    x = torch.randn(2, 3, n, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in connection.named_parameters()]

    def run(x_in, *params):
        return functional_call(
            connection, dict(zip(names, params, strict=True)), (x_in, lambda u: torch.tanh(u @ weight))
        )

    inputs = (x, *[p.detach().clone().requires_grad_() for p in connection.parameters()])
    assert gradcheck(run, inputs, eps=1e-6, atol=1e-5)


def test_streams_expand_by_copy_and_collapse_by_sum():
    h = torch.randn(2, 3, 5)
    x = expand_streams(h, 4)
    assert x.shape == (2, 3, 4, 5)
    assert torch.equal(x[:, :, 2], h)
    torch.testing.assert_close(collapse_streams(x), 4 * h)
