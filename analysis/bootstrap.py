"""Bootstrap uncertainty for scaling-law fits: resample whole runs, refit, read off percentiles.

The points of one run (its checkpoints, or grid points sharing a run) have correlated errors, so resampling
points understates the spread (tests/analysis/test_fits.py shows the undercoverage); we resample *groups*
(runs) with replacement, the caller saying which group each point belongs to (by default each point is its
own group, as in Epoch AI's bootstrap of the Chinchilla data). A resample is a weight per point -- how many
times its group was drawn -- so all resamples share the data arrays and are fitted together, every
(resample, start) pair being one problem of the lock-step L-BFGS-B (analysis/_multistart.py). Each resample
starts from the full-data optimum and the next-best distinct local optima of the full-data grid search
(`num_warm_starts` points) rather than the full grid: the full-data fit has already mapped the basins, and a
resample's optimum lies in one of them.

Intervals are percentile intervals; standard errors are standard deviations of the resampled parameters (A,
B and E on their natural scale, as Epoch report them). Resamples whose best start did not converge are left
out and counted. The draw comes from a seeded numpy Generator: the same seed gives bit-identical results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from analysis._multistart import minimize_many
from analysis.fits import (
    CHINCHILLA,
    COMPUTE_LAW,
    HUBER_DELTA,
    ArrayOrColumn,
    ChinchillaFit,
    ComputeLawFit,
    ScalingLawFit,
    _batch_objective,
    _columns,
    _fit,
    _huber_objective,
    _labels,
    _Law,
    _log_predict,
    _split_inputs,
)

__all__ = ["Bootstrap", "CurveBand", "bootstrap_chinchilla", "bootstrap_compute_law"]

logger = logging.getLogger(__name__)

# Fraction of resamples that may fail to converge before the bootstrap warns rather than logs at INFO.
_MAX_ROUTINE_FAILURES = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveBand:
    """A fitted curve and its pointwise bootstrap percentile band at the requested points."""

    estimate: np.ndarray = field(compare=False)
    """The full-data fit's prediction."""
    lower: np.ndarray = field(compare=False)
    """Lower percentile of the resampled fits' predictions."""
    upper: np.ndarray = field(compare=False)
    """Upper percentile of the resampled fits' predictions."""
    confidence: float
    """Two-sided level, e.g. 0.95 for the 2.5th-97.5th percentiles."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    """Resampled fits of one law; `samples[i]` holds resample i's parameters in `fit.param_names` order."""

    fit: ScalingLawFit
    """The fit on all the data."""
    samples: np.ndarray = field(compare=False, repr=False)
    """(num_samples, num_params) parameters of every resample (rows with `converged` False are not used)."""
    converged: np.ndarray = field(compare=False, repr=False)
    """(num_samples,) whether each resample's best start converged."""
    num_groups: int
    """Groups (runs) resampled."""
    seed: int | None
    """The integer seed, or None when a Generator was passed."""

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.fit.param_names

    @property
    def num_converged(self) -> int:
        return int(self.converged.sum())

    @property
    def used_samples(self) -> np.ndarray:
        """The converged resamples' parameters, (num_converged, num_params)."""
        return self.samples[self.converged]

    def std_errors(self) -> dict[str, float]:
        """Standard deviation of each parameter over the converged resamples."""
        spread = self.used_samples.std(axis=0, ddof=1)
        return dict(zip(self.param_names, map(float, spread), strict=True))

    def intervals(self, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile interval of each parameter at the given two-sided level."""
        lower, upper = np.percentile(self.used_samples, _percentiles(confidence), axis=0)
        return {n: (float(lo), float(hi)) for n, lo, hi in zip(self.param_names, lower, upper, strict=True)}

    def band(self, *x: npt.ArrayLike, confidence: float = 0.95) -> CurveBand:
        """Pointwise percentile band of the curve at x: (N, D) for the Chinchilla surface, C for L(C)."""
        if len(x) != self.fit.law.num_terms:
            raise ValueError(f"band() takes {self.fit.law.inputs}, got {len(x)} arrays")
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in x))
        log_x = np.log(np.stack([a.ravel() for a in arrays]))
        thetas = self.fit.law.theta_from_params(self.used_samples)
        predictions = np.exp(_log_predict(thetas, log_x))  # (num_converged, M)
        lower, upper = np.percentile(predictions, _percentiles(confidence), axis=0)
        shape = arrays[0].shape
        return CurveBand(
            estimate=self.fit._predict(*arrays),
            lower=lower.reshape(shape),
            upper=upper.reshape(shape),
            confidence=confidence,
        )

    def summary(self, confidence: float = 0.95) -> pl.DataFrame:
        """One row per parameter: estimate, std_error, lower, upper (for tables and parquet)."""
        errors, intervals = self.std_errors(), self.intervals(confidence)
        return pl.DataFrame(
            {
                "param": list(self.param_names),
                "estimate": [self.fit.params[n] for n in self.param_names],
                "std_error": [errors[n] for n in self.param_names],
                "lower": [intervals[n][0] for n in self.param_names],
                "upper": [intervals[n][1] for n in self.param_names],
            }
        )


def bootstrap_chinchilla(
    N: ArrayOrColumn,
    D: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    groups: ArrayOrColumn | None = None,
    data: pl.DataFrame | None = None,
    num_samples: int = 1000,
    seed: int | np.random.Generator = 0,
    fit: ChinchillaFit | None = None,
    num_warm_starts: int = 4,
    delta: float = HUBER_DELTA,
) -> Bootstrap:
    """Bootstrap the Chinchilla surface fit by resampling groups (module docstring).

    Args:
        N, D, loss, data: as for `fit_chinchilla`.
        groups: group (run) label per point; default: every point its own group.
        num_samples: resamples.
        seed: integer seed or a numpy Generator.
        fit: the full-data fit of these same points, if already computed (saves the grid search).
        num_warm_starts: starts per resample: the full-data optimum and the next-best distinct local optima.
        delta: Huber threshold (ignored when `fit` is given: the fit's own is used).
    """
    columns = _columns("bootstrap_chinchilla", data, N=N, D=D, loss=loss)
    return _bootstrap("bootstrap_chinchilla", CHINCHILLA, columns, groups, data, num_samples, seed, fit,
                      num_warm_starts, delta)  # fmt: skip


def bootstrap_compute_law(
    C: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    groups: ArrayOrColumn | None = None,
    data: pl.DataFrame | None = None,
    num_samples: int = 1000,
    seed: int | np.random.Generator = 0,
    fit: ComputeLawFit | None = None,
    num_warm_starts: int = 4,
    delta: float = HUBER_DELTA,
) -> Bootstrap:
    """Bootstrap the compute-law fit by resampling groups; arguments as for `bootstrap_chinchilla`."""
    columns = _columns("bootstrap_compute_law", data, C=C, loss=loss)
    return _bootstrap("bootstrap_compute_law", COMPUTE_LAW, columns, groups, data, num_samples, seed, fit,
                      num_warm_starts, delta)  # fmt: skip


def _bootstrap(
    caller: str,
    law: _Law,
    columns: dict[str, np.ndarray],
    groups: ArrayOrColumn | None,
    data: pl.DataFrame | None,
    num_samples: int,
    seed: int | np.random.Generator,
    fit: ScalingLawFit | None,
    num_warm_starts: int,
    delta: float,
) -> Bootstrap:
    log_x, log_loss = _split_inputs(law, columns)
    num_points = log_loss.size
    if num_samples < 2:
        raise ValueError(f"{caller}: num_samples ({num_samples}) must be >= 2")
    if num_warm_starts < 1:
        raise ValueError(f"{caller}: num_warm_starts ({num_warm_starts}) must be >= 1")
    if fit is None:
        fit = _fit(law, log_x, log_loss, None, delta)
    elif fit.law != law or fit.num_points != num_points or not _objective_matches(fit, log_x, log_loss):
        raise ValueError(
            f"{caller}: fit= ({type(fit).__name__}, {fit.num_points} points) is not a fit of these data"
        )

    if groups is None:
        group_of_point = np.arange(num_points)
    else:
        _, group_of_point = np.unique(
            _labels(caller, data, "groups", groups, num_points), return_inverse=True
        )
    num_groups = int(group_of_point.max()) + 1
    if num_groups < 2:
        raise ValueError(f"{caller}: all points are in one group; resampling groups needs at least two")

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    drawn = rng.integers(num_groups, size=(num_samples, num_groups))  # num_groups draws with replacement
    flat = (np.arange(num_samples)[:, None] * num_groups + drawn).ravel()
    counts = np.bincount(flat, minlength=num_samples * num_groups).reshape(num_samples, num_groups)
    weights = counts[:, group_of_point].astype(np.float64)  # (num_samples, num_points)

    warm = np.array(fit.local_optima[:num_warm_starts])
    num_warm = warm.shape[0]
    x0 = np.tile(warm, (num_samples, 1))  # problem s = resample s // num_warm, start s % num_warm
    objective = _batch_objective(log_x, log_loss, weights, fit.delta, rows_per_weight=num_warm)
    result = minimize_many(objective, x0)

    fun = np.where(result.converged, result.fun, np.inf).reshape(num_samples, num_warm)
    best = np.argmin(fun, axis=1)
    converged = np.isfinite(fun[np.arange(num_samples), best])
    # Where no start converged, keep the lowest objective reached, flagged unconverged.
    fallback = np.argmin(result.fun.reshape(num_samples, num_warm), axis=1)
    best = np.where(converged, best, fallback)
    theta = result.x.reshape(num_samples, num_warm, -1)[np.arange(num_samples), best]
    num_failed = int((~converged).sum())
    if num_failed:
        # A few line-search stalls at a Huber kink are routine; many mean the warm starts miss a basin.
        log = logger.warning if num_failed > _MAX_ROUTINE_FAILURES * num_samples else logger.info
        log("%s: %d of %d resamples converged from no warm start; left out", caller, num_failed, num_samples)
    samples = law.params_from_theta(theta)
    samples.flags.writeable = False
    converged.flags.writeable = False
    return Bootstrap(
        fit=fit,
        samples=samples,
        converged=converged,
        num_groups=num_groups,
        seed=None if isinstance(seed, np.random.Generator) else int(seed),
    )


def _objective_matches(fit: ScalingLawFit, log_x: np.ndarray, log_loss: np.ndarray) -> bool:
    """Whether `fit` reports the objective its parameters reach on these data (i.e. it was fitted to them)."""
    objective = _huber_objective(fit.theta[None, :], log_x, log_loss, None, fit.delta)[0][0]
    return bool(np.isclose(objective, fit.objective, rtol=1e-6, atol=0.0))


def _percentiles(confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence ({confidence}) must be in (0, 1)")
    tail = 50.0 * (1.0 - confidence)
    return tail, 100.0 - tail
