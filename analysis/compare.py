"""Variants vs the baseline: loss gap and ratio, compute-optimal frontiers, scaling laws, compute multiplier.

All functions take the runs frame of analysis/runs.py and use its FINISHED runs that have a final validation
loss and a ``budget`` (the grid's compute budget, in FLOPs charged at the baseline's count, so every arm at
one grid point saw the same tokens).

- **Loss gap and ratio at matching grid points** (`loss_gaps`): each variant run is paired with the baseline
  run of the same (size, budget, seed) -- same data order, same tokens -- giving gap = L_variant − L_baseline
  and ratio = L_variant / L_baseline per seed. Reported: the mean over seeds and a Student-t interval on the
  per-seed values (n − 1 degrees of freedom; none with one seed). The paper's headline (−0.021 at 27B) is such
  a gap.
- **Compute-optimal frontier** (`frontier`): per arm and budget, the size with the lowest mean final loss. The
  frontier gap (`frontier_gaps`) pairs, seed by seed, each arm's frontier run with the baseline's: the best
  loss each reaches at that compute (mHC paper Fig. 6 plots this against training FLOPs).
- **Scaling laws per arm** (`fit_laws`), built on analysis.fits/bootstrap/rollout: L(C) = E + A·C^(−α) over
  the frontier runs (C = the run's true FLOPs, variant overhead included), bootstrap resampling whole runs for
  percentile intervals on E, A, α and a pointwise band on the curve out to `extrapolate` × the largest C; the
  rollout error (fit below the largest budget, predict it) as the fit-quality number. Optionally the
  Chinchilla surface L(N, D) over all the arm's runs (N = activated non-embedding parameters, D = tokens).
- **Compute multiplier** (`compute_multipliers`): at each budget, how much baseline compute reaches the arm's
  frontier loss, by inverting the baseline's L(C): C* = (A / (L − E))^(1/α); multiplier = C* / budget, and net
  of the arm's own FLOP overhead C* / (its true FLOPs). Interval: percentiles over the baseline law's
  bootstrap resamples, each paired with a draw of the arm's mean loss, so both the law's and the arm's
  uncertainty count. The arm's mean loss over its n seeds is drawn from a normal around the observed mean with
  sd s/√n, s the seed-to-seed sd pooled over all the arm's grid cells with two or more seeds (resampling two
  seeds directly would halve their variance, and one cell's two seeds barely estimate it). A loss at or below
  the law's floor E needs infinite baseline compute: the multiplier is inf. `extrapolated` marks a C* outside
  the baseline's fitted range.

Too little data for a fit (fewer than `MIN_LAW_BUDGETS` budgets on a frontier, ...) is reported in `notes`,
not fitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import stats

from analysis.bootstrap import Bootstrap, bootstrap_chinchilla, bootstrap_compute_law
from analysis.fits import fit_chinchilla, fit_compute_law
from analysis.rollout import rollout_chinchilla, rollout_compute_law

__all__ = [
    "MIN_LAW_BUDGETS",
    "MIN_SURFACE_SIZES",
    "LawFits",
    "comparable_points",
    "compute_multipliers",
    "fit_laws",
    "frontier",
    "frontier_gaps",
    "loss_gaps",
]

MIN_LAW_BUDGETS = 3
"""L(C) has three parameters: a frontier spanning fewer budgets does not determine it."""
MIN_SURFACE_SIZES = 3
"""The Chinchilla surface is fitted only over at least this many sizes (and 2 × 5 points)."""

_KEY = ["size", "budget", "seed"]


def comparable_points(runs: pl.DataFrame, *, exclude_repeated: bool = False) -> pl.DataFrame:
    """The runs the comparisons use: FINISHED, finite positive final loss and FLOPs, a budget (and, with
    `exclude_repeated`, no data repetition)."""
    keep = (
        (pl.col("status") == "FINISHED")
        & pl.col("final_val_loss").is_finite()
        & (pl.col("final_val_loss") > 0)
        & pl.col("final_flops").is_finite()
        & (pl.col("final_flops") > 0)
        & pl.col("budget").is_not_null()
    )
    if exclude_repeated:
        keep &= ~pl.col("repeated_data")
    return runs.filter(keep)


def _t_interval(frame: pl.DataFrame, name: str, confidence: float) -> pl.DataFrame:
    """Add `<name>_lower/_upper`: Student-t interval from columns `<name>` (mean), `_sd` and `num_seeds`."""
    n = frame.get_column("num_seeds").to_numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        quantile = np.where(n > 1, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)), np.nan)
        half = quantile * frame.get_column(f"{name}_sd").to_numpy() / np.sqrt(n)
    mean = frame.get_column(name).to_numpy()
    return frame.with_columns(
        pl.Series(f"{name}_lower", mean - half, nan_to_null=True),
        pl.Series(f"{name}_upper", mean + half, nan_to_null=True),
    ).drop(f"{name}_sd")


def _summarise_pairs(pairs: pl.DataFrame, by: list[str], confidence: float) -> pl.DataFrame:
    """Mean and t-interval of per-seed gaps and ratios."""
    summary = pairs.group_by(by).agg(
        pl.len().cast(pl.Int64).alias("num_seeds"),
        pl.col("loss").mean(),
        pl.col("baseline_loss").mean(),
        pl.col("gap").mean(),
        pl.col("gap").std().alias("gap_sd"),
        pl.col("ratio").mean(),
        pl.col("ratio").std().alias("ratio_sd"),
        pl.col("flops").mean(),
        pl.col("baseline_flops").mean(),
    )
    out = _t_interval(_t_interval(summary, "gap", confidence), "ratio", confidence)
    return out.select(
        *by,
        "num_seeds",
        "loss",
        "baseline_loss",
        "gap",
        "gap_lower",
        "gap_upper",
        "ratio",
        "ratio_lower",
        "ratio_upper",
        "flops",
        "baseline_flops",
    ).sort(by)


def loss_gaps(
    runs: pl.DataFrame,
    *,
    baseline: str = "residual",
    confidence: float = 0.95,
    exclude_repeated: bool = False,
) -> pl.DataFrame:
    """Gap and ratio of each non-baseline arm against the baseline at matching (size, budget, seed).

    One row per (arm, size, budget): num_seeds, loss and baseline_loss (means), gap, gap_lower, gap_upper,
    ratio, ratio_lower, ratio_upper (t-intervals over seeds), flops (the arm's mean true FLOPs),
    baseline_flops.
    """
    points = comparable_points(runs, exclude_repeated=exclude_repeated)
    base = (
        points.filter(pl.col("arm") == baseline)
        .group_by(_KEY)
        .agg(
            pl.col("final_val_loss").mean().alias("baseline_loss"),
            pl.col("final_flops").mean().alias("baseline_flops"),
        )
    )
    pairs = (
        points.filter(pl.col("arm") != baseline)
        .join(base, on=_KEY, how="inner")
        .select(
            "arm",
            *_KEY,
            pl.col("final_val_loss").alias("loss"),
            "baseline_loss",
            pl.col("final_flops").alias("flops"),
            "baseline_flops",
        )
        .with_columns(
            (pl.col("loss") - pl.col("baseline_loss")).alias("gap"),
            (pl.col("loss") / pl.col("baseline_loss")).alias("ratio"),
        )
    )
    return _summarise_pairs(pairs, ["arm", "size", "budget"], confidence)


def frontier(runs: pl.DataFrame, *, exclude_repeated: bool = False) -> pl.DataFrame:
    """The compute-optimal frontier: per (arm, budget), the size with the lowest mean final loss.

    One row per (arm, budget): size, num_runs, loss (mean over seeds), flops (mean true FLOPs), run_keys.
    """
    points = comparable_points(runs, exclude_repeated=exclude_repeated)
    cells = points.group_by("arm", "budget", "size").agg(
        pl.len().cast(pl.Int64).alias("num_runs"),
        pl.col("final_val_loss").mean().alias("loss"),
        pl.col("final_flops").mean().alias("flops"),
        pl.col("run_key").sort().alias("run_keys"),
    )
    return (
        cells.sort("arm", "budget", "loss", "size")
        .unique(["arm", "budget"], keep="first", maintain_order=True)
        .sort("arm", "budget")
    )


def _frontier_runs(runs: pl.DataFrame, exclude_repeated: bool) -> pl.DataFrame:
    """The runs on each arm's frontier (all seeds at the frontier size of each budget)."""
    best = frontier(runs, exclude_repeated=exclude_repeated).select("arm", "budget", "size")
    return comparable_points(runs, exclude_repeated=exclude_repeated).join(best, on=["arm", "budget", "size"])


def frontier_gaps(
    runs: pl.DataFrame,
    *,
    baseline: str = "residual",
    confidence: float = 0.95,
    exclude_repeated: bool = False,
) -> pl.DataFrame:
    """Each arm's frontier loss against the baseline's at the same budget, paired by seed.

    One row per (arm, budget): size and baseline_size (the frontier sizes), then the columns of `loss_gaps`.
    """
    on_frontier = _frontier_runs(runs, exclude_repeated)
    base = on_frontier.filter(pl.col("arm") == baseline).select(
        "budget",
        "seed",
        pl.col("size").alias("baseline_size"),
        pl.col("final_val_loss").alias("baseline_loss"),
        pl.col("final_flops").alias("baseline_flops"),
    )
    pairs = (
        on_frontier.filter(pl.col("arm") != baseline)
        .join(base, on=["budget", "seed"], how="inner")
        .select(
            "arm",
            "budget",
            "size",
            "baseline_size",
            "seed",
            pl.col("final_val_loss").alias("loss"),
            "baseline_loss",
            pl.col("final_flops").alias("flops"),
            "baseline_flops",
        )
        .with_columns(
            (pl.col("loss") - pl.col("baseline_loss")).alias("gap"),
            (pl.col("loss") / pl.col("baseline_loss")).alias("ratio"),
        )
    )
    return _summarise_pairs(pairs, ["arm", "budget", "size", "baseline_size"], confidence)


# ----------------------------------------------------------------------------------------------------------
# Scaling laws per arm.


@dataclass(frozen=True, slots=True, kw_only=True)
class LawFits:
    """Per-arm scaling-law fits (see the module doc)."""

    params: pl.DataFrame
    """arm, law ("compute" or "chinchilla"), param, estimate, std_error, lower, upper."""
    quality: pl.DataFrame
    """arm, law, num_points, num_budgets, num_sizes, converged, r2_log, num_bootstrap_converged,
    rollout_error (mean |L̂/L − 1| of the held-out points), rollout_split_by, rollout_split_at,
    rollout_held_out."""
    curves: pl.DataFrame
    """arm, flops, estimate, lower, upper, extrapolated (beyond the largest fitted C): the L(C) curves."""
    bootstraps: dict[str, Bootstrap] = field(repr=False)
    """Compute-law bootstrap per arm (the baseline's feeds `compute_multipliers`)."""
    notes: tuple[str, ...] = ()
    """What was not fitted and why."""


_PARAMS_SCHEMA = {
    "arm": pl.String,
    "law": pl.String,
    "param": pl.String,
    "estimate": pl.Float64,
    "std_error": pl.Float64,
    "lower": pl.Float64,
    "upper": pl.Float64,
}
_QUALITY_SCHEMA = {
    "arm": pl.String,
    "law": pl.String,
    "num_points": pl.Int64,
    "num_budgets": pl.Int64,
    "num_sizes": pl.Int64,
    "converged": pl.Boolean,
    "r2_log": pl.Float64,
    "num_bootstrap_converged": pl.Int64,
    "rollout_error": pl.Float64,
    "rollout_split_by": pl.String,
    "rollout_split_at": pl.Float64,
    "rollout_held_out": pl.Int64,
}
_CURVES_SCHEMA = {
    "arm": pl.String,
    "flops": pl.Float64,
    "estimate": pl.Float64,
    "lower": pl.Float64,
    "upper": pl.Float64,
    "extrapolated": pl.Boolean,
}


def fit_laws(
    runs: pl.DataFrame,
    *,
    num_bootstrap: int = 1000,
    num_bootstrap_surface: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    chinchilla: bool = True,
    extrapolate: float = 10.0,
    num_curve_points: int = 80,
    exclude_repeated: bool = False,
    surface_starts: np.ndarray | None = None,
) -> LawFits:
    """Fit L(C) on each arm's frontier (and the Chinchilla surface on all its runs); bootstrap; roll out.

    Args:
        runs: the runs frame.
        num_bootstrap: resamples of the L(C) fits (and of the compute multiplier).
        num_bootstrap_surface: resamples of the Chinchilla fits (0: no intervals for them).
        confidence: two-sided level of the intervals and bands.
        seed: bootstrap seed (each arm's draw is seeded from it and the arm's position).
        chinchilla: also fit the Chinchilla surface L(N, D).
        extrapolate: the curves run to this multiple of the largest fitted compute.
        num_curve_points: points per curve.
        exclude_repeated: leave out runs that repeated data (epochs > 1).
        surface_starts: rows of θ = (a, b, e, α, β) to start the surface fits from; default Chinchilla's
            4,500-start grid, screened to its best 64 starts (about 0.3 s per arm on one core).
    """
    on_frontier = _frontier_runs(runs, exclude_repeated)
    points = comparable_points(runs, exclude_repeated=exclude_repeated)
    params, quality, curves, notes = [], [], [], []
    bootstraps: dict[str, Bootstrap] = {}
    for index, arm in enumerate(sorted(points.get_column("arm").unique().to_list())):
        arm_seed = seed + 1000 * index
        mine = on_frontier.filter(pl.col("arm") == arm).sort("final_flops", "run_key")
        num_budgets = mine.get_column("budget").n_unique()
        if num_budgets < MIN_LAW_BUDGETS or mine.height <= 3:
            notes.append(
                f"{arm}: too little data for L(C): {mine.height} frontier runs over {num_budgets} budgets "
                f"(needs >= {MIN_LAW_BUDGETS} budgets and >= 4 runs)"
            )
        else:
            boot, rows, band = _compute_law(
                mine, arm, num_bootstrap, confidence, arm_seed, extrapolate, num_curve_points, notes
            )
            bootstraps[arm] = boot
            params.append(_param_rows(boot, arm, "compute", confidence))
            quality.append(rows)
            curves.append(band)
        if chinchilla:
            _surface(
                points.filter(pl.col("arm") == arm),
                arm,
                num_bootstrap_surface,
                confidence,
                arm_seed,
                surface_starts,
                params,
                quality,
                notes,
            )
    return LawFits(
        params=pl.concat(params) if params else pl.DataFrame(schema=_PARAMS_SCHEMA),
        quality=pl.concat(quality) if quality else pl.DataFrame(schema=_QUALITY_SCHEMA),
        curves=pl.concat(curves) if curves else pl.DataFrame(schema=_CURVES_SCHEMA),
        bootstraps=bootstraps,
        notes=tuple(notes),
    )


def _param_rows(boot: Bootstrap, arm: str, law: str, confidence: float) -> pl.DataFrame:
    return (
        boot.summary(confidence)
        .select(pl.lit(arm).alias("arm"), pl.lit(law).alias("law"), pl.all())
        .cast(_PARAMS_SCHEMA)
    )


def _compute_law(
    mine: pl.DataFrame,
    arm: str,
    num_bootstrap: int,
    confidence: float,
    seed: int,
    extrapolate: float,
    num_curve_points: int,
    notes: list[str],
) -> tuple[Bootstrap, pl.DataFrame, pl.DataFrame]:
    C, loss = mine.get_column("final_flops"), mine.get_column("final_val_loss")
    fit = fit_compute_law(C, loss)
    boot = bootstrap_compute_law(
        C, loss, groups=mine.get_column("run_key"), fit=fit, num_samples=num_bootstrap, seed=seed
    )
    if not fit.converged:
        notes.append(f"{arm}: the L(C) fit did not converge from any start; its numbers are the best reached")
    lo, hi = float(C.min()), float(C.max())
    grid = np.geomspace(lo / 1.5, hi * extrapolate, num_curve_points)
    band = boot.band(grid, confidence=confidence)
    curve = pl.DataFrame(
        {
            "arm": arm,
            "flops": grid,
            "estimate": band.estimate,
            "lower": band.lower,
            "upper": band.upper,
            "extrapolated": grid > hi,
        },
        schema=_CURVES_SCHEMA,
    )
    rollout = {
        "rollout_error": None,
        "rollout_split_by": None,
        "rollout_split_at": None,
        "rollout_held_out": None,
    }
    budgets = mine.get_column("budget")
    below = mine.filter(budgets < budgets.max())
    split_at = float(below.get_column("final_flops").max()) if below.height else math.inf
    # The runs below the largest budget must also be below its compute: runs whose FLOPs do not grow with
    # their budget (a budget in steps, not FLOPs) leave nothing to predict.
    held_out = int((split_at < C).sum())
    if below.get_column("budget").n_unique() >= MIN_LAW_BUDGETS and below.height > 3 and held_out:
        result = rollout_compute_law(C, loss, split_at=split_at)
        rollout = {
            "rollout_error": result.mean_abs_relative_error,
            "rollout_split_by": "C",
            "rollout_split_at": split_at,
            "rollout_held_out": int(result.test_index.size),
        }
    else:
        notes.append(
            f"{arm}: no L(C) rollout: the budgets below the largest do not determine the law, or their runs' "
            "compute does not stay below the largest budget's"
        )
    row = pl.DataFrame(
        [
            {
                "arm": arm,
                "law": "compute",
                "num_points": fit.num_points,
                "num_budgets": budgets.n_unique(),
                "num_sizes": mine.get_column("size").n_unique(),
                "converged": fit.converged,
                "r2_log": fit.r2_log,
                "num_bootstrap_converged": boot.num_converged,
                **rollout,
            }
        ],
        schema=_QUALITY_SCHEMA,
    )
    return boot, row, curve


def _surface(
    mine: pl.DataFrame,
    arm: str,
    num_bootstrap: int,
    confidence: float,
    seed: int,
    starts: np.ndarray | None,
    params: list[pl.DataFrame],
    quality: list[pl.DataFrame],
    notes: list[str],
) -> None:
    mine = mine.filter(pl.col("params_activated_non_embedding") > 0, pl.col("final_tokens") > 0)
    N = mine.get_column("params_activated_non_embedding").cast(pl.Float64)
    D = mine.get_column("final_tokens")
    loss = mine.get_column("final_val_loss")
    num_sizes = N.n_unique()
    if num_sizes < MIN_SURFACE_SIZES or mine.height < 10:
        notes.append(
            f"{arm}: too little data for the Chinchilla surface: {mine.height} runs over {num_sizes} sizes "
            f"(needs >= {MIN_SURFACE_SIZES} sizes and >= 10 runs)"
        )
        return
    fit = fit_chinchilla(N, D, loss, starts=starts)
    num_converged = None
    if num_bootstrap >= 2:
        boot = bootstrap_chinchilla(
            N, D, loss, groups=mine.get_column("run_key"), fit=fit, num_samples=num_bootstrap, seed=seed
        )
        params.append(_param_rows(boot, arm, "chinchilla", confidence))
        num_converged = boot.num_converged
    else:
        params.append(
            pl.DataFrame(
                {
                    "arm": arm,
                    "law": "chinchilla",
                    "param": list(fit.param_names),
                    "estimate": list(fit.params.values()),
                    "std_error": None,
                    "lower": None,
                    "upper": None,
                },
                schema=_PARAMS_SCHEMA,
            )
        )
    rollout = {
        "rollout_error": None,
        "rollout_split_by": None,
        "rollout_split_at": None,
        "rollout_held_out": None,
    }
    if num_sizes > MIN_SURFACE_SIZES:
        result = rollout_chinchilla(N, D, loss, split_by="N", starts=starts)
        rollout = {
            "rollout_error": result.mean_abs_relative_error,
            "rollout_split_by": "N",
            "rollout_split_at": result.split_at,
            "rollout_held_out": int(result.test_index.size),
        }
    else:
        notes.append(
            f"{arm}: no Chinchilla rollout: holding out the largest size leaves < {MIN_SURFACE_SIZES} sizes"
        )
    quality.append(
        pl.DataFrame(
            [
                {
                    "arm": arm,
                    "law": "chinchilla",
                    "num_points": fit.num_points,
                    "num_budgets": mine.get_column("budget").n_unique(),
                    "num_sizes": num_sizes,
                    "converged": fit.converged,
                    "r2_log": fit.r2_log,
                    "num_bootstrap_converged": num_converged,
                    **rollout,
                }
            ],
            schema=_QUALITY_SCHEMA,
        )
    )


# ----------------------------------------------------------------------------------------------------------
# Compute multiplier.

_MULTIPLIER_SCHEMA = {
    "arm": pl.String,
    "budget": pl.Float64,
    "size": pl.String,
    "num_seeds": pl.Int64,
    "loss": pl.Float64,
    "flops": pl.Float64,
    "baseline_flops_needed": pl.Float64,
    "multiplier": pl.Float64,
    "multiplier_lower": pl.Float64,
    "multiplier_upper": pl.Float64,
    "multiplier_net": pl.Float64,
    "multiplier_net_lower": pl.Float64,
    "multiplier_net_upper": pl.Float64,
    "extrapolated": pl.Boolean,
}


def _baseline_compute(loss: np.ndarray, E: np.ndarray, A: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """C* with E + A·C*^(−α) = loss; inf where loss <= E (the law never gets there)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        excess = loss - E
        return np.where(
            excess > 0, np.exp((np.log(A) - np.log(np.where(excess > 0, excess, 1.0))) / alpha), np.inf
        )


def _pooled_seed_sd(points: pl.DataFrame) -> dict[str, float]:
    """Per arm: sqrt(Σ (n_i − 1)·s_i² / Σ (n_i − 1)) over its (size, budget) cells with n_i >= 2 seeds."""
    cells = (
        points.group_by("arm", "size", "budget")
        .agg(pl.len().alias("n"), pl.col("final_val_loss").var().alias("var"))
        .filter(pl.col("n") >= 2)
        .group_by("arm")
        .agg((((pl.col("n") - 1) * pl.col("var")).sum() / (pl.col("n") - 1).sum()).sqrt().alias("sd"))
    )
    return dict(zip(cells.get_column("arm").to_list(), cells.get_column("sd").to_list(), strict=True))


def compute_multipliers(
    runs: pl.DataFrame,
    laws: LawFits,
    *,
    baseline: str = "residual",
    confidence: float = 0.95,
    seed: int = 0,
    exclude_repeated: bool = False,
) -> pl.DataFrame:
    """Baseline compute needed for each arm's frontier loss, over the budget (module doc).

    One row per (arm, budget) of each non-baseline arm's frontier: size, num_seeds, loss (mean), flops (the
    arm's mean true FLOPs), baseline_flops_needed (C*), multiplier = C*/budget with its interval,
    multiplier_net = C*/flops with its interval, extrapolated (C* outside the baseline's fitted compute
    range).
    Empty when the baseline has no L(C) fit.
    """
    boot = laws.bootstraps.get(baseline)
    if boot is None:
        return pl.DataFrame(schema=_MULTIPLIER_SCHEMA)
    fit = boot.fit
    samples = boot.used_samples  # (S, 3): E, A, alpha
    on_frontier = _frontier_runs(runs, exclude_repeated)
    base_c = on_frontier.filter(pl.col("arm") == baseline).get_column("final_flops")
    c_lo, c_hi = float(base_c.min()), float(base_c.max())
    rng = np.random.default_rng(seed)
    tail = 50.0 * (1.0 - confidence)
    seed_sd = _pooled_seed_sd(comparable_points(runs, exclude_repeated=exclude_repeated))
    rows = []
    for (arm, budget, size), cell in on_frontier.filter(pl.col("arm") != baseline).group_by(
        "arm", "budget", "size", maintain_order=True
    ):
        losses = cell.get_column("final_val_loss").to_numpy()
        flops = float(cell.get_column("final_flops").mean())
        needed = float(
            _baseline_compute(np.array(losses.mean()), fit.params["E"], fit.params["A"], fit.params["alpha"])
        )
        sd = seed_sd.get(arm, 0.0) / np.sqrt(losses.size)
        drawn = losses.mean() + sd * rng.standard_normal(samples.shape[0])
        needed_b = _baseline_compute(drawn, samples[:, 0], samples[:, 1], samples[:, 2])
        lo, hi = np.percentile(needed_b, [tail, 100 - tail], method="inverted_cdf")
        rows.append(
            {
                "arm": arm,
                "budget": budget,
                "size": size,
                "num_seeds": losses.size,
                "loss": float(losses.mean()),
                "flops": flops,
                "baseline_flops_needed": needed,
                "multiplier": needed / budget,
                "multiplier_lower": lo / budget,
                "multiplier_upper": hi / budget,
                "multiplier_net": needed / flops,
                "multiplier_net_lower": lo / flops,
                "multiplier_net_upper": hi / flops,
                "extrapolated": not c_lo <= needed <= c_hi,
            }
        )
    return pl.DataFrame(rows, schema=_MULTIPLIER_SCHEMA).sort("arm", "budget")
