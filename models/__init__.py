"""DeepSeek-V3-style MoE language models with interchangeable residual variants (residual, HC, mHC, mHC-lite).

Configs and presets, parameter and FLOP accounting, the decoder, and diagnostics (Amax gain, doubly-stochastic
error, expert load). The mHC primitive ops come from `kernels` through one dispatch point.
"""

from models.accounting import FlopsPerToken, ParameterCounts, count_parameters, flops_per_token, tokens_for_budget
from models.config import AttentionConfig, ModelConfig, MoEConfig, ResidualConfig, parse_config
from models.diagnostics import AmaxProfile, ModelDiagnostics, collect_diagnostics
from models.errors import ConfigError, LadderError
from models.presets import PRESETS, get_preset, proxy_config
from models.transformer import MoETransformer, build_model

__all__ = [
    "PRESETS",
    "AmaxProfile",
    "AttentionConfig",
    "ConfigError",
    "FlopsPerToken",
    "LadderError",
    "ModelConfig",
    "ModelDiagnostics",
    "MoEConfig",
    "MoETransformer",
    "ParameterCounts",
    "ResidualConfig",
    "build_model",
    "collect_diagnostics",
    "count_parameters",
    "flops_per_token",
    "get_preset",
    "parse_config",
    "proxy_config",
    "tokens_for_budget",
]
