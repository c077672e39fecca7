"""Training stability: loss and gradient-norm spikes, divergences and failures, Amax profiles over depth.

**Spike.** At a logged step t of a run, value_t > factor × the median of the run's previous `window` logged
values, once at least `min_history` of them exist (the reference excludes step t, so a spike does not raise
its own bar; the median ignores the earlier spikes in the window). Consecutive spiking steps are one *event*
(start, end, peak, peak ratio). Defaults, `LOSS_SPIKES` and `GRAD_NORM_SPIKES`:
- train/loss: factor 1.2 over a 50-step window, chosen to sit well above batch-to-batch noise (a few percent
  for batches of thousands of tokens) on a curve that otherwise only falls.
- train/grad_norm: factor 4 over a 50-step window. Gradient norms (logged before clipping) are heavy-tailed:
  2× swings between batches are common, a 4× jump is not.

Both are choices, not standards: pass your own `SpikeRule`s (analysis/report.py `AnalysisConfig`). A
non-finite value is not a spike: it is a divergence.

**Divergence.** A run that failed with ``failure_reason=diverged`` (the trainer's rule: a non-finite loss, or
one above ``divergence_factor`` × the best so far), or whose loss history holds a non-finite value.

**Amax profiles.** From the ``diagnostics/step_*.json`` artifacts (analysis/runs.py `load_amax_profiles`): the
per-layer and composite forward/backward gains per run at its last evaluation, averaged per (arm, size,
layer); their evolution over training from the ``eval/amax_*_composite_max`` metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

__all__ = [
    "GRAD_NORM_SPIKES",
    "LOSS_SPIKES",
    "SpikeRule",
    "amax_evolution",
    "amax_summary",
    "find_spikes",
    "stability_by_arm",
    "stability_by_run",
]

FAILURE_REASONS = ("diverged", "crashed", "killed", "oom", "node_died")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpikeRule:
    """When a logged value counts as a spike (module doc)."""

    metric: str
    """The history metric, e.g. "train/loss"."""
    factor: float
    """A spike exceeds this multiple of the rolling median."""
    window: int = 50
    """Previous logged values the rolling median is taken over."""
    min_history: int = 10
    """No spike is called before this many previous values exist."""

    def __post_init__(self) -> None:
        if not self.factor > 1:
            raise ValueError(f"SpikeRule.factor ({self.factor}) must be > 1")
        if not 1 <= self.min_history <= self.window:
            raise ValueError(
                f"SpikeRule.min_history ({self.min_history}) must be in [1, window={self.window}]"
            )


LOSS_SPIKES = SpikeRule(metric="train/loss", factor=1.2)
GRAD_NORM_SPIKES = SpikeRule(metric="train/grad_norm", factor=4.0)

_EVENTS_SCHEMA = {
    "run_key": pl.String,
    "metric": pl.String,
    "start_step": pl.Int64,
    "end_step": pl.Int64,
    "peak_step": pl.Int64,
    "num_steps": pl.Int64,
    "peak_value": pl.Float64,
    "reference": pl.Float64,
    "peak_ratio": pl.Float64,
    "tokens": pl.Float64,
}


def find_spikes(history: pl.DataFrame, rule: SpikeRule) -> pl.DataFrame:
    """Spike events of `rule.metric` in a history frame: run_key, metric, start_step, end_step, peak_step,
    num_steps, peak_value, reference (the rolling median at the peak), peak_ratio, tokens (at the start)."""
    series = history.filter(pl.col("metric") == rule.metric).sort("run_key", "step")
    flagged = series.with_columns(
        pl.col("value")
        .shift(1)
        .rolling_median(rule.window, min_samples=rule.min_history)
        .over("run_key")
        .alias("reference")
    ).with_columns(
        (pl.col("value").is_finite() & (pl.col("value") > rule.factor * pl.col("reference")))
        .fill_null(False)
        .alias("spike")
    )
    events = (
        flagged.with_columns(
            (pl.col("spike") & ~pl.col("spike").shift(1, fill_value=False))
            .cum_sum()
            .over("run_key")
            .alias("event")
        )
        .filter(pl.col("spike"))
        .with_columns((pl.col("value") / pl.col("reference")).alias("ratio"))
        .group_by("run_key", "event")
        .agg(
            pl.col("step").min().alias("start_step"),
            pl.col("step").max().alias("end_step"),
            pl.col("step").sort_by("ratio").last().alias("peak_step"),
            pl.len().cast(pl.Int64).alias("num_steps"),
            pl.col("value").sort_by("ratio").last().alias("peak_value"),
            pl.col("reference").sort_by("ratio").last().alias("reference"),
            pl.col("ratio").max().alias("peak_ratio"),
            pl.col("tokens").first().alias("tokens"),
        )
        .with_columns(pl.lit(rule.metric).alias("metric"))
    )
    return events.select(list(_EVENTS_SCHEMA)).cast(_EVENTS_SCHEMA).sort("run_key", "start_step")


def stability_by_run(
    runs: pl.DataFrame,
    history: pl.DataFrame,
    *,
    rules: tuple[SpikeRule, ...] = (LOSS_SPIKES, GRAD_NORM_SPIKES),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-run stability and the spike events behind it.

    Returns (per_run, events). per_run: run_key, arm, size, budget, seed, status, failure_reason, diverged,
    diverged_step, then per rule `<name>_spikes` (events) and `<name>_max_ratio` (largest peak ratio), where
    name is the metric's last path part (loss_spikes, grad_norm_spikes), and the last logged
    eval/amax_{fwd,bwd}_composite_max and eval/ds_error_max.
    """
    events = (
        pl.concat([find_spikes(history, rule) for rule in rules])
        if rules
        else pl.DataFrame(schema=_EVENTS_SCHEMA)
    )
    nonfinite = (
        history.filter(pl.col("metric") == "train/loss", ~pl.col("value").is_finite())
        .group_by("run_key")
        .agg(pl.col("step").min().alias("_nonfinite_step"))
    )
    per_run = runs.select(
        "run_key", "arm", "size", "budget", "seed", "status", "failure_reason", "diverged_step"
    ).join(nonfinite, on="run_key", how="left")
    per_run = per_run.with_columns(
        (
            (pl.col("failure_reason") == "diverged").fill_null(False)
            | pl.col("_nonfinite_step").is_not_null()
        ).alias("diverged"),
        pl.coalesce("diverged_step", "_nonfinite_step").alias("diverged_step"),
    ).drop("_nonfinite_step")
    for rule in rules:
        name = rule.metric.rsplit("/", 1)[-1]
        counts = (
            events.filter(pl.col("metric") == rule.metric)
            .group_by("run_key")
            .agg(
                pl.len().cast(pl.Int64).alias(f"{name}_spikes"),
                pl.col("peak_ratio").max().alias(f"{name}_max_ratio"),
            )
        )
        per_run = per_run.join(counts, on="run_key", how="left").with_columns(
            pl.col(f"{name}_spikes").fill_null(0)
        )
    last = (
        history.filter(
            pl.col("metric").is_in(
                ["eval/amax_fwd_composite_max", "eval/amax_bwd_composite_max", "eval/ds_error_max"]
            )
        )
        .sort("step")
        .group_by("run_key", "metric")
        .agg(pl.col("value").last())
        .with_columns(pl.col("metric").str.strip_prefix("eval/"))
        .pivot("metric", index="run_key", values="value")
    )
    for column in ("amax_fwd_composite_max", "amax_bwd_composite_max", "ds_error_max"):
        if column not in last.columns:
            last = last.with_columns(pl.lit(None, pl.Float64).alias(column))
    per_run = per_run.join(
        last.select("run_key", "amax_fwd_composite_max", "amax_bwd_composite_max", "ds_error_max"),
        on="run_key",
        how="left",
    )
    return per_run.sort("arm", "size", "budget", "seed", nulls_last=True), events


