"""Tuning specs: a YAML file naming a base RunSpec, a search space over mHC knobs, objectives and a budget.

    name: sinkhorn-tuning
    data: {source: pd-literary, vocab_size: 2048}
    base:                                     # RunSpec fields shared by every trial
      model: {preset: nano, residual: {variant: mhc, n: 4}}
      training: {budget: {steps: 60}, batch_size: 8, seq_len: 64, eval_every: 20}
    search:                                   # the knobs Optuna chooses (at least one)
      sinkhorn_iters: {low: 0, high: 30}      #   int range (step, log optional)
      alpha_init: {low: 1.0e-3, high: 1.0e-1, log: true}
      convention: [paper, deepseek-v4]        #   categorical
      n: {low: 2, high: 4}
      lr: {low: 1.0e-3, high: 1.0e-2, log: true}
    objectives: [val_loss, step_time_overhead, ds_error]   # default; each minimised (NSGA-II)
    # weights: {val_loss: 1.0, step_time_overhead: 0.5}    # instead: one weighted-sum objective (TPE)
    pruner: {kind: median}                    # single objective only
    budget: {n_trials: 12, parallelism: 2, timeout_s: 900}
    study: {storage: "sqlite:///optuna.db"}   # default: optuna.db beside the MLflow SQLite file

Metrics (all minimised): ``val_loss`` the final validation loss; ``step_time_overhead`` the median training
step time over the baseline's minus 1 (the baseline is the same base run with the plain ``residual`` variant,
trained once per study through the ledger); ``ds_error`` the largest doubly-stochastic error of H_res at the
final evaluation (``eval/ds_error_max``). Every trial records all the metrics it can, whatever the objectives.

Validation happens when the spec is built, like sweeps: every problem names the dotted field, the value and
the rule, and `load_tuning` adds ``file:line``. Beyond field types and ranges it builds the base RunSpec
and the RunSpecs at the corners of the search space (all lows, all highs, every convention), so a range that
reaches an invalid model (``n: {high: 9}``) fails before any study or trial exists.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from models import tokens_for_budget
from models.config import ConfigModel, rule_violation
from models.errors import ConfigError
from orchestrator.data import DataConfig
from orchestrator.runspec import RunSpec
from orchestrator.tracking import TrackingConfig
from orchestrator.yamlio import ConfigFileError, line_of, load_yaml

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "KNOBS",
    "METRICS",
    "BudgetConfig",
    "FloatRange",
    "HeartbeatConfig",
    "IntRange",
    "PrunerConfig",
    "SamplerConfig",
    "SearchSpace",
    "StudyConfig",
    "TrialResources",
    "TuningSpec",
    "load_tuning",
]

# Search knobs and the RunSpec field each sets (an experiment is data: add a knob here, nowhere else).
KNOBS: dict[str, str] = {
    "sinkhorn_iters": "model.residual.sinkhorn_iters",
    "alpha_init": "model.residual.alpha_init",
    "convention": "model.residual.convention",
    "n": "model.residual.n",
    "lr": "training.lr",
}
Metric = Literal["val_loss", "step_time_overhead", "ds_error"]
METRICS: tuple[str, ...] = ("val_loss", "step_time_overhead", "ds_error")
Convention = Literal["paper", "deepseek-v4"]

OPTUNA_DB_NAME = "optuna.db"
_SQLITE_PREFIX = "sqlite:///"


class IntRange(ConfigModel):
    """An integer knob: every value from low to high (inclusive) in steps of ``step``."""

    config_path: ClassVar[str] = "tune.search.range"

    low: int = Field(description="Smallest value (inclusive).")
    high: int = Field(description="Largest value (inclusive).")
    step: int = Field(default=1, ge=1, description="Spacing of the values.")
    log: bool = Field(default=False, description="Sample on a log scale (needs low >= 1 and step 1).")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise rule_violation("low", self.low, f"must be <= high ({self.high})")
        if (self.high - self.low) % self.step:
            raise rule_violation(
                "high", self.high, f"must be low ({self.low}) plus a multiple of step ({self.step})"
            )
        if self.log and self.low < 1:
            raise rule_violation("low", self.low, "must be >= 1 on a log scale")
        if self.log and self.step != 1:
            raise rule_violation("step", self.step, "must be 1 on a log scale (Optuna's rule)")
        return self

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and ((value - self.low) % self.step == 0)
        )


class FloatRange(ConfigModel):
    """A real knob: any value from low to high, uniform or on a log scale."""

    config_path: ClassVar[str] = "tune.search.range"

    low: float = Field(description="Smallest value (inclusive).")
    high: float = Field(description="Largest value (inclusive).")
    log: bool = Field(default=False, description="Sample on a log scale (needs low > 0).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise rule_violation("low", self.low, f"must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise rule_violation("low", self.low, "must be > 0 on a log scale")
        return self

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high
        )


class SearchSpace(ConfigModel):
    """The knobs Optuna chooses; each absent knob keeps the base run's value."""

    config_path: ClassVar[str] = "tune.search"

    sinkhorn_iters: IntRange | None = Field(default=None, description="Sinkhorn-Knopp iterations of mHC.")
    alpha_init: FloatRange | None = Field(default=None, description="Initial gating factor α (paper: 0.01).")
    convention: list[Convention] | None = Field(
        default=None, min_length=1, description="Sinkhorn conventions to choose from: paper, deepseek-v4."
    )
    n: IntRange | None = Field(default=None, description="Expansion rate (number of residual streams).")
    lr: FloatRange | None = Field(default=None, description="Peak learning rate (training.lr); log advised.")

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchSpace:
        if not self.knobs():
            raise rule_violation("|".join(KNOBS), "none", "at least one knob must be searched")
        if self.convention is not None and len(set(self.convention)) != len(self.convention):
            raise rule_violation("convention", self.convention, "must not repeat a choice")
        return self

    def knobs(self) -> list[str]:
        """The searched knobs, in `KNOBS` order (also Optuna's parameter names)."""
        return [name for name in KNOBS if getattr(self, name) is not None]

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the searched knobs."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        result: dict[str, BaseDistribution] = {}
        for name in self.knobs():
            domain = getattr(self, name)
            if isinstance(domain, IntRange):
                result[name] = IntDistribution(domain.low, domain.high, step=domain.step, log=domain.log)
            elif isinstance(domain, FloatRange):
                result[name] = FloatDistribution(domain.low, domain.high, log=domain.log)
            else:
                result[name] = CategoricalDistribution(list(domain))
        return result

    def contains(self, name: str, value: Any) -> bool:
        domain = getattr(self, name)
        return value in domain if isinstance(domain, list) else domain.contains(value)

    def corners(self) -> dict[str, dict[str, Any]]:
        """Points that bound the space, by label: every range at its low end, at its high end, each choice."""
        lows = {name: getattr(self, name).low for name in self.knobs() if name != "convention"}
        highs = {name: getattr(self, name).high for name in self.knobs() if name != "convention"}
        if self.convention is None:
            return {"low": lows, "high": highs}
        points = {}
        for choice in self.convention:
            points[f"low,{choice}"] = {**lows, "convention": choice}
            points[f"high,{choice}"] = {**highs, "convention": choice}
        return points


