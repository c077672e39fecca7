"""The tuning panel, drawn from the trials frame of a real Optuna study (tests/dashboards/conftest.py).

Every point is checked against the frame `orchestrator.tune.trials_frame` read from the storage, and the
Pareto front drawn against Optuna's own ``study.best_trials``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
import pytest

from dashboards import TUNING_COLUMNS, tuning_figure
from orchestrator.tune import trials_frame

if TYPE_CHECKING:  # the fixtures' type (conftest modules are not imported by tests)
    from tests.dashboards.conftest import TuningStudy

PANELS = {"x": "val_loss", "x2": "step_time_overhead", "x3": "ds_error"}
OUTCOMES = "x4"


def drawn(study: TuningStudy) -> tuple[pl.DataFrame, go.Figure]:
    trials = trials_frame(study.storage, study.name)
    return trials, tuning_figure(trials)


def trace(figure: go.Figure, name: str, xaxis: str) -> Any:
    found = [t for t in figure.data if t.name == name and (t.xaxis or "x") == xaxis]
    assert len(found) == 1, [(t.name, t.xaxis) for t in figure.data]
    return found[0]


def numbers(points: Any) -> list[int]:
    return [int(row[0]) for row in points.customdata]


def test_the_pareto_front_drawn_in_every_panel_is_optunas_best_trials(tuning_study: TuningStudy) -> None:
    trials, figure = drawn(tuning_study)
    for axis, metric in PANELS.items():
        front = trace(figure, "Pareto front", axis)
        assert set(numbers(front)) == tuning_study.best_numbers
        expected = trials.filter(pl.col("number").is_in(numbers(front))).sort("number")
        np.testing.assert_array_equal(np.asarray(front.x), expected.get_column("sinkhorn_iters").to_numpy())
        np.testing.assert_array_equal(np.asarray(front.y), expected.get_column(metric).to_numpy())
    assert set(np.asarray(trace(figure, "Pareto front", "x").x)) == tuning_study.front_iterations


def test_every_complete_trial_is_drawn_with_the_values_of_the_frame(tuning_study: TuningStudy) -> None:
    trials, figure = drawn(tuning_study)
    complete = trials.filter(pl.col("state") == "COMPLETE").sort("number")
    assert complete.height == len(tuning_study.complete)
    for axis, metric in PANELS.items():
        points = trace(figure, "complete", axis)
        assert numbers(points) == complete.get_column("number").to_list()
        np.testing.assert_array_equal(np.asarray(points.x), complete.get_column("sinkhorn_iters").to_numpy())
        np.testing.assert_array_equal(np.asarray(points.y), complete.get_column(metric).to_numpy())
    assert figure.layout.yaxis2.tickformat == ".0%"  # the overhead is a fraction, shown as percent
    assert figure.layout.yaxis3.type == "log"


def test_failed_and_duplicate_trials_appear_only_as_outcomes_at_their_iterations(tuning_study: TuningStudy) -> None:
    trials, figure = drawn(tuning_study)
    for outcome, iters in tuning_study.others.items():
        points = trace(figure, outcome, OUTCOMES)
        assert list(np.asarray(points.x)) == [iters] and list(points.y) == [outcome]
        assert numbers(points) == trials.filter(pl.col("outcome") == outcome).get_column("number").to_list()
    metric_points = sum(len(t.x) for t in figure.data if (t.xaxis or "x") in PANELS and t.name == "complete")
    assert metric_points == len(PANELS) * len(tuning_study.complete)
    assert sum(len(t.x) for t in figure.data if t.xaxis == OUTCOMES) == trials.height


def test_a_pruned_trial_is_an_outcome_and_one_objectives_front_is_its_best_trial(pruned_study: TuningStudy) -> None:
    trials, figure = drawn(pruned_study)
    points = trace(figure, "pruned", OUTCOMES)
    assert list(np.asarray(points.x)) == [pruned_study.others["pruned"]]
    assert trials.filter(pl.col("number") == numbers(points)[0]).get_column("last_step").to_list() == [20]
    front = trace(figure, "Pareto front", "x")
    assert set(numbers(front)) == pruned_study.best_numbers
    assert set(np.asarray(front.x)) == pruned_study.front_iterations


def test_nothing_to_draw_is_said_in_words(tuning_study: TuningStudy) -> None:
    trials = trials_frame(tuning_study.storage, tuning_study.name)
    unsearched = tuning_figure(trials.with_columns(pl.lit(None, pl.Int64).alias("sinkhorn_iters")))
    assert "does not search the Sinkhorn" in unsearched.layout.annotations[0].text
    assert "no trials yet" in tuning_figure(trials.clear()).layout.annotations[0].text
    with pytest.raises(ValueError, match="lacks columns"):
        tuning_figure(trials.drop("pareto"))
    assert set(TUNING_COLUMNS) <= set(trials.columns)
