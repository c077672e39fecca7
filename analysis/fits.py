"""Scaling-law fits: the Chinchilla surface L(N, D) and the compute law L(C), fitted the Chinchilla way.

Both laws are a floor plus power laws, L = E + Σ_k A_k·x_k^(−α_k) (Chinchilla's surface: x = (N, D),
A_k = (A, B), α_k = (α, β); the compute law: x = (C,)). They are fitted in log space with the log-sum-exp
parametrisation (Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", §3.3, App. D):

    log L̂_i = LSE(a_1 − α_1·log x_i1, …, a_K − α_K·log x_iK, e),     A_k = exp(a_k),  E = exp(e),
    minimise  f(θ) = Σ_i c_i · Huber_δ(log L_i − log L̂_i),   δ = 1e-3,

with L-BFGS-B from a grid of starts (Chinchilla's: a, b ∈ {0, 5, …, 25}, e ∈ {−1, −0.5, …, 1},
α, β ∈ {0, 0.5, …, 2}), keeping the best end point among the starts that converged. The objective is first
evaluated at every start in one vectorised pass and L-BFGS-B runs only from the `NUM_SCREENED_STARTS` (64)
best (analysis/_multistart.py says why that gives the full grid's optimum). c_i are point
weights: 1 in a plain fit, resample counts in the bootstrap (analysis/bootstrap.py). θ is ordered
(a_1…a_K, e, α_1…α_K), i.e. (a, b, e, α, β) for the surface as in Chinchilla and in Epoch AI's replication
(Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"), whose numbers
tests/analysis/test_fits.py reproduces.

Gradient. With z_ik the LSE arguments, w_ik = softmax_k(z_i) (the e term is k = K+1), r_i = log L_i − log L̂_i
and ψ(r) = clip(r, −δ, δ) the derivative of Huber_δ:

    ∂f/∂a_k = −Σ_i c_i ψ(r_i) w_ik,    ∂f/∂e = −Σ_i c_i ψ(r_i) w_i,K+1,
    ∂f/∂α_k = Σ_i c_i ψ(r_i) w_ik log x_ik.

Huber is C¹, so L-BFGS-B with this analytic gradient behaves. Two choices beyond Chinchilla's recipe:
- The optimiser sees f/δ² (see `_batch_objective`): SciPy's ftol test is relative to max(|f|, 1), and f ~ 1e-3
  on real data made it an absolute test that stopped runs before they had converged.
- All starts run in lock-step (analysis/_multistart.py) with one vectorised objective call per round:
  the screened starts take ~0.2 s (the full 4,500-start grid took ~10 s, and a minute with one
  `scipy.optimize.minimize` call per start, whose iterates these are).

Inputs are numpy arrays (anything `np.asarray` takes, a Polars Series included) or, with `data=`, names of
columns of a Polars DataFrame.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl

from analysis._multistart import NUM_SCREENED_STARTS, BatchObjective, minimize_many, screen_starts

__all__ = [
    "HUBER_DELTA",
    "ArrayOrColumn",
    "ChinchillaFit",
    "ComputeLawFit",
    "ScalingLawFit",
    "chinchilla_grid",
    "compute_law_grid",
    "fit_chinchilla",
    "fit_compute_law",
]

logger = logging.getLogger(__name__)

HUBER_DELTA = 1e-3
"""Huber threshold on log-loss residuals (Hoffmann et al. 2022, App. D)."""

ArrayOrColumn = npt.ArrayLike | str
"""Values (array-like, Polars Series) or, when a `data=` frame is given, the name of one of its columns."""

# Points x starts per objective call: 64 KB per temporary, below glibc's 128 KB mmap threshold, so the
# temporaries come from the heap and stay in cache. At 128 KB and up every temporary was a fresh mmap and a
# third of a Chinchilla-grid fit went to page faults (measured: 9 s instead of 14-20 s on 2 shared cores).
_MAX_ELEMENTS_PER_CALL = 1 << 13
# End points closer than this (max-norm in θ) are one local optimum when listing the distinct ones.
_DISTINCT_OPTIMUM_TOL = 0.05
# Local optima kept on a fit (the bootstrap warm-starts from them): at most this many, and only those whose
# objective is within this factor of the best -- reweighting a resample's points does not make a basin twice
# as bad the best one, while degenerate basins (a power-law term switched off, α → large) only cost time.
_NUM_LOCAL_OPTIMA_KEPT = 8
_LOCAL_OPTIMUM_MAX_RATIO = 2.0


# ----------------------------------------------------------------------------------------------------------
# The law: E + Σ_k A_k x_k^(−α_k) in the log-sum-exp parametrisation.


@dataclass(frozen=True, slots=True)
class _Law:
    """Names and θ layout of one law: θ = (a_1…a_K, e, α_1…α_K); reported as (E, A_1…A_K, α_1…α_K)."""

    inputs: tuple[str, ...]
    coefficients: tuple[str, ...]
    exponents: tuple[str, ...]

    @property
    def num_terms(self) -> int:
        return len(self.inputs)

    @property
    def param_names(self) -> tuple[str, ...]:
        return ("E", *self.coefficients, *self.exponents)

    def params_from_theta(self, theta: np.ndarray) -> np.ndarray:
        """(…, 2K+1) θ -> (…, 2K+1) reported parameters in `param_names` order."""
        k = self.num_terms
        e, coefficients, exponents = theta[..., k : k + 1], theta[..., :k], theta[..., k + 1 :]
        return np.concatenate([np.exp(e), np.exp(coefficients), exponents], axis=-1)

    def theta_from_params(self, params: np.ndarray) -> np.ndarray:
        k = self.num_terms
        floor, coefficients, exponents = params[..., :1], params[..., 1 : k + 1], params[..., k + 1 :]
        return np.concatenate([np.log(coefficients), np.log(floor), exponents], axis=-1)


CHINCHILLA = _Law(inputs=("N", "D"), coefficients=("A", "B"), exponents=("alpha", "beta"))
COMPUTE_LAW = _Law(inputs=("C",), coefficients=("A",), exponents=("alpha",))


def _log_predict(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """log L̂ for S parameter vectors at M points: theta (S, 2K+1), log_x (K, M) -> (S, M)."""
    k = log_x.shape[0]
    z = theta[:, :k].T[:, :, None] - theta[:, k + 1 :].T[:, :, None] * log_x[:, None, :]  # (K, S, M)
    z = np.concatenate([z, np.broadcast_to(theta[None, :, k, None], (1, *z.shape[1:]))])
    top = z.max(axis=0)
    return top + np.log(np.exp(z - top).sum(axis=0))


def _huber_objective(
    theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, weights: np.ndarray | None, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """f and ∇f (module docstring) for S parameter vectors: theta (S, 2K+1), weights None or (S, P)."""
    k = log_x.shape[0]
    z = np.empty((k + 1, theta.shape[0], log_loss.size))
    np.multiply(theta[:, k + 1 :].T[:, :, None], log_x[:, None, :], out=z[:k])
    np.subtract(theta[:, :k].T[:, :, None], z[:k], out=z[:k])
    z[k] = theta[:, k, None]
    top = z.max(axis=0)
    z -= top
    np.exp(z, out=z)  # z is now exp(z - top): the unnormalised softmax weights
    total = z.sum(axis=0)
    residual = log_loss - top - np.log(total)
    psi = np.clip(residual, -delta, delta)
    huber = psi * (residual - 0.5 * psi)  # r²/2 where |r| <= δ, δ(|r| − δ/2) beyond
    if weights is not None:
        huber *= weights
        psi *= weights
    psi /= total  # folds the softmax normalisation into ψ
    grad = np.empty_like(theta)
    grad[:, : k + 1] = -np.einsum("ksp,sp->sk", z, psi)
    z[:k] *= psi
    grad[:, k + 1 :] = np.einsum("ksp,kp->sk", z[:k], log_x)
    return huber.sum(axis=1), grad


def _batch_objective(
    log_x: np.ndarray,
    log_loss: np.ndarray,
    weights: np.ndarray | None,
    delta: float,
    rows_per_weight: int = 1,
) -> BatchObjective:
    """The `BatchObjective` for `minimize_many`: f/δ², problem s weighted by weights[s // rows_per_weight].

    Why f/δ² = Σ_i c_i ρ(r_i/δ) (ρ the unit Huber function) and not f: L-BFGS-B's ftol test is relative to
    max(|f|, 1), and f is ~1e-3 on real data, so with f the test is absolute and stops runs that have
    barely moved (bootstrap fits warm-started at the full-data optimum stayed there: Chinchilla's SE(α) came
    out 0.0005 instead of ~0.015). In units of δ² the objective is ~|r|/δ per point and SciPy's default
    tolerances hold.
    """
    chunk = max(1, _MAX_ELEMENTS_PER_CALL // log_loss.size)
    scale = 1.0 / delta**2

    def fg(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, g = np.empty(theta.shape[0]), np.empty_like(theta)
        for lo in range(0, theta.shape[0], chunk):
            part = slice(lo, lo + chunk)
            w = None if weights is None else weights[rows[part] // rows_per_weight]
            f[part], g[part] = _huber_objective(theta[part], log_x, log_loss, w, delta)
        return f * scale, g * scale

    return fg


# ----------------------------------------------------------------------------------------------------------
# Results.


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingLawFit:
    """What every fit reports besides its parameters (which the subclasses name)."""

    law: ClassVar[_Law]

    objective: float
    """Huber objective Σ_i Huber_δ(log L_i − log L̂_i) at the optimum."""
    r2_log: float
    """R² of log L̂ against log L over the fitted points."""
    converged: bool
    """Whether the reported optimum's L-BFGS-B run converged (False only if no start converged)."""
    num_starts: int
    """Starts of the grid (or `starts=`) screened: objective evaluated at each (analysis/_multistart.py)."""
    num_starts_optimized: int
    """Starts L-BFGS-B was run from: the `NUM_SCREENED_STARTS` with the lowest objective (all if fewer)."""
    num_starts_converged: int
    """Of those, starts whose L-BFGS-B run converged."""
    num_points: int
    """Points fitted."""
    delta: float
    """Huber threshold used."""
    local_optima: tuple[tuple[float, ...], ...]
    """Distinct converged end points as θ (see `theta`), best first (the first is this fit): up to 8,
    within a factor 2 of the best objective, among the screened starts' end points (so fewer than a
    full-grid search lists: basins reached only from high-objective starts are not explored). Several mean
    competing basins; the bootstrap starts from them."""

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the reported parameters, e.g. ("E", "A", "B", "alpha", "beta")."""
        return self.law.param_names

    @property
    def params(self) -> dict[str, float]:
        """Reported parameters by name."""
        return {name: getattr(self, name) for name in self.law.param_names}

    @property
    def theta(self) -> np.ndarray:
        """The fitted point in log-sum-exp coordinates (a_1…a_K, e, α_1…α_K), e.g. (a, b, e, α, β)."""
        return self.law.theta_from_params(np.array([getattr(self, n) for n in self.law.param_names]))

    def __repr__(self) -> str:
        params = ", ".join(f"{name}={value:.6g}" for name, value in self.params.items())
        return (
            f"{type(self).__name__}({params}; objective={self.objective:.6g}, r2_log={self.r2_log:.6g}, "
            f"converged={self.converged}, starts_converged={self.num_starts_converged}/"
            f"{self.num_starts_optimized} (best of {self.num_starts}), "
            f"num_points={self.num_points}, delta={self.delta:g})"
        )

    def _predict(self, *x: npt.ArrayLike) -> np.ndarray:
        arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in x))
        log_x = np.log(np.stack([a.ravel() for a in arrays]))
        return np.exp(_log_predict(self.theta[None, :], log_x)[0]).reshape(arrays[0].shape)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ChinchillaFit(ScalingLawFit):
    """L(N, D) = E + A·N^(−α) + B·D^(−β)."""

    law: ClassVar[_Law] = CHINCHILLA

    E: float
    """Irreducible loss."""
    A: float
    """Coefficient of the model-size term."""
    B: float
    """Coefficient of the data term."""
    alpha: float
    """Model-size exponent α."""
    beta: float
    """Data exponent β."""

    def predict(self, N: npt.ArrayLike, D: npt.ArrayLike) -> np.ndarray:
        """Loss at parameters N and tokens D (broadcast together)."""
        return self._predict(N, D)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ComputeLawFit(ScalingLawFit):
    """L(C) = E + A·C^(−α)."""

    law: ClassVar[_Law] = COMPUTE_LAW

    E: float
    """Irreducible loss."""
    A: float
    """Coefficient of the compute term."""
    alpha: float
    """Compute exponent α."""

    def predict(self, C: npt.ArrayLike) -> np.ndarray:
        """Loss at compute C (FLOPs)."""
        return self._predict(C)


_FIT_TYPES: dict[_Law, type[ScalingLawFit]] = {CHINCHILLA: ChinchillaFit, COMPUTE_LAW: ComputeLawFit}


# ----------------------------------------------------------------------------------------------------------
# Grids of starts.


def chinchilla_grid() -> np.ndarray:
    """Chinchilla's 4,500 starts (Hoffmann et al. 2022, App. D) as rows of θ = (a, b, e, α, β)."""
    a = b = np.arange(0.0, 30.0, 5.0)
    e = np.arange(-1.0, 1.5, 0.5)
    alpha = beta = np.arange(0.0, 2.5, 0.5)
    return np.array(list(itertools.product(a, b, e, alpha, beta)))


def compute_law_grid() -> np.ndarray:
    """Chinchilla's grid restricted to one power-law term: 150 starts as rows of θ = (a, e, α)."""
    a = np.arange(0.0, 30.0, 5.0)
    e = np.arange(-1.0, 1.5, 0.5)
    alpha = np.arange(0.0, 2.5, 0.5)
    return np.array(list(itertools.product(a, e, alpha)))


_DEFAULT_GRIDS = {CHINCHILLA: chinchilla_grid, COMPUTE_LAW: compute_law_grid}


# ----------------------------------------------------------------------------------------------------------
# Fitting.


def fit_chinchilla(
    N: ArrayOrColumn,
    D: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    data: pl.DataFrame | None = None,
    starts: npt.ArrayLike | None = None,
    delta: float = HUBER_DELTA,
) -> ChinchillaFit:
    """Fit L(N, D) = E + A·N^(−α) + B·D^(−β) (module docstring).

    Args:
        N: parameters per point (for mhc-ladder: activated non-embedding parameters).
        D: training tokens per point.
        loss: loss per point.
        data: a frame whose columns `N`, `D` and `loss` name, when they are strings.
        starts: rows of θ = (a, b, e, α, β) to start L-BFGS-B from; default `chinchilla_grid()`.
        delta: Huber threshold on log-loss residuals.
    """
    columns = _columns("fit_chinchilla", data, N=N, D=D, loss=loss)
    return _fit(CHINCHILLA, *_split_inputs(CHINCHILLA, columns), starts, delta)


def fit_compute_law(
    C: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    data: pl.DataFrame | None = None,
    starts: npt.ArrayLike | None = None,
    delta: float = HUBER_DELTA,
) -> ComputeLawFit:
    """Fit L(C) = E + A·C^(−α) (module docstring).

    Args:
        C: training compute per point (FLOPs).
        loss: loss per point.
        data: a frame whose columns `C` and `loss` name, when they are strings.
        starts: rows of θ = (a, e, α) to start L-BFGS-B from; default `compute_law_grid()`.
        delta: Huber threshold on log-loss residuals.
    """
    columns = _columns("fit_compute_law", data, C=C, loss=loss)
    return _fit(COMPUTE_LAW, *_split_inputs(COMPUTE_LAW, columns), starts, delta)


def _fit(
    law: _Law,
    log_x: np.ndarray,
    log_loss: np.ndarray,
    starts: npt.ArrayLike | None,
    delta: float,
) -> ScalingLawFit:
    """Multi-start fit on (K, P) log inputs; shared by the public fits, the bootstrap and the rollout."""
    num_params = len(law.param_names)
    if log_loss.size <= num_params:
        raise ValueError(
            f"{log_loss.size} points cannot determine the {num_params} parameters {law.param_names}"
        )
    if not delta > 0:
        raise ValueError(f"delta ({delta}) must be > 0")
    x0 = _DEFAULT_GRIDS[law]() if starts is None else np.array(starts, dtype=np.float64, ndmin=2)
    if x0.ndim != 2 or x0.shape[1] != num_params:
        raise ValueError(f"starts must have shape (num_starts, {num_params}), got {x0.shape}")
    objective = _batch_objective(log_x, log_loss, None, delta)
    kept = x0[screen_starts(objective, x0, NUM_SCREENED_STARTS)]
    result = minimize_many(objective, kept)
    fit = _fit_result(law, log_x, log_loss, delta, result.x, result.fun, result.converged)
    return dataclasses.replace(fit, num_starts=int(x0.shape[0]), num_starts_optimized=int(kept.shape[0]))


def _fit_result(
    law: _Law,
    log_x: np.ndarray,
    log_loss: np.ndarray,
    delta: float,
    end_points: np.ndarray,
    objectives: np.ndarray,
    converged: np.ndarray,
) -> ScalingLawFit:
    """The fit for the best converged end point (the best of all, flagged unconverged, if none converged)."""
    finite = np.isfinite(objectives) & np.isfinite(end_points).all(axis=1)
    if not finite.any():
        raise ValueError(f"all {end_points.shape[0]} starts ended at a non-finite objective; check starts=")
    usable = converged & finite
    if not usable.any():
        logger.warning(
            "no L-BFGS-B start converged (%d starts, %d points); reporting the lowest objective reached, "
            "flagged converged=False",
            end_points.shape[0],
            log_loss.size,
        )
        usable = finite
    order = [i for i in np.argsort(np.where(usable, objectives, np.inf), kind="stable") if usable[i]]
    best = end_points[order[0]]
    distinct: list[np.ndarray] = []
    for i in order:
        if objectives[i] > _LOCAL_OPTIMUM_MAX_RATIO * objectives[order[0]]:
            break
        if all(np.abs(end_points[i] - kept).max() > _DISTINCT_OPTIMUM_TOL for kept in distinct):
            distinct.append(end_points[i])
            if len(distinct) == _NUM_LOCAL_OPTIMA_KEPT:
                break
    objective = float(_huber_objective(best[None, :], log_x, log_loss, None, delta)[0][0])
    predicted = _log_predict(best[None, :], log_x)[0]
    total = np.sum((log_loss - log_loss.mean()) ** 2)
    r2 = 1.0 - np.sum((log_loss - predicted) ** 2) / total if total > 0 else float("nan")
    params = law.params_from_theta(best)
    return _FIT_TYPES[law](
        **{name: float(v) for name, v in zip(law.param_names, params, strict=True)},
        objective=objective,
        r2_log=float(r2),
        converged=bool(converged[order[0]]),
        num_starts=int(end_points.shape[0]),
        num_starts_optimized=int(end_points.shape[0]),
        num_starts_converged=int(converged.sum()),
        num_points=int(log_loss.size),
        delta=float(delta),
        local_optima=tuple(tuple(float(v) for v in point) for point in distinct),
    )


# ----------------------------------------------------------------------------------------------------------
# Inputs.


def _columns(caller: str, data: pl.DataFrame | None, **named: ArrayOrColumn) -> dict[str, np.ndarray]:
    """Resolve arrays or `data` column names into positive, finite, equally long float arrays."""
    out = {}
    for name, value in named.items():
        if isinstance(value, str):
            if data is None:
                raise ValueError(f"{caller}: {name}={value!r} names a column but no data= frame was given")
            if value not in data.columns:
                raise ValueError(f"{caller}: {name}={value!r} is not a column of data ({data.columns})")
            value = data.get_column(value)
        array = np.asarray(value, dtype=np.float64)
        if array.ndim != 1:
            raise ValueError(f"{caller}: {name} must be one-dimensional, got shape {array.shape}")
        bad = ~(np.isfinite(array) & (array > 0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{caller}: {name} has {int(bad.sum())} values that are not finite and > 0 (first at index "
                f"{first}: {array[first]}); the fit works on logarithms"
            )
        out[name] = array
    lengths = {name: a.size for name, a in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{caller}: inputs differ in length: {lengths}")
    return out


def _labels(caller: str, data: pl.DataFrame | None, name: str, value: ArrayOrColumn, size: int) -> np.ndarray:
    """Resolve a label column (any values, e.g. run ids) of the given length."""
    if isinstance(value, str):
        if data is None or value not in data.columns:
            raise ValueError(f"{caller}: {name}={value!r} is not a column of data")
        value = data.get_column(value)
    labels = value.to_numpy() if isinstance(value, pl.Series) else np.asarray(value)
    if labels.shape != (size,):
        raise ValueError(f"{caller}: {name} must have one label per point ({size}), got shape {labels.shape}")
    return labels


def _split_inputs(law: _Law, columns: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(K, P) log inputs and (P,) log losses from resolved columns."""
    return np.log([columns[name] for name in law.inputs]), np.log(columns["loss"])