class StudyConfig(ConfigModel):
    """Where the Optuna study lives."""

    config_path: ClassVar[str] = "tune.study"

    name: str | None = Field(default=None, min_length=1, description="Study name (default: the spec's name).")
    storage: str | None = Field(
        default=None,
        description="RDB storage URL (sqlite:///file.db, postgresql://..., mysql://...); default optuna.db "
        "beside the MLflow SQLite file (or in the working directory for a tracking server).",
    )

    @model_validator(mode="after")
    def _rdb_url(self) -> StudyConfig:
        url = self.storage
        if url is None:
            return self
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if not scheme or not scheme.replace("+", "").replace("_", "").isalnum():
            raise rule_violation(
                "storage",
                url,
                "must be an RDB URL such as sqlite:///optuna.db or postgresql://host/db "
                "(not a journal file: it has no heartbeats, so a dead worker's trial would never fail)",
            )
        if url in ("sqlite://", "sqlite:///:memory:") or url.startswith("sqlite:///:memory:"):
            raise rule_violation(
                "storage", url, "must name a file: an in-memory database is not shared with workers"
            )
        return self


class TrialResources(ConfigModel):
    """What one trial's Ray task gets."""

    config_path: ClassVar[str] = "tune.resources"

    cpus: float = Field(default=1, gt=0, description="CPUs per trial (also the torch thread count, rounded).")
    gpus: int = Field(default=0, ge=0, description="GPUs per trial (whole GPUs only).")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


