"""One call from an MLflow experiment to every analysis result, as Polars frames written to parquet/JSON.

    results = analyze("sqlite:///mlruns.db", "quickstart", "dashboards/quickstart/data")
    results.headline   # per arm: loss gap at the largest budget, compute multiplier, overhead %, max Amax
    Results.read("dashboards/quickstart/data")     # the same object, back from disk (no MLflow needed)

`analyze` reads the store (analysis/runs.py), then `analyze_frames` runs the comparisons
(analysis/compare.py), the overhead (analysis/overhead.py) and the stability summaries (analysis/stability.py)
on the frames. The dashboards (dashboards/) draw only what is in `Results`: every number on a page is a number
in one of these frames. What could not be computed, and why, is in `Results.notes`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from analysis.compare import compute_multipliers, fit_laws, frontier, frontier_gaps, loss_gaps
from analysis.overhead import overhead
from analysis.runs import HISTORY_METRICS, load_amax_profiles, load_experiment, read_results, write_results
from analysis.stability import (
    GRAD_NORM_SPIKES,
    LOSS_SPIKES,
    SpikeRule,
    amax_evolution,
    amax_summary,
    stability_by_arm,
    stability_by_run,
)

__all__ = ["AnalysisConfig", "Results", "analyze", "analyze_frames"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisConfig:
    """Settings of one analysis."""

    baseline: str = "residual"
    """The arm every other arm is compared against."""
    confidence: float = 0.95
    """Two-sided level of every interval and band."""
    num_bootstrap: int = 1000
    """Resamples for the L(C) fits, their bands and the compute multiplier."""
    num_bootstrap_surface: int = 200
    """Resamples for the Chinchilla surface fits (0: point estimates only)."""
    seed: int = 0
    """Seed of every resampling."""
    chinchilla: bool = True
    """Also fit the Chinchilla surface L(N, D) per arm (a 4,500-start grid per arm, screened to 64)."""
    exclude_repeated: bool = False
    """Leave runs that repeated data (epochs > 1) out of comparisons and fits (they are always marked)."""
    extrapolate: float = 10.0
    """Scaling curves are drawn to this multiple of the largest fitted compute."""
    spike_rules: tuple[SpikeRule, ...] = (LOSS_SPIKES, GRAD_NORM_SPIKES)
    """What counts as a spike, per metric."""
    history_metrics: tuple[str, ...] = HISTORY_METRICS
    """Per-step metrics read from the store (loss curves, spikes, Amax evolution)."""

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"AnalysisConfig.confidence ({self.confidence}) must be in (0, 1)")
        if self.num_bootstrap < 2:
            raise ValueError(f"AnalysisConfig.num_bootstrap ({self.num_bootstrap}) must be >= 2")
        if self.extrapolate < 1:
            raise ValueError(f"AnalysisConfig.extrapolate ({self.extrapolate}) must be >= 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AnalysisConfig:
        """The inverse of how `write_results` stores a config (tuples come back from JSON lists)."""
        values = dict(values)
        values["spike_rules"] = tuple(SpikeRule(**rule) for rule in values.get("spike_rules", ()))
        values["history_metrics"] = tuple(values.get("history_metrics", HISTORY_METRICS))
        return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """Every result of one experiment's analysis (frames documented where they are computed)."""

    experiment: str
    tracking_uri: str
    created: str
    """When the analysis ran (ISO 8601, UTC)."""
    config: AnalysisConfig
    runs: pl.DataFrame
    """analysis/runs.py `load_experiment`: one row per run."""
    history: pl.DataFrame
    """Long per-step metrics (`config.history_metrics`)."""
    sizes: pl.DataFrame
    """size, params (activated non-embedding, median over runs), depth order: small to large."""
    gaps: pl.DataFrame
    """analysis/compare.py `loss_gaps`: per (arm, size, budget)."""
    frontier: pl.DataFrame
    """analysis/compare.py `frontier`: per (arm, budget)."""
    frontier_gaps: pl.DataFrame
    """analysis/compare.py `frontier_gaps`: per (arm, budget)."""
    law_params: pl.DataFrame
    law_quality: pl.DataFrame
    curves: pl.DataFrame
    """analysis/compare.py `LawFits`."""
    multipliers: pl.DataFrame
    """analysis/compare.py `compute_multipliers`."""
    overhead: pl.DataFrame
    """analysis/overhead.py `overhead`."""
    spikes: pl.DataFrame
    stability_runs: pl.DataFrame
    stability_arms: pl.DataFrame
    """analysis/stability.py."""
    amax_profiles: pl.DataFrame
    """analysis/runs.py `load_amax_profiles` (last evaluation of each run)."""
    amax_summary: pl.DataFrame
    amax_evolution: pl.DataFrame
    """analysis/stability.py."""
    headline: pl.DataFrame
    """One row per arm: the numbers a reader wants first (see `_headline`)."""
    trials: pl.DataFrame | None = None
    """A tuning study's trials (orchestrator/tune/results.py `trials_frame`), when the dashboard was given one."""
    notes: tuple[str, ...] = field(default=())
    """What could not be computed and why; what was flagged."""

    def write(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Frames to ``<name>.parquet``, the rest to ``results.json`` (analysis/runs.py `write_results`)."""
        return write_results(self, directory)

    @classmethod
    def read(cls, directory: str | os.PathLike) -> Results:
        """What `write` wrote."""
        items = read_results(directory)
        items["config"] = AnalysisConfig.from_dict(items["config"])
        items["notes"] = tuple(items.get("notes", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in items.items() if k in names})


def analyze(
    tracking_uri: str,
    experiment: str,
    out_dir: str | os.PathLike | None = None,
    *,
    config: AnalysisConfig | None = None,
    trials: pl.DataFrame | None = None,
) -> Results:
    """Read `experiment` from the store at `tracking_uri`, analyse it, and write the results to `out_dir`.

    Args:
        tracking_uri: any MLflow tracking URI.
        experiment: experiment name (or id).
        out_dir: where to write the parquet/JSON results; None writes nothing.
        config: analysis settings (defaults: `AnalysisConfig()`).
        trials: a tuning study's trials frame (`trials_frame`) to carry to the dashboard.
    """
    config = config or AnalysisConfig()
    logger.info("reading %s from %s", experiment, tracking_uri)
    runs, history = load_experiment(tracking_uri, experiment, config.history_metrics)
    profiles = load_amax_profiles(tracking_uri, experiment, runs=runs, steps="last")
    results = analyze_frames(
        runs,
        history,
        profiles,
        config=config,
        experiment=experiment,
        tracking_uri=tracking_uri,
        trials=trials,
    )
    if out_dir is not None:
        results.write(out_dir)
    return results


def analyze_frames(
    runs: pl.DataFrame,
    history: pl.DataFrame,
    amax_profiles: pl.DataFrame,
    *,
    config: AnalysisConfig | None = None,
    experiment: str = "",
    tracking_uri: str = "",
    trials: pl.DataFrame | None = None,
) -> Results:
    """Every analysis on frames already loaded (analysis/runs.py), no MLflow access."""
    config = config or AnalysisConfig()
    notes: list[str] = []
    common = {"exclude_repeated": config.exclude_repeated}
    _data_notes(runs, config, notes)
    gaps = loss_gaps(runs, baseline=config.baseline, confidence=config.confidence, **common)
    best = frontier(runs, **common)
    best_gaps = frontier_gaps(runs, baseline=config.baseline, confidence=config.confidence, **common)
    logger.info("fitting scaling laws (%d bootstrap resamples)", config.num_bootstrap)
    laws = fit_laws(
        runs,
        num_bootstrap=config.num_bootstrap,
        num_bootstrap_surface=config.num_bootstrap_surface,
        confidence=config.confidence,
        seed=config.seed,
        chinchilla=config.chinchilla,
        extrapolate=config.extrapolate,
        **common,
    )
    notes.extend(laws.notes)
    multipliers = compute_multipliers(
        runs, laws, baseline=config.baseline, confidence=config.confidence, seed=config.seed, **common
    )
    if multipliers.is_empty() and runs.get_column("arm").n_unique() > 1:
        notes.append(f"no compute multipliers: the baseline ({config.baseline}) has no L(C) fit")
    costs = overhead(runs, baseline=config.baseline, confidence=config.confidence)
    flagged = costs.filter(pl.col("reason").is_not_null(), pl.col("quantity") == "step_time")
    for row in flagged.iter_rows(named=True):
        notes.append(
            f"overhead of {row['arm']} at {row['size']} on {row['hardware']!r} "
            f"({row['tokens_per_step']:,.0f} tokens per step) not computed: {row['reason']}"
            + (" (hardware is never mixed)" if row["status"] == "no_baseline_on_this_hardware" else "")
        )
    per_run, events = stability_by_run(runs, history, rules=config.spike_rules)
    sizes = (
        runs.group_by("size")
        .agg(pl.col("params_activated_non_embedding").median().alias("params"))
        .sort("params", "size", nulls_last=True)
    )
    amax = amax_summary(amax_profiles, runs)
    parts = {
        "gaps": gaps,
        "frontier_gaps": best_gaps,
        "multipliers": multipliers,
        "overhead": costs,
        "amax_summary": amax,
        "stability_runs": per_run,
    }
    return Results(
        experiment=experiment,
        tracking_uri=tracking_uri,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        config=config,
        runs=runs,
        history=history,
        sizes=sizes,
        gaps=gaps,
        frontier=best,
        frontier_gaps=best_gaps,
        law_params=laws.params,
        law_quality=laws.quality,
        curves=laws.curves,
        multipliers=multipliers,
        overhead=costs,
        spikes=events,
        stability_runs=per_run,
        stability_arms=stability_by_arm(per_run),
        amax_profiles=amax_profiles,
        amax_summary=amax,
        amax_evolution=amax_evolution(history, runs),
        headline=_headline(runs, sizes, parts, config),
        trials=trials,
        notes=tuple(notes),
    )


def _data_notes(runs: pl.DataFrame, config: AnalysisConfig, notes: list[str]) -> None:
    if runs.is_empty():
        notes.append("the experiment has no runs")
        return
    if runs.filter(pl.col("arm") == config.baseline).is_empty():
        notes.append(
            f"no runs of the baseline arm {config.baseline!r}: no loss gaps, multipliers or overheads"
        )
    if (missing := runs.filter(pl.col("status") == "FINISHED", pl.col("budget").is_null()).height) > 0:
        notes.append(f"{missing} finished runs have no budget tag and are left out of comparisons and fits")
    if (repeated := runs.filter(pl.col("repeated_data")).height) > 0:
        action = "left out of" if config.exclude_repeated else "included in (marked)"
        notes.append(f"{repeated} runs repeated data (epochs > 1); {action} comparisons and fits")
    if (unfinished := runs.filter(pl.col("status").is_in(["RUNNING", "SCHEDULED"])).height) > 0:
        notes.append(f"{unfinished} runs are still running; only FINISHED runs enter comparisons")


def _headline(
    runs: pl.DataFrame, sizes: pl.DataFrame, parts: dict[str, pl.DataFrame], config: AnalysisConfig
) -> pl.DataFrame:
    """Per arm: loss gap and ratio at the largest budget the arm and the baseline share on their frontiers
    (with t-intervals over seeds), the compute multiplier there (bootstrap interval), step-time and memory
    overhead at the largest size on the reference hardware (the one with the most finished runs), and the
    largest
    composite Amax (fwd, bwd) at the runs' last evaluations."""
    finished = runs.filter(pl.col("status") == "FINISHED")
    reference = (
        finished.group_by("hardware")
        .len()
        .sort("len", "hardware", descending=[True, False])
        .get_column("hardware")
    )
    hardware = reference[0] if reference.len() else None
    size_rank = {s: i for i, s in enumerate(sizes.get_column("size").to_list())}
    rows = []
    for arm in sorted(runs.get_column("arm").unique().to_list()):
        row: dict[str, Any] = {
            "arm": arm,
            "is_baseline": arm == config.baseline,
            "runs": runs.filter(pl.col("arm") == arm).height,
        }
        gap = parts["frontier_gaps"].filter(pl.col("arm") == arm).sort("budget")
        if gap.height:
            last = gap.row(-1, named=True)
            row.update(
                {
                    k: last[k]
                    for k in (
                        "budget",
                        "size",
                        "baseline_size",
                        "num_seeds",
                        "gap",
                        "gap_lower",
                        "gap_upper",
                        "ratio",
                        "ratio_lower",
                        "ratio_upper",
                    )
                }
            )
            mult = parts["multipliers"].filter(pl.col("arm") == arm, pl.col("budget") == last["budget"])
            if mult.height:
                m = mult.row(0, named=True)
                row.update(
                    multiplier=m["multiplier"],
                    multiplier_lower=m["multiplier_lower"],
                    multiplier_upper=m["multiplier_upper"],
                    multiplier_extrapolated=m["extrapolated"],
                )
        for quantity in ("step_time", "peak_memory"):
            cost = parts["overhead"].filter(
                pl.col("arm") == arm,
                pl.col("quantity") == quantity,
                pl.col("hardware") == hardware,
                pl.col("change_pct").is_not_null(),
            )
            if cost.height:
                top = max(cost.iter_rows(named=True), key=lambda r: size_rank.get(r["size"], -1))
                row.update(
                    {
                        f"{quantity}_overhead_pct": top["change_pct"],
                        f"{quantity}_lower_pct": top["lower_pct"],
                        f"{quantity}_upper_pct": top["upper_pct"],
                        f"{quantity}_size": top["size"],
                        f"{quantity}_hardware": top["hardware"],
                    }
                )
        amax = parts["amax_summary"].filter(pl.col("arm") == arm)
        stab = parts["stability_runs"].filter(pl.col("arm") == arm)
        for direction in ("forward", "backward"):
            values = amax.filter(pl.col("quantity") == f"composite_{direction}").get_column("max")
            short = "fwd" if direction == "forward" else "bwd"
            fallback = stab.get_column(f"amax_{short}_composite_max")
            row[f"max_amax_{short}"] = values.max() if values.len() else fallback.max()
        rows.append(row)
    schema = {
        "arm": pl.String,
        "is_baseline": pl.Boolean,
        "runs": pl.Int64,
        "budget": pl.Float64,
        "size": pl.String,
        "baseline_size": pl.String,
        "num_seeds": pl.Int64,
        "gap": pl.Float64,
        "gap_lower": pl.Float64,
        "gap_upper": pl.Float64,
        "ratio": pl.Float64,
        "ratio_lower": pl.Float64,
        "ratio_upper": pl.Float64,
        "multiplier": pl.Float64,
        "multiplier_lower": pl.Float64,
        "multiplier_upper": pl.Float64,
        "multiplier_extrapolated": pl.Boolean,
        **{
            f"{q}_{k}": (pl.String if k in ("size", "hardware") else pl.Float64)
            for q in ("step_time", "peak_memory")
            for k in ("overhead_pct", "lower_pct", "upper_pct", "size", "hardware")
        },
        "max_amax_fwd": pl.Float64,
        "max_amax_bwd": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
