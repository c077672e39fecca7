"""DeepSeek-V3-style MoE language models with interchangeable residual variants (residual, HC, mHC, mHC-lite).

Configs and presets, parameter and FLOP accounting, the decoder, and diagnostics (Amax gain, doubly-stochastic
error, expert load). The mHC primitive ops come from `kernels` through one dispatch point.
"""

from models.accounting import FlopsPerToken, ParameterCounts, count_parameters, flops_per_token, tokens_for_budget
from models.config import AttentionConfig, ModelConfig, MoEConfig, ResidualConfig, parse_config
from models.errors import ConfigError, LadderError
from models.presets import PRESETS, get_preset, proxy_config

# The decoder and its diagnostics need torch (≈ 2 s to import); configs and accounting do not. They load on first
# use, so `ladder status`, a resubmission and `ladder plan` stay fast.
_LAZY = {
    "AmaxProfile": "models.diagnostics",
    "ModelDiagnostics": "models.diagnostics",
    "collect_diagnostics": "models.diagnostics",
    "MoETransformer": "models.transformer",
    "build_model": "models.transformer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

__all__ = [
    "PRESETS",
    "AmaxProfile",
    "AttentionConfig",
    "ConfigError",
    "FlopsPerToken",
    "LadderError",
    "MoEConfig",
    "MoETransformer",
    "ModelConfig",
    "ModelDiagnostics",
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
