"""Residual variants behind one interface: plain residual, HC, mHC and mHC-lite (shared MHC_SPEC §1).

Shape legend: B batch, S sequence, T = B·S tokens, N streams (expansion rate n), C model width.

Every sublayer (attention or FFN) is wrapped by one `ResidualConnection`, which *reads* the n streams into the
sublayer input and *writes* the sublayer output back (paper Eq. 3):

    x_{l+1} = H_res · x_l + H_postᵀ · F(H_pre · x_l)

The plain residual is the n = 1 case with H_pre = H_post = H_res = 1. The variants differ only in how the
coefficients are computed; the mixing itself goes through the `kernels` dispatch, so the Triton backend speeds up
HC, mHC and mHC-lite alike. `build_connection` is the one place that maps a variant name to a class.

Streams: the embedding is copied into all n streams (HC, [HF], [TK]) and the streams are summed before the final
norm (HC paper; mHC's own choice is unknown, MHC_SPEC §7.6). Because the final norm is an RMSNorm, summing n
identical streams gives the same output as a plain residual model.

Initialisation (documented choices where the mHC paper is silent, MHC_SPEC §1.2):
- HC: the HC paper's Eq. 14: dynamic weights 0, b_pre = e_{l mod n}, b_post = 1, b_res = I, α = alpha_init. At
  init every stream equals the pre-norm residual stream, so HC equals the pre-norm residual model exactly.
- mHC / mHC-lite: φ = 0 and α = alpha_init (paper: 0.01); b_res = 0 on the identity and −8 elsewhere (the mHC-lite
  code's choice: H_res ≈ I); b_pre = +1 on stream l mod n and −1 elsewhere (breaks the symmetry between the
  streams); b_post = 0 so H_post = 2σ(0) = 1, as HC's B = 1. Streams start identical and H_res is row-stochastic,
  so at init mHC also equals the pre-norm residual model (up to the RMSNorm epsilon).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from kernels import MHCOps, birkhoff_mix, permutation_matrices
from kernels.reference import rms_projection
from models.config import ModelConfig

__all__ = [
    "HyperConnection",
    "ManifoldHyperConnection",
    "ManifoldHyperConnectionLite",
    "PlainResidual",
    "ResidualConnection",
    "build_connection",
    "collapse_streams",
    "expand_streams",
]

# Off-identity residual logit at init: exp(−8) ≈ 3e-4, so H_res starts within 1e-3 of the identity.
OFF_IDENTITY_LOGIT = -8.0

Sublayer = Callable[[Tensor], Tensor]


def expand_streams(h_BSC: Tensor, n: int) -> Tensor:
    """Copy the embedding into n streams."""
    return h_BSC.unsqueeze(-2).expand(*h_BSC.shape[:-1], n, h_BSC.shape[-1])


def collapse_streams(x_BSNC: Tensor) -> Tensor:
    """Sum the streams before the final norm."""
    return x_BSNC.sum(dim=-2)


class ResidualConnection(nn.Module):
    """Wraps one sublayer: read the streams into its input, write its output back."""

    def __init__(self, config: ModelConfig, sublayer_index: int, ops: MHCOps) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, x_BSNC: Tensor, sublayer: Sublayer) -> Tensor:
        B, S, N, C = x_BSNC.shape
        # One copy while the streams are still expand_streams' stride-0 view (first layer), not one per op.
        x_TNC = x_BSNC.reshape(B * S, N, C).contiguous()
        u_TC, h_post_TN, h_res_TNN = self.read(x_TNC)
        f_BSC = sublayer(u_TC.view(B, S, C))
        return self.ops.post_res_mix(x_TNC, f_BSC.reshape(B * S, C), h_post_TN, h_res_TNN).view(B, S, N, C)

    def read(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The sublayer input u (T, C) and the write-back coefficients H_post (T, N), H_res (T, N, N)."""
        h_pre_TN, h_post_TN, h_res_TNN = self.coefficients(x_TNC)
        return self.ops.pre_mix(x_TNC, h_pre_TN), h_post_TN, h_res_TNN

    def coefficients(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(H_pre (T, N), H_post (T, N), H_res (T, N, N)) for each token, fp32."""
        raise NotImplementedError

    def mixing_matrix(self, x_BSNC: Tensor) -> Tensor:
        """H_res for each token (T, N, N): what diagnostics (Amax, doubly-stochastic error) inspect."""
        return self.coefficients(x_BSNC.reshape(-1, *x_BSNC.shape[-2:]))[2]


class PlainResidual(ResidualConnection):
    """x + F(x): the baseline. One stream; no mixing ops on the hot path."""

    def forward(self, x_BSNC: Tensor, sublayer: Sublayer) -> Tensor:
        return x_BSNC + sublayer(x_BSNC[..., 0, :]).unsqueeze(-2)

    def coefficients(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ones_TN = x_TNC.new_ones(x_TNC.shape[0], 1, dtype=torch.float32)
        return ones_TN, ones_TN, ones_TN[:, :, None]


class HyperConnection(ResidualConnection):
    """Static + dynamic Hyper-Connections (HC paper Eqs. 10-14; mHC paper Eq. 5), unconstrained, with tanh.

    Per stream j: x̃_j = RMSNorm(x_j) over C; H_pre[j] = α_pre·tanh(θ_pre·x̃_j) + b_pre[j];
    H_post[j] = α_post·tanh(θ_post·x̃_j) + b_post[j]; H_res[i, j] = α_res·tanh(θ_res[i]·x̃_j) + b_res[i, j].
    One matmul computes all dynamic terms: θ packs [pre | post | res_0 … res_{n−1}] as C × (n + 2).
    """

    def __init__(self, config: ModelConfig, sublayer_index: int, ops: MHCOps) -> None:
        super().__init__(config, sublayer_index, ops)
        n, C = config.residual.n, config.dim
        self.n = n
        self.norm = nn.RMSNorm(C, eps=config.norm_eps)
        self.theta = nn.Parameter(torch.zeros(C, n + 2))
        self.alpha = nn.Parameter(torch.full((3,), config.residual.alpha_init))
        self.bias_pre = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(sublayer_index % n), n).float())
        self.bias_post = nn.Parameter(torch.ones(n))
        self.bias_res = nn.Parameter(torch.eye(n))

    def coefficients(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # RMSNorm(x_j)·θ = (x_j / r_j)·diag(γ)θ: the norm weight γ folds into the tiny θ, and `rms_projection`
        # never materialises the (T, N, C) normalised streams.
        theta_CM = self.norm.weight.to(self.theta.dtype)[:, None] * self.theta
        dyn_TNM = torch.tanh(rms_projection(x_TNC.to(self.theta.dtype), theta_CM, self.norm.eps))
        h_pre_TN = self.alpha[0] * dyn_TNM[..., 0] + self.bias_pre
        h_post_TN = self.alpha[1] * dyn_TNM[..., 1] + self.bias_post
        h_res_TNN = self.alpha[2] * dyn_TNM[..., 2:].transpose(-2, -1) + self.bias_res
        return h_pre_TN, h_post_TN, h_res_TNN


class ManifoldHyperConnection(ResidualConnection):
    """mHC (paper Eqs. 7-9): coefficients from the flattened, RMS-normalised streams; H_res via Sinkhorn-Knopp."""

    def __init__(self, config: ModelConfig, sublayer_index: int, ops: MHCOps) -> None:
        super().__init__(config, sublayer_index, ops)
        res = config.residual
        n = res.n
        self.n, self.residual = n, res
        self.phi = nn.Parameter(torch.zeros(n * config.dim, 2 * n + self.num_res_logits(n)))
        self.alpha = nn.Parameter(torch.full((3,), res.alpha_init))
        bias_pre = torch.full((n,), -1.0)
        bias_pre[sublayer_index % n] = 1.0
        self.bias = nn.Parameter(torch.cat([bias_pre, torch.zeros(n), self.identity_res_bias(n)]))

    @staticmethod
    def num_res_logits(n: int) -> int:
        return n * n

    @staticmethod
    def identity_res_bias(n: int) -> Tensor:
        """Residual logits whose projection is ≈ I: 0 on the diagonal, `OFF_IDENTITY_LOGIT` elsewhere."""
        eye_NN = torch.eye(n)
        return (OFF_IDENTITY_LOGIT * (1 - eye_NN)).flatten()

    def read(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The backend's `mhc_read`: one fused op where the backend has one (the C++ CPU kernels)."""
        res = self.residual
        return self.ops.mhc_read(
            x_TNC, self.phi, self.alpha, self.bias, res.eps, self.pre_eps, res.sinkhorn_iters, res.convention
        )

    @property
    def pre_eps(self) -> float:
        """Added to H_pre: the deepseek-v4 convention's floor, else 0."""
        return self.residual.eps if self.residual.convention == "deepseek-v4" else 0.0

    def coefficients(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        res = self.residual
        h_pre_TN, h_post_TN, res_logits_TR = self.ops.coefficients(
            x_TNC.flatten(1), self.phi, self.alpha, self.bias, self.n, res.eps, self.pre_eps
        )
        return h_pre_TN, h_post_TN, self.project(res_logits_TR)

    def project(self, res_logits_TR: Tensor) -> Tensor:
        """Residual logits → H_res (T, N, N)."""
        res = self.residual
        return self.ops.sinkhorn(res_logits_TR.view(-1, self.n, self.n), res.sinkhorn_iters, res.convention, res.eps)


class ManifoldHyperConnectionLite(ManifoldHyperConnection):
    """mHC-lite: H_res = Σ_p softmax(logits)_p · P_p over all n! permutation matrices, exactly doubly stochastic."""

    def __init__(self, config: ModelConfig, sublayer_index: int, ops: MHCOps) -> None:
        super().__init__(config, sublayer_index, ops)
        self.register_buffer("perms_PNN", permutation_matrices(self.n), persistent=False)

    @staticmethod
    def num_res_logits(n: int) -> int:
        return permutation_matrices(n).shape[0]

    @staticmethod
    def identity_res_bias(n: int) -> Tensor:
        """0 for the identity permutation (listed first), `OFF_IDENTITY_LOGIT` for the others."""
        bias_P = torch.full((permutation_matrices(n).shape[0],), OFF_IDENTITY_LOGIT)
        bias_P[0] = 0.0
        return bias_P

    def read(self, x_TNC: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The composition of the primitive ops: the Birkhoff projection has no fused read."""
        return ResidualConnection.read(self, x_TNC)

    def project(self, res_logits_TR: Tensor) -> Tensor:
        return birkhoff_mix(res_logits_TR, self.perms_PNN)


CONNECTIONS: dict[str, type[ResidualConnection]] = {
    "residual": PlainResidual,
    "hc": HyperConnection,
    "mhc": ManifoldHyperConnection,
    "mhc-lite": ManifoldHyperConnectionLite,
}


def build_connection(config: ModelConfig, sublayer_index: int, ops: MHCOps) -> ResidualConnection:
    """The residual connection of sublayer ``sublayer_index`` (0-based, two per block) for the configured variant."""
    return CONNECTIONS[config.residual.variant](config, sublayer_index, ops)
