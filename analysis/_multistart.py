"""SciPy's L-BFGS-B from many starting points at once, with one vectorised objective call per round.

`scipy.optimize.minimize(method="L-BFGS-B")` runs one start at a time and spends most of each evaluation in
Python wrappers: from the 4,500 starts of the Chinchilla grid, about a minute per fit. L-BFGS-B itself is a
reverse-communication routine: SciPy's `_lbfgsb.setulb` returns whenever it needs f and ∇f at a new x. Here
every start keeps its own workspace and all starts are stepped in lock-step, so each round evaluates the
objective for every start that asked, in one numpy call. The iterates are bit-for-bit those of
`minimize(..., method="L-BFGS-B", jac=True)` with the same options (tests/analysis/test_fits.py checks
this); only the bookkeeping is batched.

`setulb` is private SciPy API; its signature changed in SciPy 1.15 (the Fortran-to-C port). Where it is
missing or misbehaves (probed once on a quadratic) we fall back to one `minimize` call per start -- same
results, several times slower -- with a warning. Only unbounded problems are needed here, so bounds are not
exposed.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize

__all__ = [
    "NUM_SCREENED_STARTS",
    "BatchObjective",
    "LbfgsbOptions",
    "MultiStartResult",
    "minimize_many",
    "screen_starts",
]

BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""`(x_SP, rows_S) -> (f_S, grad_SP)`: objective and gradient at S points; `rows` are the starts' indices."""

# setulb's task codes (scipy/optimize/_lbfgsb_py.py, status_messages / task_messages).
_TASK_NEW_X, _TASK_FG, _TASK_CONVERGENCE, _TASK_STOP = 1, 3, 4, 5
_STOP_MAXFUN, _STOP_MAXITER = 502, 504

NUM_SCREENED_STARTS = 64
"""Starts of a grid that L-BFGS-B is run from: the ones with the lowest objective (`screen_starts`).

Evaluating the objective at all 4,500 Chinchilla-grid starts is one vectorised pass (~0.01 s); running
L-BFGS-B from all of them took ~10 s per fit on 2 shared cores, and the rollout and the report fit the
surface many times. On Epoch AI's Chinchilla data ~1,000 of the 4,500 starts end at the best optimum and
the start with the lowest objective is one of them (22-24 of the best 64 are); the best 64 give the full
grid's optimum to 2e-7 relative in every parameter (240 points; 2.5e-8 on all 245) for ~40x less time.
64 rather than 16-32 leaves margin for data whose best basin is reached from fewer starts, at ~0.1 s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LbfgsbOptions:
    """L-BFGS-B stopping rules and memory; the defaults are SciPy's `minimize(method="L-BFGS-B")` ones."""

    ftol: float = 2.2204460492503131e-09
    """Stop when (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol."""
    gtol: float = 1e-5
    """Stop when the largest gradient component is <= gtol."""
    maxiter: int = 15000
    """Iterations per start before giving up (not converged)."""
    maxfun: int = 15000
    """Objective evaluations per start before giving up (not converged)."""
    maxcor: int = 10
    """Number of correction pairs in the limited-memory Hessian."""
    maxls: int = 20
    """Line-search steps per iteration."""


@dataclass(frozen=True, slots=True)
class MultiStartResult:
    """End point of every start; row s belongs to start s."""

    x: np.ndarray
    """(S, P) end points."""
    fun: np.ndarray
    """(S,) objective at the end points."""
    converged: np.ndarray
    """(S,) True where L-BFGS-B stopped on its convergence test (SciPy's `success`)."""
    num_iterations: np.ndarray
    """(S,) L-BFGS-B iterations taken."""


def minimize_many(
    fg: BatchObjective, x0: np.ndarray, options: LbfgsbOptions | None = None
) -> MultiStartResult:
    """Minimise from each row of `x0` (S starts of dimension P) with L-BFGS-B; see the module docstring."""
    x0 = np.array(x0, dtype=np.float64, ndmin=2)
    options = LbfgsbOptions() if options is None else options
    with _one_blas_thread():
        return _minimize(fg, x0, options)


