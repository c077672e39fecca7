"""mHC primitive ops (Sinkhorn projection, coefficients, pre-mix, post/residual mix) behind one dispatch point.

`kernels.reference` is the PyTorch ground truth; the fused C++ CPU kernels (`kernels.cpu_ops`) and the Triton
GPU kernels (`kernels.triton_ops`) must match it. Models call `get_ops` only.
"""

from kernels.dispatch import MHCOps, get_ops, resolve_backend
from kernels.reference import birkhoff_mix, permutation_matrices

__all__ = ["MHCOps", "birkhoff_mix", "get_ops", "permutation_matrices", "resolve_backend"]
