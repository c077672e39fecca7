"""The Triton backend of the mHC primitive ops, as `kernels.dispatch` loads it (``TRITON_OPS``).

Each op has the signature and output dtypes of its `kernels.reference` counterpart and a
`torch.autograd.Function` with a gradient for every tensor input:

- `mhc_coefficients` (`kernels.triton_coefficients`): x·φ and Σx² in one pass over x, then α/r scale, bias, σ
  and 2σ (paper Eqs. 14-18); the backward fuses ∂x and ∂φ into one pass over x.
- `sinkhorn` (`kernels.triton_sinkhorn`): both conventions ('paper', 'deepseek-v4'); the backward saves only
  the logits and recomputes the iterations in registers (paper §4.3.1).
- `pre_mix`, `post_res_mix` (`kernels.triton_mix`): the stream mixes, the second fused with the residual
  merge.

mHC-lite's Birkhoff combination (a (T, n!) × (n!, n²) matmul) stays in PyTorch. Any n from 1 to 8 (a constexpr
padded to a power of two inside the kernels), any C and token count. The kernels need a CUDA device, or
``TRITON_INTERPRET=1`` set before this module is first imported (CPU parity tests, `tests/kernels`).
Launch heuristics and the test hooks (`override_launch`, `poison_outputs`) live in `kernels.triton_launch`.
"""

from __future__ import annotations

from kernels.dispatch import MHCOps, compose_mhc_read
from kernels.triton_coefficients import mhc_coefficients
from kernels.triton_launch import kernels_interpreted
from kernels.triton_mix import post_res_mix, pre_mix
from kernels.triton_sinkhorn import sinkhorn

__all__ = ["TRITON_OPS", "kernels_interpreted", "mhc_coefficients", "post_res_mix", "pre_mix", "sinkhorn"]

TRITON_OPS = MHCOps(
    name="triton",
    coefficients=mhc_coefficients,
    sinkhorn=sinkhorn,
    pre_mix=pre_mix,
    post_res_mix=post_res_mix,
    mhc_read=compose_mhc_read(mhc_coefficients, sinkhorn, pre_mix),
)
