"""The single dispatch point through which models/ calls the mHC primitive ops.

``auto`` picks the Triton kernels on CUDA tensors and the fused C++ CPU kernels (`kernels.cpu_ops`) on CPU,
falling back to the PyTorch reference, with a logged warning, where those cannot be built (no C++ compiler).
``torch``, ``cpp`` and ``triton`` force one backend; ``triton`` on a CPU tensor only works under
``TRITON_INTERPRET=1``, which is how the parity tests run on CPU.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels import reference
from kernels.cpu_build import cpu_kernels_error

__all__ = ["MHCOps", "compose_mhc_read", "get_ops", "resolve_backend"]

ReadSide = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True)
class MHCOps:
    """One backend's implementation of the four mHC primitive ops (signatures as in `kernels.reference`), and
    of ``mhc_read``, an mHC connection's whole read side (see `compose_mhc_read`), which a backend may fuse."""

    name: str
    coefficients: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    sinkhorn: Callable[..., torch.Tensor]
    pre_mix: Callable[..., torch.Tensor]
    post_res_mix: Callable[..., torch.Tensor]
    mhc_read: Callable[..., ReadSide]


def compose_mhc_read(
    coefficients: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    sinkhorn: Callable[..., torch.Tensor],
    pre_mix: Callable[..., torch.Tensor],
) -> Callable[..., ReadSide]:
    """mhc_read(x_TNC, phi_KM, alpha_3, bias_M, eps, pre_eps, num_iters, convention) → (u_TC, H_post, H_res):
    the coefficients, the Sinkhorn projection of the residual logits and the pre-mix, one op after another."""

    def mhc_read(
        x_TNC: torch.Tensor, phi_KM: torch.Tensor, alpha_3: torch.Tensor, bias_M: torch.Tensor, eps: float,
        pre_eps: float, num_iters: int, convention: str,
    ) -> ReadSide:
        n = x_TNC.shape[1]
        h_pre_TN, h_post_TN, res_logits_TR = coefficients(x_TNC.flatten(1), phi_KM, alpha_3, bias_M, n, eps, pre_eps)
        h_res_TNN = sinkhorn(res_logits_TR.view(-1, n, n), num_iters, convention, eps)
        return pre_mix(x_TNC, h_pre_TN), h_post_TN, h_res_TNN

    return mhc_read


TORCH_OPS = MHCOps(
    name="torch",
    coefficients=reference.mhc_coefficients,
    sinkhorn=reference.sinkhorn,
    pre_mix=reference.pre_mix,
    post_res_mix=reference.post_res_mix,
    mhc_read=compose_mhc_read(reference.mhc_coefficients, reference.sinkhorn, reference.pre_mix),
)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into the concrete backend for tensors on ``device`` (on CPU this may build the C++ kernels)."""
    if backend == "auto":
        if device.type == "cuda":
            return "triton"
        return "cpp" if device.type == "cpu" and cpu_kernels_error() is None else "torch"
    if backend in ("torch", "cpp", "triton"):
        return backend
    raise ValueError(f"kernel_backend ({backend!r}) must be one of auto, torch, cpp, triton")


def get_ops(backend: str, device: torch.device) -> MHCOps:
    """The ops for ``backend`` (auto | torch | cpp | triton) on ``device``."""
    resolved = resolve_backend(backend, device)
    if resolved == "torch":
        return TORCH_OPS
    if resolved == "cpp":
        if device.type != "cpu":
            raise ValueError(f"kernel_backend 'cpp' runs on CPU tensors only, not on {device}")
        # Importing builds the kernels: a missing compiler is reported here, not at the first forward.
        return importlib.import_module("kernels.cpu_ops").CPP_OPS
    try:
        triton_ops = importlib.import_module("kernels.triton_ops")
    except ImportError as error:
        raise RuntimeError(
            f"kernel_backend 'triton' is unavailable ({error}); install triton>=3.6 or set kernel_backend: torch"
        ) from error
    return triton_ops.TRITON_OPS
