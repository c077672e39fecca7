"""A real Optuna study in SQLite storage, its trials told the way `ladder tune` tells them (orchestrator/tune/
runner.py): ask with the searched distribution, the user attributes the driver and worker set (``run_key``,
``worker``, then ``outcome``, ``run_id``, ``steps`` and the measured metrics), tell COMPLETE with the objective
values in the spec's order (val_loss, step_time_overhead, ds_error), PRUNED after intermediate reports, or FAIL
(diverged, error, and a duplicate proposal told FAIL without training).

The planted trials make a known Pareto front over the three objectives: 25 iterations is dominated by 20 (worse
loss and overhead, equal error), 15 by 10; the other complete trials each win somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

STUDY = "sinkhorn-tuning"
# iterations -> (val_loss, step_time_overhead (fraction), ds_error)
COMPLETE = {
    0: (3.30, 0.01, 0.5),
    5: (3.10, 0.04, 1e-2),
    10: (3.12, 0.06, 1e-3),
    15: (3.20, 0.08, 1e-3),
    20: (3.05, 0.09, 1e-5),
    25: (3.06, 0.11, 1e-5),
    30: (3.051, 0.12, 1e-7),
}
DOMINATED = {15, 25}
DIVERGED_ITERS, ERROR_ITERS, DUPLICATE_ITERS = 1, 3, 20
PRUNED_ITERS = 2  # in the single-objective study (Optuna prunes only single-objective studies)


@dataclass(frozen=True)
class TuningStudy:
    storage: str
    name: str
    best_numbers: frozenset[int]
    """`study.best_trials` (one objective: `study.best_trial`), as Optuna computes them."""
    complete: dict[int, tuple[float, float, float]]
    """The COMPLETE trials: iterations -> (val_loss, step_time_overhead, ds_error)."""
    front_iterations: frozenset[int]
    """Iterations of the planted Pareto front (three objectives) or of the best trial (one)."""
    others: dict[str, int]
    """Outcome -> iterations of the trials that did not complete."""


def _ask(study: optuna.Study, iters: int, *, duplicate: bool = False) -> optuna.Trial:
    """``study.ask`` on the enqueued point, with the attributes the driver sets before training."""
    study.enqueue_trial({"sinkhorn_iters": iters})
    trial = study.ask({"sinkhorn_iters": IntDistribution(0, 30)})
    assert trial.params["sinkhorn_iters"] == iters
    trial.set_user_attr("worker", None)
    if not duplicate:
        trial.set_user_attr("run_key", f"{study.study_name}-it{iters}")
        trial.set_user_attr("worker", "host:1234")  # the worker claims it
    return trial


def _complete(trial: optuna.Trial, iters: int, loss: float, overhead: float, error: float) -> None:
    for name, value in {
        "outcome": "complete",
        "run_id": f"run{iters:02d}",
        "steps": 60,
        "val_loss": loss,
        "ds_error": error,
        "step_time_s": 0.1 * (1 + overhead),
        "step_time_overhead": overhead,
    }.items():
        trial.set_user_attr(name, value)


def build_tuning_study(root: Path, *, single_objective: bool = False) -> TuningStudy:
    """The planted study (module doc); with `single_objective`, val_loss alone and one trial pruned at step 20
    after reporting its validation losses."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{root / 'optuna.db'}"
    name = f"{STUDY}-loss" if single_objective else STUDY
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=["minimize"] * (1 if single_objective else 3),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for iters, (loss, overhead, error) in COMPLETE.items():
        trial = _ask(study, iters)
        _complete(trial, iters, loss, overhead, error)
        study.tell(trial, [loss] if single_objective else [loss, overhead, error])
    if single_objective:
        trial = _ask(study, PRUNED_ITERS)
        for step, loss in ((10, 4.0), (20, 3.9)):
            trial.report(loss, step)
        trial.set_user_attr("outcome", "pruned")
        trial.set_user_attr("run_id", "run-pruned")
        trial.set_user_attr("steps", 20)
        study.tell(trial, state=TrialState.PRUNED)
        best = frozenset({study.best_trial.number})
        front = frozenset({min(COMPLETE, key=lambda i: COMPLETE[i][0])})
    else:
        best = frozenset(t.number for t in study.best_trials)
        front = frozenset(COMPLETE) - DOMINATED
    for iters, outcome in ((DIVERGED_ITERS, "diverged"), (ERROR_ITERS, "error")):
        trial = _ask(study, iters)
        trial.set_user_attr("outcome", outcome)
        study.tell(trial, state=TrialState.FAIL)
    trial = _ask(study, DUPLICATE_ITERS, duplicate=True)
    trial.set_user_attr("outcome", "duplicate")
    trial.set_user_attr("duplicate_of", list(COMPLETE).index(DUPLICATE_ITERS))
    study.tell(trial, state=TrialState.FAIL)
    others = {"diverged": DIVERGED_ITERS, "error": ERROR_ITERS, "duplicate": DUPLICATE_ITERS}
    return TuningStudy(
        storage, name, best, COMPLETE, front, others | ({"pruned": PRUNED_ITERS} if single_objective else {})
    )


@pytest.fixture(scope="session")
def tuning_study(tmp_path_factory: pytest.TempPathFactory) -> TuningStudy:
    return build_tuning_study(tmp_path_factory.mktemp("optuna"))


@pytest.fixture(scope="session")
def pruned_study(tmp_path_factory: pytest.TempPathFactory) -> TuningStudy:
    return build_tuning_study(tmp_path_factory.mktemp("optuna-loss"), single_objective=True)
