"""`attend` (SDPA with values zero-padded to the query/key width on CPU) equals SDPA's math path."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.attention import attend


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("width", "v_width", "seq"), [(48, 32, 37), (24, 16, 5), (16, 16, 9)])
def test_padded_flash_attention_equals_the_math_path_forward_and_backward(dtype, width, v_width, seq):
    generator = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(2, 3, seq, width, generator=generator, dtype=dtype).requires_grad_() for _ in range(2)
    )
    v = torch.randn(2, seq, 3, v_width, generator=generator, dtype=dtype).transpose(1, 2).requires_grad_()
    grad = torch.randn(2, 3, seq, v_width, generator=generator, dtype=dtype)
    out = attend(q, k, v)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    with sdpa_kernel(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        theirs = torch.autograd.grad(expected, (q, k, v), grad)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(out, expected, **tolerance)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **tolerance)
