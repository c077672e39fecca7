"""Rollout extrapolation error: fit a scaling law on the smaller sizes (or budgets), predict the larger ones.

A law that matches the points it was fitted on can still extrapolate badly, and extrapolation is what a
scaling law is for; so the headline fit-quality number is the mean absolute relative error |L̂/L − 1| of the
held-out larger points. The split is on one input: model size N, tokens D or compute C = 6·N·D for the
Chinchilla surface, compute C for the compute law. By default the largest distinct value is held out
(`num_held_out=1`); where values are noisy (sizes read off a figure) give `split_at`: points at or below it
are fitted, points above it predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import polars as pl

from analysis.fits import (
    CHINCHILLA,
    COMPUTE_LAW,
    HUBER_DELTA,
    ArrayOrColumn,
    ScalingLawFit,
    _columns,
    _fit,
    _Law,
    _split_inputs,
)

__all__ = ["Rollout", "rollout_chinchilla", "rollout_compute_law"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """A fit on the points with `split_by` <= `split_at` and its predictions for the points above."""

    fit: ScalingLawFit
    """The fit on the smaller points."""
    split_by: str
    """The input split on: "N", "D" or "C"."""
    split_at: float
    """Largest fitted value of `split_by`."""
    train_index: np.ndarray = field(compare=False, repr=False)
    """Positions (in the inputs) of the fitted points."""
    test_index: np.ndarray = field(compare=False, repr=False)
    """Positions (in the inputs) of the held-out points."""
    observed: np.ndarray = field(compare=False, repr=False)
    """Held-out points' losses."""
    predicted: np.ndarray = field(compare=False, repr=False)
    """Held-out points' predicted losses."""
    relative_error: np.ndarray = field(compare=False, repr=False)
    """Held-out points' L̂/L − 1."""
    mean_abs_relative_error: float
    """The headline: mean of |L̂/L − 1| over the held-out points."""


def rollout_chinchilla(
    N: ArrayOrColumn,
    D: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    data: pl.DataFrame | None = None,
    split_by: Literal["N", "D", "C"] = "N",
    split_at: float | None = None,
    num_held_out: int = 1,
    starts: npt.ArrayLike | None = None,
    delta: float = HUBER_DELTA,
) -> Rollout:
    """Fit the Chinchilla surface on the smaller points and score its predictions of the larger ones.

    Args:
        N, D, loss, data, starts, delta: as for `fit_chinchilla`.
        split_by: the input that orders points from small to large: "N", "D" or "C" (= 6·N·D).
        split_at: fit the points whose `split_by` is <= this; default: all but the `num_held_out` largest.
        num_held_out: how many of the largest distinct `split_by` values to hold out when `split_at` is None.
    """
    columns = _columns("rollout_chinchilla", data, N=N, D=D, loss=loss)
    if split_by not in ("N", "D", "C"):
        raise ValueError(f"rollout_chinchilla: split_by ({split_by!r}) must be 'N', 'D' or 'C'")
    values = 6.0 * columns["N"] * columns["D"] if split_by == "C" else columns[split_by]
    return _rollout(
        "rollout_chinchilla", CHINCHILLA, columns, split_by, values, split_at, num_held_out, starts, delta
    )


def rollout_compute_law(
    C: ArrayOrColumn,
    loss: ArrayOrColumn,
    *,
    data: pl.DataFrame | None = None,
    split_at: float | None = None,
    num_held_out: int = 1,
    starts: npt.ArrayLike | None = None,
    delta: float = HUBER_DELTA,
) -> Rollout:
    """Fit the compute law on the smaller budgets and score its predictions of the larger ones (see
    `rollout_chinchilla`; the split is on C)."""
    columns = _columns("rollout_compute_law", data, C=C, loss=loss)
    values = columns["C"]
    return _rollout(
        "rollout_compute_law", COMPUTE_LAW, columns, "C", values, split_at, num_held_out, starts, delta
    )


def _rollout(
    caller: str,
    law: _Law,
    columns: dict[str, np.ndarray],
    split_by: str,
    values: np.ndarray,
    split_at: float | None,
    num_held_out: int,
    starts: npt.ArrayLike | None,
    delta: float,
) -> Rollout:
    if split_at is None:
        distinct = np.unique(values)
        if not 1 <= num_held_out < distinct.size:
            raise ValueError(
                f"{caller}: num_held_out ({num_held_out}) must be >= 1 and below the number of distinct "
                f"values of {split_by} ({distinct.size})"
            )
        split_at = float(distinct[-num_held_out - 1])
    train = values <= split_at
    num_params = len(law.param_names)
    if train.sum() <= num_params or train.all():
        raise ValueError(
            f"{caller}: split_at={split_at:g} on {split_by} leaves {int(train.sum())} points to fit and "
            f"{int((~train).sum())} to predict; it needs more than {num_params} to fit and one to predict"
        )
    log_x, log_loss = _split_inputs(law, columns)
    fit = _fit(law, log_x[:, train], log_loss[train], starts, delta)
    test_index = np.flatnonzero(~train)
    observed = columns["loss"][test_index]
    predicted = fit._predict(*(columns[name][test_index] for name in law.inputs))
    relative_error = predicted / observed - 1.0
    return Rollout(
        fit=fit,
        split_by=split_by,
        split_at=float(split_at),
        train_index=np.flatnonzero(train),
        test_index=test_index,
        observed=observed,
        predicted=predicted,
        relative_error=relative_error,
        mean_abs_relative_error=float(np.abs(relative_error).mean()),
    )
