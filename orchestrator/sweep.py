"""Sweep specs: a YAML grid (sizes × budgets × residual variants × seeds × any field) expanded into RunSpecs.

    name: quickstart
    data: {source: pd-literary, vocab_size: 2048}
    base:                                   # shared by every grid point (RunSpec fields)
      model: {preset: nano}
      training: {batch_size: 8, seq_len: 64}
    grid:                                   # the product of these axes ...
      size: [p1, p4]                        #   model preset, or {preset: p1, ...overrides}
      budget: [3.0e12, 1.0e13]              #   training FLOPs (charged at the baseline count)
      residual: [{variant: residual}, {variant: mhc, n: 4}]
      seed: [0]
      training.lr: [1.0e-3, 3.0e-3]         #   any other axis is a dotted RunSpec field
    zip: [[budget, training.lr]]            # ... except zipped axes, which vary together
    exclude: [{size: p4, residual: {variant: hc}}]      # drop matching points
    include: [{size: p1, budget: 3.0e13, residual: {variant: mhc, n: 8}}]   # add points
    resources: {default: {cpus: 1}, p4: {cpus: 2}}      # per size: cpus, gpus, workers, sharding, ...
    max_concurrent: 2
    retry: {max_retries: 2}

Every grid point becomes a RunSpec whose ``run_key`` hashes its resolved config; two points with the same key
are an error (the grid would train one thing twice). Points are ordered by budget, smallest first, so scaling
curves appear early. Errors name the file, the line, the field path, the bad value and the rule; a sweep that
fails validation expands to nothing and submits nothing.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from models import flops_per_token
from models.config import ConfigModel, rule_violation
from models.errors import ConfigError
from orchestrator.data import DataConfig
from orchestrator.resources import Resources
from orchestrator.runspec import RunSpec
from orchestrator.tracking import TrackingConfig
from orchestrator.yamlio import ConfigFileError, line_of, load_yaml

__all__ = ["GridPoint", "Resources", "RetryPolicy", "SweepSpec", "expand", "load_sweep"]

# Named axes and the RunSpec field each sets; any other axis name is a dotted RunSpec path.
NAMED_AXES = {"size": "model", "budget": "training.budget", "residual": "model.residual", "seed": "training.seed"}


class RetryPolicy(ConfigModel):
    """Which failures are retried, and how often."""

    config_path: ClassVar[str] = "sweep.retry"

    max_retries: int = Field(default=2, ge=0, description="Retries of a run after an infrastructure failure.")
    retry_reasons: tuple[str, ...] = Field(
        default=("node_died", "killed", "oom", "crashed"),
        description="Failure reasons worth a retry; 'diverged' never is.",
    )

    @model_validator(mode="after")
    def _never_retry_divergence(self) -> RetryPolicy:
        if "diverged" in self.retry_reasons:
            raise rule_violation("retry_reasons", "diverged", "must not be retried: a diverged run diverges again")
        return self


class SweepSpec(ConfigModel):
    """A sweep file, validated."""

    config_path: ClassVar[str] = "sweep"

    name: str = Field(min_length=1, description="Sweep name; also the MLflow experiment unless one is given.")
    experiment: str | None = Field(default=None, description="MLflow experiment (default: the sweep name).")
    data: DataConfig = Field(default=DataConfig(), description="Data every run trains on.")
    tracking: dict[str, Any] = Field(default_factory=dict, description="Tracking store options (uri, ...).")
    storage: str = Field(default="runs", description="Checkpoint root; runs go to <storage>/<run_key>/.")
    base: dict[str, Any] = Field(default_factory=dict, description="RunSpec fields shared by every point.")
    grid: dict[str, list[Any]] = Field(description="Axes: size, budget, residual, seed, or dotted fields.")
    zip: list[list[str]] = Field(default_factory=list, description="Groups of axes that vary together.")
    include: list[dict[str, Any]] = Field(default_factory=list, description="Extra points (axis → value).")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="Points to drop (partial matches).")
    resources: dict[str, Resources] = Field(default_factory=dict, description="Per size, and 'default'.")
    max_concurrent: int | None = Field(default=None, ge=1, description="Runs in flight at once (default: all).")
    retry: RetryPolicy = Field(default=RetryPolicy(), description="Retry policy for infrastructure failures.")

    @model_validator(mode="after")
    def _axes_are_consistent(self) -> SweepSpec:
        for axis, values in self.grid.items():
            if not values:
                raise rule_violation(f"grid.{axis}", "[]", "must list at least one value")
        zipped: set[str] = set()
        for index, group in enumerate(self.zip):
            for axis in group:
                if axis not in self.grid:
                    raise rule_violation(f"zip.{index}", axis, f"must name a grid axis ({', '.join(self.grid)})")
                if axis in zipped:
                    raise rule_violation(f"zip.{index}", axis, "appears in more than one zip group")
                zipped.add(axis)
            lengths = {len(self.grid[axis]) for axis in group}
            if len(lengths) > 1:
                raise rule_violation(f"zip.{index}", group, "must zip axes of equal length")
        for kind, points in (("include", self.include), ("exclude", self.exclude)):
            for index, point in enumerate(points):
                unknown = [axis for axis in point if axis not in self.grid]
                if unknown:
                    raise rule_violation(f"{kind}.{index}", unknown[0], f"is not a grid axis ({', '.join(self.grid)})")
        return self

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def resources_for(self, size: str) -> Resources:
        return self.resources.get(size) or self.resources.get("default") or Resources()


@dataclass(frozen=True, slots=True)
class GridPoint:
    """One expanded grid point: its coordinates, its RunSpec and the resources it runs with."""

    coordinates: dict[str, Any]
    spec: RunSpec

    @property
    def resources(self) -> Resources:
        return self.spec.resources

    @property
    def size(self) -> str:
        return self.spec.model.name

    @property
    def budget_flops(self) -> float:
        """The compute budget this point trains for: the nominal one, or what its tokens cost at the baseline."""
        budget, training = self.spec.training.budget, self.spec.training
        if budget.flops is not None:
            return budget.flops
        baseline = self.spec.model.with_residual(variant="residual", n=1)
        return self.spec.total_steps() * training.tokens_per_step * flops_per_token(baseline, training.seq_len).total


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``target[a][b][c] = value`` for "a.b.c", deep-merging dict values into what is there."""
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        node[leaf] = {**node[leaf], **value}
    else:
        node[leaf] = value


