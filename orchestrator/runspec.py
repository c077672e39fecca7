"""RunSpec: everything one training run needs, typed and validated; its `run_key` is its identity.

A RunSpec = model config + training config + data + tracking (+ where checkpoints live and the grid coordinates
as tags). Sweeps produce RunSpecs; `ladder train run.yaml` reads one. The `run_key` hashes the canonical resolved
config (sorted keys, every default spelled out), leaving out what does not change the trained weights:
resources (workers, sharding, threads, device, compile), checkpoint cadence, the data cache location, tracking
and storage.

Training recipe defaults follow the mHC paper (Table 5): AdamW β = (0.9, 0.95), weight decay 0.1, step decay to
0.316× and 0.1× at 80 % and 90 % of the steps, warm-up. Differences, chosen for CPU-scale proxies: warm-up is a
fraction of the steps (the paper's 2000 of 30000 steps ≈ 0.067), AdamW ε = 1e-8 (the paper prints 1e-20, below
fp32 resolution of typical second moments, so it is effectively 0 there too), gradient clipping at 1.0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from models import ModelConfig, flops_per_token, tokens_for_budget
from models.config import ConfigModel, rule_violation
from orchestrator.data import DataConfig
from orchestrator.resources import Resources
from orchestrator.tracking import TrackingConfig

__all__ = ["Budget", "RunSpec", "TrainingConfig"]


class Budget(ConfigModel):
    """How long to train: exactly one of a compute budget, a token count or a step count."""

    config_path: ClassVar[str] = "training.budget"

    flops: float | None = Field(default=None, gt=0, description="Training FLOPs, charged at the baseline count.")
    tokens: int | None = Field(default=None, gt=0, description="Training tokens.")
    steps: int | None = Field(default=None, gt=0, description="Optimizer steps.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Budget:
        given = [name for name in ("flops", "tokens", "steps") if getattr(self, name) is not None]
        if len(given) != 1:
            raise rule_violation("flops|tokens|steps", ", ".join(given) or "none", "exactly one must be set")
        return self


class TrainingConfig(ConfigModel):
    """Optimisation, evaluation, checkpointing and resources of one run."""

    config_path: ClassVar[str] = "training"

    seed: int = Field(default=0, ge=0, description="Seed of the weights and of the batch sequence.")
    budget: Budget = Field(default=Budget(steps=100), description="flops | tokens | steps (exactly one).")
    batch_size: int = Field(default=16, ge=1, description="Sequences per optimizer step.")
    grad_accum: int = Field(default=1, ge=1, description="Micro-batches per step; must divide batch_size.")
    seq_len: int = Field(default=128, ge=2, description="Tokens per sequence.")
    lr: float = Field(default=3e-3, gt=0, description="Peak learning rate.")
    schedule: Literal["step", "cosine", "wsd"] = Field(
        default="step", description="step: the paper's (×0.316 at 80 %, ×0.1 at 90 %); cosine; wsd."
    )
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="Linear warm-up, share of the steps.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Final lr / peak for cosine and wsd.")
    decay_fraction: float = Field(default=0.2, gt=0, le=1, description="wsd: share of the steps spent decaying.")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="AdamW β1, β2.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW decoupled weight decay.")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW ε.")
    grad_clip: float = Field(default=1.0, gt=0, description="Max global gradient norm.")
    eval_every: int = Field(default=50, ge=1, description="Steps between evaluations (and one at the end).")
    eval_windows: int = Field(default=32, ge=1, description="Validation windows of seq_len tokens per evaluation.")
    checkpoint_every: int = Field(default=100, ge=1, description="Steps between checkpoints (and one at the end).")
    divergence_factor: float = Field(
        default=3.0, gt=1, description="A loss above factor × the best loss so far (or non-finite) ends the run."
    )
    threads: int = Field(default=1, ge=1, description="torch intra-op threads on CPU.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA if available.")
    compile: bool = Field(default=False, description="torch.compile the model (CUDA).")

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainingConfig:
        if self.batch_size % self.grad_accum:
            raise rule_violation("grad_accum", self.grad_accum, f"must divide batch_size ({self.batch_size})")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


# Fields that do not change the trained weights: excluded from the run key.
RESOURCE_FIELDS = {
    "training": {"threads", "device", "compile", "checkpoint_every"},
    "data": {"cache_dir"},
}


class RunSpec(ConfigModel):
    """One training run, fully resolved."""

    config_path: ClassVar[str] = "run"

    name: str | None = Field(default=None, description="Human label; the MLflow run name (default: the key).")
    model: ModelConfig = Field(description="Model: {preset: NAME, ...overrides} or every field.")
    training: TrainingConfig = Field(default=TrainingConfig(), description="Optimisation and resources.")
    data: DataConfig = Field(default=DataConfig(), description="Corpus or the user's data.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow store and experiment.")
    storage: str = Field(default="runs", description="Checkpoints go to <storage>/<run_key>/.")
    tags: dict[str, str] = Field(default_factory=dict, description="Grid coordinates and labels for tracking.")
    resources: Resources = Field(default=Resources(), description="Workers, devices and sharding (not in the key).")

    @model_validator(mode="before")
    @classmethod
    def _vocab_from_data(cls, values: Any) -> Any:
        """The model's vocabulary is the data's: set it, so a preset never disagrees with the tokenizer."""
        if not isinstance(values, dict) or "model" not in values:
            return values
        data = values.get("data", {})
        vocab = data.vocab_size if isinstance(data, DataConfig) else (data or {}).get("vocab_size")
        vocab = vocab or DataConfig.model_fields["vocab_size"].default
        model = values["model"]
        if isinstance(model, ModelConfig):
            model = model.model_dump()
        if isinstance(model, dict):
            values = {**values, "model": {**model, "vocab_size": vocab}}
        return values

    def canonical(self) -> dict[str, Any]:
        """The resolved config that defines the run's result (resources left out), JSON-ready."""
        resolved = self.model_dump(mode="json", include={"model", "training", "data"})
        for section, fields in RESOURCE_FIELDS.items():
            for name in fields:
                resolved[section].pop(name, None)
        return resolved

    @property
    def run_key(self) -> str:
        """sha256 of the canonical config, 16 hex digits: same result-defining config ⇔ same key."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def run_dir(self) -> Path:
        return Path(self.storage).expanduser() / self.run_key

    def total_steps(self) -> int:
        """Optimizer steps the budget buys (at least 1); compute budgets use the baseline FLOPs per token."""
        budget, training = self.training.budget, self.training
        if budget.steps is not None:
            return budget.steps
        tokens = budget.tokens if budget.tokens is not None else tokens_for_budget(
            self.model, budget.flops, training.seq_len
        )
        return max(1, tokens // training.tokens_per_step)

    def flops_per_step(self) -> float:
        """This variant's true architecture FLOPs per optimizer step (its own overhead included)."""
        return flops_per_token(self.model, self.training.seq_len).total * self.training.tokens_per_step
