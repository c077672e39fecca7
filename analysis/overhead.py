"""What each variant costs: step time, tokens/s and peak memory over the baseline, per size and hardware.

A comparison is made only within one *cell*: the same size, the same ``hardware`` tag (falling back to
``device``) and the same tokens per optimizer step (step time scales with it; a sweep may zip batch size with
budget). Runs on different hardware are never pooled. A variant's cell without a baseline run gets no number
and one of three statuses, from the most specific: ``no_baseline_at_this_batch`` (the baseline ran at this size
on this hardware, but only at other tokens per step), ``no_baseline_on_this_hardware`` (it ran at this size
only on other hardware; ``baseline_hardware`` names it) and ``no_baseline_at_this_size``; ``reason`` says which
in words, for notes and hover text.

Per run the quantity is the median step time after the warm-up (analysis/runs.py), tokens/s at that median, or
``final/peak_memory_mb``; only FINISHED runs count. Across runs (seeds, budgets) the change is the ratio of
geometric means minus one, in percent, with a Welch t-interval on the difference of mean logs
(Welch-Satterthwaite degrees of freedom), exponentiated: multiplicative effects, unequal spreads, and honest
width with few runs. One run on either side gives the point estimate and status ``too_few_runs``.

For tokens/s a negative change is a cost; for step time and memory a positive one.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

__all__ = ["OVERHEAD_QUANTITIES", "overhead"]

OVERHEAD_QUANTITIES = {
    "step_time": "step_time_s",
    "tokens_per_s": "tokens_per_s",
    "peak_memory": "peak_memory_mb",
}
"""Quantity name -> runs-frame column."""

_CELL = ["size", "hardware", "tokens_per_step"]
_SCHEMA = {
    "size": pl.String,
    "hardware": pl.String,
    "tokens_per_step": pl.Float64,
    "arm": pl.String,
    "quantity": pl.String,
    "num_runs": pl.Int64,
    "num_baseline_runs": pl.Int64,
    "value": pl.Float64,
    "baseline_value": pl.Float64,
    "change_pct": pl.Float64,
    "lower_pct": pl.Float64,
    "upper_pct": pl.Float64,
    "status": pl.String,
    "baseline_hardware": pl.String,
    "size_on_several_hardware": pl.Boolean,
    "reason": pl.String,
}


def _welch(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[float, float | None, float | None]:
    """Change of geometric means of x over y (fraction) and its Welch interval on the log scale."""
    lx, ly = np.log(x), np.log(y)
    diff = lx.mean() - ly.mean()
    if x.size < 2 or y.size < 2:
        return float(np.expm1(diff)), None, None
    vx, vy = lx.var(ddof=1) / x.size, ly.var(ddof=1) / y.size
    se = np.sqrt(vx + vy)
    if se == 0:
        return float(np.expm1(diff)), float(np.expm1(diff)), float(np.expm1(diff))
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    return float(np.expm1(diff)), float(np.expm1(diff - half)), float(np.expm1(diff + half))


def _why_not_compared(
    size: str, hardware: str, baseline_batches: dict[tuple[str, str], list[float]], baseline_hardware: dict[str, str]
) -> dict[str, str]:
    """The status and reason of a cell without baseline runs, most specific first."""
    if batches := baseline_batches.get((size, hardware)):
        listed = ", ".join(f"{tps:,.0f}" for tps in sorted(batches))
        return {
            "status": "no_baseline_at_this_batch",
            "reason": f"the baseline ran at this size on this hardware only at {listed} tokens per step",
        }
    if size in baseline_hardware:
        return {
            "status": "no_baseline_on_this_hardware",
            "reason": f"the baseline ran at this size only on {baseline_hardware[size]}",
        }
    return {"status": "no_baseline_at_this_size", "reason": "the baseline has no finished run at this size"}


def overhead(runs: pl.DataFrame, *, baseline: str = "residual", confidence: float = 0.95) -> pl.DataFrame:
    """Overhead of every non-baseline arm per (size, hardware, tokens_per_step) cell and quantity.

    Columns: size, hardware, tokens_per_step, arm, quantity (step_time | tokens_per_s | peak_memory),
    num_runs, num_baseline_runs, value and baseline_value (geometric means), change_pct, lower_pct, upper_pct,
    status (ok | too_few_runs | no_baseline_at_this_batch | no_baseline_on_this_hardware |
    no_baseline_at_this_size), baseline_hardware (where the baseline ran at this size, for
    no_baseline_on_this_hardware rows), size_on_several_hardware (the size's runs span several hardware tags:
    read per hardware), reason (why a row has no number, in words; null for compared rows).
    """
    finished = runs.filter(pl.col("status") == "FINISHED")
    spread = finished.group_by("size").agg(pl.col("hardware").n_unique().alias("_num_hw"))
    baseline_runs = finished.filter(pl.col("arm") == baseline)
    base_hw = baseline_runs.group_by("size").agg(pl.col("hardware").unique().sort().str.join(", ").alias("_base_hw"))
    baseline_hardware = dict(base_hw.iter_rows())
    baseline_batches: dict[tuple[str, str], list[float]] = {}
    for size, hardware, tps in baseline_runs.select("size", "hardware", "tokens_per_step").unique().iter_rows():
        baseline_batches.setdefault((size, hardware), []).append(tps)
    rows = []
    for quantity, column in OVERHEAD_QUANTITIES.items():
        usable = finished.filter(pl.col(column).is_finite() & (pl.col(column) > 0))
        groups = {key: cell.get_column(column).to_numpy() for key, cell in usable.group_by([*_CELL, "arm"])}
        for (size, hardware, tps, arm), values in sorted(
            groups.items(), key=lambda kv: tuple(map(str, kv[0]))
        ):
            if arm == baseline:
                continue
            base = groups.get((size, hardware, tps, baseline))
            row = {
                "size": size,
                "hardware": hardware,
                "tokens_per_step": tps,
                "arm": arm,
                "quantity": quantity,
                "num_runs": values.size,
                "value": float(np.exp(np.log(values).mean())),
            }
            if base is None:
                why = _why_not_compared(size, hardware, baseline_batches, baseline_hardware)
                row.update(num_baseline_runs=0, **why)
            else:
                change, lo, hi = _welch(values, base, confidence)
                row.update(
                    num_baseline_runs=base.size,
                    baseline_value=float(np.exp(np.log(base).mean())),
                    change_pct=100 * change,
                    lower_pct=None if lo is None else 100 * lo,
                    upper_pct=None if hi is None else 100 * hi,
                    status="ok" if lo is not None else "too_few_runs",
                )
            rows.append(row)
    frame = pl.DataFrame(
        rows,
        schema={
            k: v for k, v in _SCHEMA.items() if k not in ("baseline_hardware", "size_on_several_hardware")
        },
    )
    return (
        frame.join(spread, on="size", how="left")
        .join(base_hw, on="size", how="left")
        .with_columns(
            pl.when(pl.col("status") == "no_baseline_on_this_hardware")
            .then(pl.col("_base_hw"))
            .alias("baseline_hardware"),
            (pl.col("_num_hw") > 1).fill_null(False).alias("size_on_several_hardware"),
        )
        .drop("_num_hw", "_base_hw")
        .select(list(_SCHEMA))
    )