def _axis_value(axis: str, value: Any) -> tuple[str, Any]:
    """The RunSpec field an axis value sets, and the value in that field's shape."""
    if axis == "size":
        return "model", value if isinstance(value, dict) else {"preset": value}
    if axis == "budget":
        return "training.budget", {"flops": value}
    return NAMED_AXES.get(axis, axis), value


def _matches(point: dict[str, Any], pattern: dict[str, Any]) -> bool:
    """Whether every axis in ``pattern`` has that value in ``point`` (dict values match as subsets)."""
    for axis, wanted in pattern.items():
        have = point.get(axis)
        if isinstance(wanted, dict) and isinstance(have, dict):
            if any(have.get(key) != value for key, value in wanted.items()):
                return False
        elif have != wanted:
            return False
    return True


def _points(sweep: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """(origin, coordinates) for every point: the product (with zips) minus excludes, plus includes."""
    zipped = {axis for group in sweep.zip for axis in group}
    factors: list[list[dict[str, Any]]] = [
        [dict(zip(group, values, strict=True)) for values in zip(*(sweep.grid[a] for a in group), strict=True)]
        for group in sweep.zip
    ]
    factors += [[{axis: value} for value in values] for axis, values in sweep.grid.items() if axis not in zipped]
    points = []
    for combination in itertools.product(*factors):
        point = {axis: value for part in combination for axis, value in part.items()}
        if not any(_matches(point, pattern) for pattern in sweep.exclude):
            points.append(("grid", point))
    defaults = {axis: values[0] for axis, values in sweep.grid.items()}
    points += [(f"include.{index}", {**defaults, **point}) for index, point in enumerate(sweep.include)]
    return points


def expand(sweep: SweepSpec) -> list[GridPoint]:
    """Every grid point as a RunSpec, smallest budget first; raises ConfigError naming the offending point."""
    grid_points: list[GridPoint] = []
    seen: dict[str, dict[str, Any]] = {}
    problems: list[tuple[tuple[str, ...], str]] = []
    tracking = TrackingConfig(**{**sweep.tracking, "experiment": sweep.experiment_name})
    for origin, coordinates in _points(sweep):
        data: dict[str, Any] = {"tracking": tracking, "data": sweep.data, "storage": sweep.storage}
        for key, value in copy.deepcopy(sweep.base).items():  # grid values are merged into these dicts
            _set_path(data, key, value)
        for axis, value in coordinates.items():
            field, shaped = _axis_value(axis, value)
            _set_path(data, field, shaped)
        data["tags"] = {**data.get("tags", {}), "sweep": sweep.name, **{a: _label(v) for a, v in coordinates.items()}}
        label = ", ".join(f"{a}={_label(v)}" for a, v in coordinates.items())
        try:
            spec = RunSpec(**data)
        except ConfigError as error:
            for loc, detail in error.problems:
                problems.append(((origin, *loc[1:]), f"{detail} [grid point {label}]"))
            continue
        if _budget_tokens(spec) < spec.training.tokens_per_step:
            problems.append(
                ((origin, "training", "budget"), f"({coordinates.get('budget')}) buys less than one optimizer step "
                 f"({spec.training.tokens_per_step} tokens) [grid point {label}]")
            )
            continue
        if spec.run_key in seen:
            problems.append(((origin,), f"duplicates the grid point {seen[spec.run_key]} (same run_key)"))
            continue
        seen[spec.run_key] = label
        size = coordinates.get("size")
        size_name = size if isinstance(size, str) else spec.model.name
        spec = spec.model_copy(update={"resources": sweep.resources_for(size_name)})
        grid_points.append(GridPoint(coordinates, spec))
    if problems:
        raise ConfigError.from_problems([(("sweep", *loc), detail) for loc, detail in problems])
    return sorted(grid_points, key=lambda p: (p.budget_flops, p.spec.model.name, p.spec.run_key))


def _budget_tokens(spec: RunSpec) -> int:
    """Tokens the budget buys before rounding to whole steps."""
    budget = spec.training.budget
    if budget.steps is not None:
        return budget.steps * spec.training.tokens_per_step
    if budget.tokens is not None:
        return budget.tokens
    from models import tokens_for_budget

    return tokens_for_budget(spec.model, budget.flops, spec.training.seq_len)


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def load_sweep(path: Path) -> tuple[SweepSpec, list[GridPoint]]:
    """Parse, validate and expand a sweep file; every error names ``file:line`` and the field path."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigFileError(f"{path}:1: the top level must be a mapping of sweep fields")
    try:
        sweep = SweepSpec(**raw)
        return sweep, expand(sweep)
    except ConfigError as error:
        lines = []
        for loc, detail in error.problems:
            relative = _yaml_location(raw, loc[1:])
            line = line_of(raw, relative)
            lines.append(f"{path}:{line if line is not None else 1}: {'.'.join(loc)} {detail}")
        raise ConfigFileError("\n".join(lines), error.problems) from None


def _yaml_location(raw: dict[str, Any], loc: tuple[str, ...]) -> tuple[str, ...]:
    """Where in the file a problem points. A grid point's problem ``(origin, *field)`` points at the base entry
    that sets the field, else at the grid axis (or include entry) that sets it or a parent of it."""
    if not loc or not (loc[0] == "grid" or loc[0].startswith("include.")):
        return loc
    origin = tuple(loc[0].split("."))
    field = loc[1:]
    if field and _has_path(raw.get("base", {}), field):
        return ("base", *field)
    dotted = ".".join(field)
    setters = [
        axis
        for axis in raw.get("grid", {})
        if dotted == axis or dotted == NAMED_AXES.get(axis, axis) or dotted.startswith(NAMED_AXES.get(axis, axis) + ".")
    ]
    if setters:  # the most specific axis: `residual` (model.residual) before `size` (model)
        axis = max(setters, key=lambda name: len(NAMED_AXES.get(name, name)))
        return (*origin, axis) if origin[0] == "include" else ("grid", axis)
    if field and field[0] in raw.get("base", {}):
        return ("base", *field)
    return origin


def _has_path(node: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