def stability_by_arm(per_run: pl.DataFrame) -> pl.DataFrame:
    """One row per arm: runs, finished, diverged, divergence_rate, failures by reason (`FAILURE_REASONS`,
    other), runs with loss / grad-norm spikes and spike totals, median diverged step, largest last-evaluation
    composite Amax (fwd, bwd) and doubly-stochastic error."""
    spike_columns = [c for c in per_run.columns if c.endswith("_spikes")]
    return (
        per_run.group_by("arm")
        .agg(
            pl.len().cast(pl.Int64).alias("runs"),
            (pl.col("status") == "FINISHED").sum().cast(pl.Int64).alias("finished"),
            pl.col("diverged").sum().cast(pl.Int64).alias("diverged"),
            pl.col("diverged").mean().alias("divergence_rate"),
            *[
                (pl.col("failure_reason") == reason).sum().cast(pl.Int64).alias(f"failed_{reason}")
                for reason in FAILURE_REASONS
                if reason != "diverged"
            ],
            (
                (pl.col("status") == "FAILED")
                & ~pl.col("failure_reason").is_in(FAILURE_REASONS).fill_null(False)
            )
            .sum()
            .cast(pl.Int64)
            .alias("failed_other"),
            *[pl.col(c).sum().cast(pl.Int64).alias(c) for c in spike_columns],
            *[(pl.col(c) > 0).sum().cast(pl.Int64).alias(f"runs_with_{c}") for c in spike_columns],
            pl.col("diverged_step").filter(pl.col("diverged")).median().alias("median_diverged_step"),
            pl.col("amax_fwd_composite_max").max(),
            pl.col("amax_bwd_composite_max").max(),
            pl.col("ds_error_max").max(),
        )
        .sort("arm")
    )


def amax_summary(profiles: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """Per (arm, size, quantity, layer) at each run's last evaluation: mean, min, max over runs, num_runs."""
    last = profiles.filter(pl.col("step") == pl.col("step").max().over("run_key"))
    return (
        last.join(runs.select("run_key", "arm", "size"), on="run_key", how="inner")
        .group_by("arm", "size", "quantity", "layer")
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.len().cast(pl.Int64).alias("num_runs"),
        )
        .sort("arm", "size", "quantity", "layer")
    )


def amax_evolution(history: pl.DataFrame, runs: pl.DataFrame) -> pl.DataFrame:
    """Mean (and max) over seeds of the composite Amax and DS-error metrics per (arm, size, budget, metric,
    step): runs of one grid point share their evaluation steps, runs of different budgets do not."""
    metrics = ["eval/amax_fwd_composite_max", "eval/amax_bwd_composite_max", "eval/ds_error_max"]
    return (
        history.filter(pl.col("metric").is_in(metrics))
        .join(runs.select("run_key", "arm", "size", "budget"), on="run_key", how="inner")
        .group_by("arm", "size", "budget", "metric", "step")
        .agg(
            pl.col("value").mean().alias("mean"),
            pl.col("value").max().alias("max"),
            pl.col("tokens").mean().alias("tokens"),
            pl.len().cast(pl.Int64).alias("num_runs"),
        )
        .sort("arm", "size", "budget", "metric", "step", nulls_last=True)
    )