class SamplerConfig(ConfigModel):
    """How Optuna proposes trials; seeded so a study is reproducible and a resumed one re-seeds alike."""

    config_path: ClassVar[str] = "tune.sampler"

    kind: Literal["auto", "nsga2", "tpe", "random"] = Field(
        default="auto", description="auto: NSGA-II for several objectives, TPE for one."
    )
    seed: int = Field(default=0, ge=0, description="Base seed; a resumed study uses seed + trials so far.")
    population_size: int | None = Field(
        default=None, ge=2, description="NSGA-II generation size (default: n_trials / 4, between 4 and 50)."
    )
    n_startup_trials: int | None = Field(
        default=None,
        ge=0,
        description="TPE: random trials before modelling (default: min(10, n_trials / 3)).",
    )


class PrunerConfig(ConfigModel):
    """Early stopping of hopeless trials from their intermediate validation losses (single objective only)."""

    config_path: ClassVar[str] = "tune.pruner"

    kind: Literal["none", "median", "successive_halving"] = Field(
        description="none | median | successive_halving."
    )
    n_startup_trials: int = Field(
        default=2, ge=0, description="median: finished trials before pruning starts."
    )
    n_warmup_steps: int = Field(
        default=0, ge=0, description="median: training steps before a trial can be pruned."
    )
    min_resource: int | None = Field(
        default=None,
        ge=1,
        description="successive_halving: steps of the first rung (default: Optuna's auto).",
    )
    reduction_factor: int = Field(default=3, ge=2, description="successive_halving: η, rung-to-rung factor.")


class BudgetConfig(ConfigModel):
    """How many trials, how many at once, and for how long."""

    config_path: ClassVar[str] = "tune.budget"

    n_trials: int = Field(
        ge=1, description="Trials the study finishes (complete, pruned or failed for good)."
    )
    parallelism: int = Field(
        default=1, ge=1, description="Trials running at once (the baseline takes a slot)."
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Launch no trial after this many seconds of one invocation; running "
        "ones finish. Run the command again to continue.",
    )


class HeartbeatConfig(ConfigModel):
    """Optuna RDB heartbeats: how a trial whose process died is noticed, failed and retried."""

    config_path: ClassVar[str] = "tune.heartbeat"

    interval_s: int = Field(default=10, ge=1, description="Seconds between a running trial's heartbeats.")
    grace_s: int = Field(
        default=30, ge=1, description="A trial silent this long is marked FAIL (then retried)."
    )
    max_retry: int = Field(
        default=2, ge=0, description="Retries of the same parameters after such a failure."
    )

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> HeartbeatConfig:
        if self.grace_s <= self.interval_s:
            raise rule_violation("grace_s", self.grace_s, f"must be > interval_s ({self.interval_s})")
        return self


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """``target[a][b][c] = value`` for "a.b.c", creating the parents."""
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        child = node.get(part)
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def _label(params: dict[str, Any]) -> str:
    return ",".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )


class TuningSpec(ConfigModel):
    """A tuning file, validated (see the module doc)."""

    config_path: ClassVar[str] = "tune"

    name: str = Field(
        min_length=1, description="Tuning name; the study and the MLflow experiment by default."
    )
    experiment: str | None = Field(default=None, description="MLflow experiment (default: the name).")
    data: DataConfig = Field(default=DataConfig(), description="Data every trial trains on.")
    tracking: dict[str, Any] = Field(default_factory=dict, description="Tracking store options (uri, ...).")
    storage: str = Field(default="runs", description="Checkpoint root; runs go to <storage>/<run_key>/.")
    base: dict[str, Any] = Field(description="RunSpec fields of every trial (model, training, ...).")
    resources: TrialResources = Field(default=TrialResources(), description="Per-trial CPUs and GPUs.")
    study: StudyConfig = Field(default=StudyConfig(), description="Study name and storage URL.")
    search: SearchSpace = Field(description="The knobs and their ranges.")
    objectives: list[Metric] | None = Field(
        default=None,
        min_length=1,
        description="Metrics to minimise (default: all three; NSGA-II if several).",
    )
    weights: dict[Metric, float] | None = Field(
        default=None,
        min_length=1,
        description="Instead of objectives: minimise Σ weight × metric (one objective).",
    )
    sampler: SamplerConfig = Field(default=SamplerConfig(), description="Sampler kind and seed.")
    pruner: PrunerConfig | None = Field(
        default=None,
        description="Default: median for one objective, none for several (Optuna cannot prune those).",
    )
    budget: BudgetConfig = Field(description="n_trials, parallelism, timeout_s.")
    heartbeat: HeartbeatConfig = Field(
        default=HeartbeatConfig(), description="Dead-worker detection and retries."
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="Parameter sets to try first (e.g. the paper's 20 iterations)."
    )

    _tracking: TrackingConfig = PrivateAttr()
    _base_spec: RunSpec = PrivateAttr()

    @model_validator(mode="after")
    def _rules(self) -> TuningSpec:
        if self.objectives is not None and self.weights is not None:
            raise rule_violation(
                "weights", sorted(self.weights), "cannot be combined with objectives: give one"
            )
        if self.objectives is not None and len(set(self.objectives)) != len(self.objectives):
            raise rule_violation("objectives", self.objectives, "must not repeat a metric")
        if self.weights is not None:
            if any(weight < 0 for weight in self.weights.values()):
                raise rule_violation(
                    "weights", dict(self.weights), "must be >= 0 (every metric is minimised)"
                )
            if not any(self.weights.values()):
                raise rule_violation("weights", dict(self.weights), "must have at least one positive weight")
        multi = len(self.directions) > 1
        if multi and self.pruner is not None and self.pruner.kind != "none":
            raise rule_violation(
                "pruner.kind",
                self.pruner.kind,
                f"needs a single objective; these are {len(self.directions)} "
                "(Optuna prunes on one reported value: give one objective or weights, "
                "or pruner: {kind: none})",
            )
        if self.sampler.population_size is not None and self.sampler_kind != "nsga2":
            raise rule_violation(
                "sampler.population_size",
                self.sampler.population_size,
                f"applies to nsga2 only (the sampler is {self.sampler_kind})",
            )
        if self.sampler.n_startup_trials is not None and self.sampler_kind != "tpe":
            raise rule_violation(
                "sampler.n_startup_trials",
                self.sampler.n_startup_trials,
                f"applies to tpe only (the sampler is {self.sampler_kind})",
            )
        if len(self.enqueue) > self.budget.n_trials:
            raise rule_violation(
                "enqueue",
                f"{len(self.enqueue)} entries",
                f"must not exceed budget.n_trials ({self.budget.n_trials})",
            )
        for index, params in enumerate(self.enqueue):
            for name, value in params.items():
                if name not in self.search.knobs():
                    raise rule_violation(
                        f"enqueue.{index}", name, f"is not a searched knob ({', '.join(self.search.knobs())})"
                    )
                if not self.search.contains(name, value):
                    raise rule_violation(f"enqueue.{index}.{name}", value, "is outside search." + name)
        return self

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        problems = self._resolve()
        if problems:
            raise ConfigError.from_problems(problems)

    # ------------------------------------------------------------------ resolution (runs once, at build time)
    def _resolve(self) -> list[tuple[tuple[str, ...], str]]:
        """Build the tracking config, the base RunSpec and the corner RunSpecs; collect every broken rule."""
        try:
            self._tracking = TrackingConfig(**{**self.tracking, "experiment": self.experiment or self.name})
        except ConfigError as error:
            return [(("tune", *loc[1:]), detail) for loc, detail in error.problems]
        try:
            self._base_spec = self._build({})
        except ConfigError as error:
            return [self._rooted(loc, detail) for loc, detail in error.problems]
        base = self._base_spec
        problems: list[tuple[tuple[str, ...], str]] = []
        residual = base.model.residual
        if residual.variant == "residual":
            problems.append(
                (
                    ("tune", "base", "model", "residual", "variant"),
                    "(residual) must be hc, mhc or mhc-lite: tuning measures a variant against the "
                    "plain residual baseline",
                )
            )
        for knob in ("sinkhorn_iters", "convention"):
            if getattr(self.search, knob) is not None and residual.variant != "mhc":
                problems.append(
                    (
                        ("tune", "search", knob),
                        f"needs base.model.residual.variant mhc (it is {residual.variant}): "
                        "only mHC runs Sinkhorn-Knopp",
                    )
                )
        conventions = self.search.convention or [residual.convention]
        iters = self.search.sinkhorn_iters
        if "deepseek-v4" in conventions and iters is not None and iters.low < 1:
            problems.append(
                (
                    ("tune", "search", "sinkhorn_iters", "low"),
                    f"({iters.low}) must be >= 1 when the convention can be deepseek-v4 (its first row "
                    "normalisation always runs: 0 and 1 are the same run)",
                )
            )
        budget = base.training.budget
        if budget.steps is None:
            tokens = (
                budget.tokens
                if budget.tokens is not None
                else tokens_for_budget(base.model, budget.flops, base.training.seq_len)
            )
            if tokens < base.training.tokens_per_step:
                problems.append(
                    (
                        ("tune", "base", "training", "budget"),
                        f"({budget.flops or budget.tokens}) buys less than one optimizer step "
                        f"({base.training.tokens_per_step} tokens)",
                    )
                )
        if self.pruner_kind != "none" and base.training.eval_every >= base.total_steps():
            problems.append(
                (
                    ("tune", "base", "training", "eval_every"),
                    f"({base.training.eval_every}) must be < the steps per trial ({base.total_steps()}): "
                    f"the {self.pruner_kind} pruner needs intermediate evaluations",
                )
            )
        if problems:
            return problems
        for label, params in self.search.corners().items():
            try:
                self._build(params)
            except ConfigError as error:
                for loc, detail in error.problems:
                    knob = next((k for k, path in KNOBS.items() if ".".join(loc[1:]) == path), None)
                    where = ("tune", "search", knob, label.split(",")[0]) if knob else ("tune", "search")
                    problems.append(
                        (where, f"reaches an invalid run at {_label(params)}: {'.'.join(loc[1:])} {detail}")
                    )
        return problems

    @staticmethod
    def _rooted(loc: tuple[str, ...], detail: str) -> tuple[tuple[str, ...], str]:
        """A RunSpec problem, rooted where the tuning file sets that field."""
        if len(loc) > 1 and loc[1] in ("tracking", "data", "storage"):
            return ("tune", *loc[1:]), detail
        return ("tune", "base", *loc[1:]), detail

    def _build(
        self, params: dict[str, Any], *, baseline: bool = False, tags: dict[str, str] | None = None
    ) -> RunSpec:
        data: dict[str, Any] = {
            "tracking": self._tracking,
            "data": self.data,
            "storage": self.storage,
            **copy.deepcopy(self.base),
        }
        for name, value in params.items():
            _set_path(data, KNOBS[name], value)
        if baseline:
            model = data.get("model")
            data["model"] = (
                {**model, "residual": {"variant": "residual"}} if isinstance(model, dict) else model
            )
        _set_path(data, "training.threads", self.resources.threads)
        data["tags"] = {**data.get("tags", {}), **(tags or {})}
        return RunSpec(**data)

    # ------------------------------------------------------------------ what the runner needs
    @property
    def tracking_config(self) -> TrackingConfig:
        return self._tracking

    @property
    def base_spec(self) -> RunSpec:
        """The base run (no knob applied)."""
        return self._base_spec

    @property
    def study_name(self) -> str:
        return self.study.name or self.name

    @property
    def storage_url(self) -> str:
        """The RDB URL; relative SQLite paths made absolute (workers may start in another directory)."""
        url = self.study.storage
        if url is None:
            db = self._tracking.db_path
            folder = db.parent if db is not None else Path.cwd()
            return f"{_SQLITE_PREFIX}{(folder / OPTUNA_DB_NAME).absolute()}"
        if url.startswith(_SQLITE_PREFIX):
            path, sep, query = url[len(_SQLITE_PREFIX) :].partition("?")
            return f"{_SQLITE_PREFIX}{Path(path).expanduser().absolute()}{sep}{query}"
        return url

    @property
    def metrics(self) -> list[str]:
        """The metrics that enter the objective(s)."""
        if self.weights is not None:
            return [name for name in METRICS if name in self.weights]
        return list(self.objectives or METRICS)

    @property
    def directions(self) -> list[str]:
        return ["minimize"] * (1 if self.weights is not None else len(self.metrics))

    @property
    def multi_objective(self) -> bool:
        return len(self.directions) > 1

    @property
    def needs_baseline(self) -> bool:
        return "step_time_overhead" in self.metrics

    @property
    def sampler_kind(self) -> str:
        if self.sampler.kind != "auto":
            return self.sampler.kind
        return "nsga2" if len(self.directions) > 1 else "tpe"

    @property
    def pruner_kind(self) -> str:
        if self.pruner is not None:
            return self.pruner.kind
        return "none" if len(self.directions) > 1 else "median"

    def objective_values(self, metrics: dict[str, float]) -> list[float]:
        """What Optuna is told: one value per objective, or the weighted sum."""
        if self.weights is not None:
            return [sum(weight * metrics[name] for name, weight in self.weights.items())]
        return [metrics[name] for name in self.metrics]

    def trial_spec(self, params: dict[str, Any], number: int) -> RunSpec:
        """The RunSpec of a trial. Its name derives from the params (not the trial number), so a retried trial
        reopens the same MLflow run without a param conflict; the trial number is a tag."""
        return self._build(params, tags={"study": self.study_name, "optuna_trial": str(number)}).model_copy(
            update={"name": f"{self.study_name}:{_label(params)}"}
        )

    def baseline_spec(self) -> RunSpec:
        """The base run with the plain residual (every other residual option at its default), so its run_key
        is the one a sweep's residual point of the same size and training has: the ledger shares it."""
        return self._build({}, baseline=True, tags={"study": self.study_name, "optuna_baseline": "true"})

    def fingerprint(self) -> dict[str, Any]:
        """What a study may not change between invocations (the search, the objectives, the base run)."""
        blob = {
            "search": self.search.model_dump(mode="json", exclude_none=True),
            "metrics": self.metrics,
            "weights": self.weights,
            "base_run_key": self._base_spec.run_key,
        }
        digest = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
        return {**blob, "digest": digest}


def load_tuning(path: Path) -> TuningSpec:
    """Parse and validate a tuning file; every error names ``file:line`` and the field path."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}:1: the top level must be a mapping of tuning fields")
    try:
        return TuningSpec(**raw)
    except ConfigError as error:
        lines = []
        for loc, detail in error.problems:
            line = line_of(raw, loc[1:])
            lines.append(f"{path}:{line if line is not None else 1}: {'.'.join(loc)} {detail}")
        raise ConfigFileError("\n".join(lines), error.problems) from None