def screen_starts(fg: BatchObjective, x0: np.ndarray, keep: int = NUM_SCREENED_STARTS) -> np.ndarray:
    """Indices of the `keep` rows of `x0` with the lowest objective, best first (all rows if fewer).

    One objective call over every start (no optimisation); non-finite objectives sort last. Ties keep the
    grid order, so the selection is deterministic. Only for starts of one problem: `fg` sees rows 0..S-1."""
    x0 = np.array(x0, dtype=np.float64, ndmin=2)
    if x0.shape[0] <= keep:
        return np.arange(x0.shape[0])
    f, _ = fg(x0, np.arange(x0.shape[0]))
    f = np.where(np.isfinite(f), f, np.inf)
    return np.argsort(f, kind="stable")[:keep]


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """L-BFGS-B's dense algebra is on (2·maxcor)² matrices, so BLAS threads only add overhead; on a loaded
    machine OpenBLAS's spinning workers made each setulb call ~50x slower (measured on 2 shared cores).
    threadpoolctl comes with scikit-learn (an MLflow dependency); without it fits are only slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimize(fg: BatchObjective, x0: np.ndarray, options: LbfgsbOptions) -> MultiStartResult:
    if _lockstep_works():
        return _minimize_lockstep(fg, x0, options)
    warnings.warn(
        "analysis: SciPy's private L-BFGS-B routine (scipy.optimize._lbfgsb.setulb) is missing or has a "
        f"signature this module does not know (SciPy {_scipy_version()}), so multi-start fits fall back to "
        "one scipy.optimize.minimize call per start: same results, several times slower. Install "
        "SciPy >= 1.15 to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )
    return _minimize_each(fg, x0, options)


def _minimize_lockstep(fg: BatchObjective, x0: np.ndarray, options: LbfgsbOptions) -> MultiStartResult:
    """One `setulb` workspace per start, f/∇f requests batched per round (as SciPy's `_minimize_lbfgsb`)."""
    from scipy.optimize import _lbfgsb

    num_starts, dim = x0.shape
    m = options.maxcor
    x = x0.copy()
    f = np.zeros(num_starts)
    g = np.zeros((num_starts, dim))
    # Unbounded: nbd = 0 for every variable, so the bound arrays are never read.
    lower, upper, nbd = np.zeros(dim), np.zeros(dim), np.zeros(dim, np.int32)
    factr = options.ftol / np.finfo(float).eps
    wa = np.zeros((num_starts, 2 * m * dim + 5 * dim + 11 * m * m + 8 * m))
    iwa = np.zeros((num_starts, 3 * dim), np.int32)
    task = np.zeros((num_starts, 2), np.int32)
    ln_task = np.zeros((num_starts, 2), np.int32)
    lsave = np.zeros((num_starts, 4), np.int32)
    isave = np.zeros((num_starts, 44), np.int32)
    dsave = np.zeros((num_starts, 29))
    num_iterations = np.zeros(num_starts, np.int64)
    num_evaluations = np.zeros(num_starts, np.int64)

    setulb, gtol, maxls = _lbfgsb.setulb, options.gtol, options.maxls
    # Row views made once: setulb runs ~150 times per start, and slicing nine arrays per call costs as much.
    rows_of = [list(a) for a in (x, g, wa, iwa, task, lsave, isave, dsave, ln_task)]
    views = list(zip(*rows_of, strict=True))
    pending = range(num_starts)
    while True:
        asking = []
        for s in pending:
            x_s, g_s, wa_s, iwa_s, task_s, lsave_s, isave_s, dsave_s, ln_task_s = views[s]
            while True:
                setulb(m, x_s, lower, upper, nbd, f[s], g_s, factr, gtol, wa_s, iwa_s, task_s, lsave_s,
                       isave_s, dsave_s, maxls, ln_task_s)  # fmt: skip
                code = task_s[0]
                if code == _TASK_FG:
                    asking.append(s)
                    break
                if code != _TASK_NEW_X:
                    break  # converged, stopped or failed
                num_iterations[s] += 1
                if num_iterations[s] >= options.maxiter:
                    task[s] = (_TASK_STOP, _STOP_MAXITER)
                elif num_evaluations[s] > options.maxfun:
                    task[s] = (_TASK_STOP, _STOP_MAXFUN)
        if not asking:
            break
        rows = np.asarray(asking)
        f[rows], g[rows] = fg(x[rows], rows)
        num_evaluations[rows] += 1
        pending = asking
    return MultiStartResult(
        x=x, fun=f, converged=task[:, 0] == _TASK_CONVERGENCE, num_iterations=num_iterations
    )


def _minimize_each(fg: BatchObjective, x0: np.ndarray, options: LbfgsbOptions) -> MultiStartResult:
    """The reference path: one public `scipy.optimize.minimize` call per start."""
    results = []
    for s, start in enumerate(x0):
        rows = np.array([s])

        def scalar_fg(theta: np.ndarray, rows: np.ndarray = rows) -> tuple[float, np.ndarray]:
            f, g = fg(theta[None, :], rows)
            return float(f[0]), g[0]

        results.append(
            optimize.minimize(
                scalar_fg,
                start,
                jac=True,
                method="L-BFGS-B",
                options={
                    "ftol": options.ftol,
                    "gtol": options.gtol,
                    "maxiter": options.maxiter,
                    "maxfun": options.maxfun,
                    "maxcor": options.maxcor,
                    "maxls": options.maxls,
                },
            )
        )
    return MultiStartResult(
        x=np.array([r.x for r in results]).reshape(x0.shape),
        fun=np.array([r.fun for r in results], dtype=np.float64),
        converged=np.array([r.success for r in results], dtype=bool),
        num_iterations=np.array([r.nit for r in results], dtype=np.int64),
    )


@functools.cache
def _lockstep_works() -> bool:
    """Probe the private routine once on a quadratic whose minimum is known."""

    def quadratic(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((x - 1.0) ** 2).sum(axis=1), 2.0 * (x - 1.0)

    try:
        result = _minimize_lockstep(quadratic, np.array([[0.0, 3.0], [-2.0, 5.0]]), LbfgsbOptions())
    except Exception:  # any failure of a private API means "do not use it"
        return False
    return bool(result.converged.all() and np.allclose(result.x, 1.0, atol=1e-6))


def _scipy_version() -> str:
    import scipy

    return scipy.__version__
