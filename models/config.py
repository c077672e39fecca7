"""Typed, validated model configuration.

Every buildable part of the model has a frozen pydantic config with one line of documentation per field.
Validation happens when a config is built; a broken rule raises `ConfigError` whose message names the dotted
field path, the offending value and the rule, e.g. ``model.moe.top_k (9) must be <= num_routed_experts (8)``.
Build configs from plain data with `parse_config`, which does that formatting.

Choices where the mHC paper (arXiv 2512.24880, Table 5) is silent are documented on the fields they set
(see also shared MHC_SPEC §4 "UNKNOWN"):
- ``q_lora_rank = 0``: queries use one full-rank projection (no query compression). With this and
  ``dense_ffn_dim = 8 × expert_dim`` the printed 3B/9B/27B parameter counts are reproduced within 1 %.
- The norm epsilon is 1e-6 (the paper prints 1e-20, which is a no-op in fp32 and a hazard in bf16; V4's
  production code uses 1e-6).
"""

from __future__ import annotations

import contextvars
import math
from typing import Any, ClassVar, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from models.errors import ConfigError

__all__ = [
    "AttentionConfig",
    "ConfigModel",
    "MoEConfig",
    "ModelConfig",
    "ResidualConfig",
    "ResidualVariant",
    "parse_config",
    "rule_violation",
    "validation_problems",
]

ResidualVariant = Literal["residual", "hc", "mhc", "mhc-lite"]
KernelBackend = Literal["auto", "torch", "cpp", "triton"]

# mHC-lite materialises all n! permutation matrices; 6! = 720 is the largest count that stays cheap.
MHC_LITE_MAX_STREAMS = 6
MAX_STREAMS = 8


def rule_violation(field: str, value: Any, rule: str) -> PydanticCustomError:
    """An error for a cross-field rule; `validation_problems` prefixes ``field`` with the model's path."""
    return PydanticCustomError("rule", "{field} ({value}) {rule}", {"field": field, "value": value, "rule": rule})


# Depth of nested ConfigModel construction: only the outermost one turns pydantic's error into a ConfigError,
# so pydantic can still merge the field locations of nested configs into one error.
_construction_depth: contextvars.ContextVar[int] = contextvars.ContextVar("config_construction_depth", default=0)


class ConfigModel(BaseModel):
    """Base for every config: immutable, unknown keys rejected, defaults validated.

    Construction raises `ConfigError` (not pydantic's error) so every caller sees one error type; the paths are
    rooted at ``config_path`` (use `parse_config` to root them elsewhere).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    config_path: ClassVar[str] = "config"

    def __init__(self, **data: Any) -> None:
        token = _construction_depth.set(_construction_depth.get() + 1)
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            if _construction_depth.get() > 1:
                raise
            raise ConfigError.from_problems(validation_problems(error, tuple(self.config_path.split(".")))) from None
        finally:
            _construction_depth.reset(token)


class AttentionConfig(ConfigModel):
    """Multi-head Latent Attention (DeepSeek-V2/V3) with decoupled RoPE."""

    config_path: ClassVar[str] = "model.attention"

    num_heads: int = Field(ge=1, description="Number of attention heads.")
    qk_nope_head_dim: int = Field(ge=1, description="Per-head query/key width without rotary position (V3: 128).")
    qk_rope_head_dim: int = Field(ge=2, description="Per-head decoupled rotary width, shared key across heads (64).")
    v_head_dim: int = Field(ge=1, description="Per-head value width (V3: 128).")
    kv_lora_rank: int = Field(ge=1, description="Rank of the compressed joint key/value latent (paper: 512).")
    q_lora_rank: int = Field(
        default=0, ge=0, description="Rank of the query compression; 0 = full-rank query projection (our choice)."
    )
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base frequency (paper: 10000).")

    @model_validator(mode="after")
    def _rope_dim_even(self) -> AttentionConfig:
        if self.qk_rope_head_dim % 2:
            raise rule_violation("qk_rope_head_dim", self.qk_rope_head_dim, "must be even (rotary pairs)")
        return self

    @property
    def qk_head_dim(self) -> int:
        """Full query/key width per head: the content part plus the rotary part."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class MoEConfig(ConfigModel):
    """DeepSeekMoE: shared experts plus fine-grained routed experts with loss-free balancing."""

    config_path: ClassVar[str] = "model.moe"

    num_routed_experts: int = Field(ge=1, description="Routed experts per MoE layer (paper: 64 or 72).")
    top_k: int = Field(ge=1, description="Routed experts activated per token (paper: 6).")
    num_shared_experts: int = Field(default=2, ge=0, description="Always-active shared experts (paper: 2).")
    expert_dim: int = Field(ge=1, description="Intermediate width of one expert's SwiGLU (paper 'FFN Dimension').")
    route_scale: float = Field(default=1.0, gt=0, description="Multiplier on the normalised gate weights (V3: 2.5).")
    bias_update_rate: float = Field(
        default=1e-3, ge=0, description="γ of loss-free balancing: bias += γ·sign(mean load − load) per step."
    )
    seq_aux_loss_coef: float = Field(
        default=0.0, ge=0, description="Weight α of DeepSeek-V3's sequence-wise balance loss; 0 disables it."
    )

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoEConfig:
        if self.top_k > self.num_routed_experts:
            raise rule_violation("top_k", self.top_k, f"must be <= num_routed_experts ({self.num_routed_experts})")
        return self


class ResidualConfig(ConfigModel):
    """Which residual connection wraps each sublayer, and its options (shared MHC_SPEC §1)."""

    config_path: ClassVar[str] = "model.residual"

    variant: ResidualVariant = Field(default="residual", description="residual | hc | mhc | mhc-lite.")
    n: int = Field(default=1, ge=1, le=MAX_STREAMS, description="Expansion rate: number of residual streams.")
    sinkhorn_iters: int = Field(default=20, ge=0, description="Sinkhorn-Knopp iterations for mHC (paper: 20).")
    alpha_init: float = Field(default=0.01, description="Initial value of the gating factors α (paper: 0.01).")
    convention: Literal["paper", "deepseek-v4"] = Field(
        default="paper",
        description="paper: exp start, exact normalisations, H_res applied as is. deepseek-v4: softmax start, "
        "1e-6 floors, logits stored transposed (MHC_SPEC §1.3).",
    )
    eps: float = Field(default=1e-6, gt=0, description="Epsilon of the flattened-stream RMSNorm and V4 floors.")

    @model_validator(mode="after")
    def _streams_fit_variant(self) -> ResidualConfig:
        if self.variant == "residual" and self.n != 1:
            raise rule_violation("n", self.n, "must be 1 for the plain residual variant")
        if self.variant == "mhc-lite" and self.n > MHC_LITE_MAX_STREAMS:
            raise rule_violation(
                "n", self.n, f"must be <= {MHC_LITE_MAX_STREAMS} for mhc-lite (it builds all n! permutations)"
            )
        return self

    @property
    def num_permutations(self) -> int:
        """n!: the number of permutation matrices mHC-lite mixes."""
        return math.factorial(self.n)


class ModelConfig(ConfigModel):
    """A DeepSeek-V3-style MoE decoder with one residual variant."""

    config_path: ClassVar[str] = "model"

    name: str = Field(default="custom", description="Preset name or a label for a custom shape.")
    vocab_size: int = Field(ge=2, description="Tokenizer vocabulary size (paper: 129280; proxies: 8192).")
    dim: int = Field(ge=1, description="Model width C.")
    num_layers: int = Field(ge=1, description="Transformer blocks; each holds two sublayers (attention, FFN).")
    num_dense_layers: int = Field(default=1, ge=0, description="Leading blocks with a dense SwiGLU (paper: 1).")
    dense_ffn_dim: int = Field(ge=1, description="Dense SwiGLU width (our choice: 8 × expert_dim).")
    max_seq_len: int = Field(default=4096, ge=1, description="Longest sequence the RoPE tables cover.")
    norm_eps: float = Field(default=1e-6, gt=0, description="RMSNorm epsilon (paper prints 1e-20; see module doc).")
    init_std: float = Field(default=0.02, gt=0, description="Std of the normal init of linear and embedding weights.")
    kernel_backend: KernelBackend = Field(
        default="auto",
        description=(
            "mHC primitive ops: auto (Triton on CUDA, fused C++ on CPU, else PyTorch) | torch | cpp | triton."
        ),
    )
    attention: AttentionConfig
    moe: MoEConfig
    residual: ResidualConfig = ResidualConfig()

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, values: Any) -> Any:
        """``{preset: NAME, **overrides}``: the preset's fields, deep-merged with the overrides."""
        if not isinstance(values, dict) or "preset" not in values:
            return values
        from models.presets import PRESETS  # presets build ModelConfigs: imported here to avoid a cycle

        name = values["preset"]
        if not isinstance(name, str) or name.lower() not in PRESETS:
            raise rule_violation("preset", name, f"must be one of {', '.join(PRESETS)}")
        overrides = {key: value for key, value in values.items() if key != "preset"}
        return _deep_merge(PRESETS[name.lower()]().model_dump(), overrides)

    @model_validator(mode="after")
    def _layers_fit(self) -> ModelConfig:
        if self.num_dense_layers > self.num_layers:
            raise rule_violation(
                "num_dense_layers", self.num_dense_layers, f"must be <= num_layers ({self.num_layers})"
            )
        return self

    @property
    def num_moe_layers(self) -> int:
        """Blocks whose FFN is a DeepSeekMoE layer."""
        return self.num_layers - self.num_dense_layers

    @property
    def num_sublayers(self) -> int:
        """Residual connections in the model: two per block (the mHC paper's layer index l)."""
        return 2 * self.num_layers

    def with_residual(self, **fields: Any) -> ModelConfig:
        """A copy with the residual options replaced and re-validated (e.g. ``variant="mhc", n=4``)."""
        return ModelConfig(**{**self.model_dump(), "residual": {**self.residual.model_dump(), **fields}})


def _deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def validation_problems(error: pydantic.ValidationError, root: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """Each broken rule as (field path rooted at ``root``, detail: "(value) rule")."""
    problems = []
    for item in error.errors():
        loc = (*root, *(str(part) for part in item["loc"]))
        ctx = item.get("ctx") or {}
        if item["type"] == "rule":
            problems.append(((*loc, *ctx["field"].split(".")), f"({ctx['value']}) {ctx['rule']}"))
        elif item["type"] == "missing":
            problems.append((loc, "is required"))
        elif item["type"] == "extra_forbidden":
            problems.append((loc, "is not a known field"))
        else:
            problems.append((loc, f"({item.get('input')!r}): {item['msg']}"))
    return problems


ConfigT = TypeVar("ConfigT", bound=ConfigModel)


def parse_config(cls: type[ConfigT], data: dict[str, Any], path: str) -> ConfigT:
    """Build ``cls`` from plain data; a `ConfigError`'s field paths are rooted at ``path`` (e.g. "sweep.base.model")."""
    try:
        return cls(**data)
    except ConfigError as error:
        raise error.rerooted(tuple(cls.config_path.split(".")), tuple(path.split("."))) from None
