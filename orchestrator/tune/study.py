"""The Optuna side of tuning: RDB storage with heartbeats, samplers, pruners, opening a study, the ledger.

Choices:
- RDB storage only (SQLite by default, any SQLAlchemy URL on a cluster). Only RDB storage has heartbeats: a
  trial whose heartbeat stops for ``grace_s`` is marked FAIL by `optuna.storages.fail_stale_trials`, and
  `RetryHeartbeatStaleTrialCallback` (Optuna 5's name for ``RetryFailedTrialCallback``, which 4.9 deprecated)
  enqueues a WAITING copy with the same parameters, intermediate values and user attributes; ``study.ask``
  pops it first. With a journal file a dead worker's trial would stay RUNNING forever.
- Optuna's heartbeat thread belongs to ``Study.optimize``; with ask-and-tell across processes we record
  heartbeats ourselves (`record_heartbeat` is the storage's public API): the driver from ``ask`` until a
  worker claims the trial and while a finished trial waits for the baseline, the worker while it trains.
- Samplers are seeded with ``seed + trials so far``: a resumed study re-seeds deterministically instead of
  replaying the first invocation's proposals. NSGA-II keeps its generations in the storage, TPE refits on it.
- The study stores a fingerprint of the search space, objectives and base run; resuming with a different one
  is an error (a new study name is the way to change them), because Optuna would silently mix spaces.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.errors import LadderError
from orchestrator.tune.spec import HeartbeatConfig, TuningSpec

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

__all__ = [
    "OUTCOME",
    "TrialLedger",
    "TuningError",
    "ledger",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "masked_url",
    "open_study",
    "optuna_module",
    "quiet_optuna",
    "trial_id",
]

log = logging.getLogger(__name__)

# User attribute the driver sets when it settles a trial: complete | pruned | diverged | error | duplicate.
# A trial FAILed by the heartbeat has none (its retry copies the user attributes of a RUNNING trial).
OUTCOME = "outcome"
FINGERPRINT = "fingerprint"


class TuningError(LadderError):
    """A study cannot run as asked (changed search space, failed baseline, missing study)."""


def optuna_module() -> Any:
    """`optuna`, imported on first use (about a second) with a hint if it is missing."""
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - optuna is a dependency of the project
        raise ImportError(
            "tuning needs Optuna: pip install 'optuna==5.0.0' (an mhc-ladder dependency)"
        ) from error
    return optuna


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's experimental-feature warnings (heartbeats, constant liar) and its advice that
    heartbeats go with ``Study.optimize``: we run the heartbeats ourselves (see the module doc)."""
    optuna = optuna_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def masked_url(url: str) -> str:
    """The storage URL with any password hidden, for logs, tags and the terminal."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: show the scheme only
        return url.split("://", 1)[0] + "://***"


def make_storage(url: str, heartbeat: HeartbeatConfig, *, retry: bool) -> RDBStorage:
    """RDB storage with heartbeats; ``retry``: the driver's, whose stale-trial callback enqueues retries."""
    optuna = optuna_module()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes write heartbeats: wait for the file lock, not fail at sqlite3's 5 s default.
        engine_kwargs["connect_args"] = {"timeout": 60}
    with quiet_optuna():
        callback = (
            optuna.storages.RetryHeartbeatStaleTrialCallback(
                heartbeat.max_retry, inherit_intermediate_values=True
            )
            if retry
            else None
        )
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat.interval_s,
            grace_period=heartbeat.grace_s,
            heartbeat_stale_trial_callback=callback,
        )


def make_sampler(spec: TuningSpec, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with ``seed + trials_so_far`` (see the module doc)."""
    optuna = optuna_module()
    seed = spec.sampler.seed + trials_so_far
    n_trials = spec.budget.n_trials
    kind = spec.sampler_kind
    with quiet_optuna():
        if kind == "nsga2":
            population = spec.sampler.population_size or max(4, min(50, n_trials // 4))
            return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
        if kind == "tpe":
            startup = spec.sampler.n_startup_trials
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=startup if startup is not None else max(1, min(10, n_trials // 3)),
                multivariate=True,
                constant_liar=spec.budget.parallelism
                > 1,  # running trials count as bad: parallel asks spread
            )
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(kind: str, options: dict[str, Any] | None) -> optuna.pruners.BasePruner:
    """A pruner from the spec's (resolved) kind and its options; resources are training steps."""
    optuna = optuna_module()
    options = options or {}
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=options.get("n_startup_trials", 2),
            n_warmup_steps=options.get("n_warmup_steps", 0),
        )
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=options.get("min_resource") or "auto",
            reduction_factor=options.get("reduction_factor", 3),
        )
    return optuna.pruners.NopPruner()


def open_study(spec: TuningSpec, storage: RDBStorage) -> optuna.Study:
    """Create or load the study (checking it was made for the same search); enqueue the spec's points."""
    optuna = optuna_module()
    options = spec.pruner.model_dump() if spec.pruner is not None else None
    with quiet_optuna():
        study = optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            directions=spec.directions,
            load_if_exists=True,
            pruner=make_pruner(spec.pruner_kind, options),
        )
    fingerprint = spec.fingerprint()
    stored = study.user_attrs.get(FINGERPRINT)
    if stored is None:
        study.set_user_attr(FINGERPRINT, fingerprint)
    elif stored.get("digest") != fingerprint["digest"]:
        changed = [
            key
            for key in ("search", "metrics", "weights", "base_run_key")
            if stored.get(key) != fingerprint[key]
        ]
        raise TuningError(
            f"study {spec.study_name!r} in {masked_url(spec.storage_url)} was created with another "
            f"{', '.join(changed)}: resuming would mix incomparable trials. Keep the spec as it was, or give "
            "study.name a new name for the new search"
        )
    if list(study.directions) != [optuna.study.StudyDirection.MINIMIZE] * len(spec.directions):
        raise TuningError(
            f"study {spec.study_name!r} has directions {study.directions}, expected {spec.directions}"
        )
    with quiet_optuna():
        names = spec.metrics if spec.weights is None else ["weighted_sum"]
        if study.metric_names != names:  # optuna-dashboard labels the axes with these
            study.set_metric_names(names)
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    return study


def trial_id(storage: RDBStorage, study_name: str, number: int) -> int:
    """The storage id of trial ``number`` (Optuna keeps it private on Trial; the storage API is public)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


@dataclass(frozen=True, slots=True)
class TrialLedger:
    """The study's trials, sorted by what they mean for the budget."""

    done: list[FrozenTrial]  # complete, pruned, or failed for good (diverged, error, retries exhausted)
    running: list[FrozenTrial]
    waiting: list[FrozenTrial]  # retries (and enqueued points) that `ask` will pop first
    duplicates: list[FrozenTrial]  # proposals equal to an earlier trial, told FAIL without training
    retried: list[FrozenTrial]  # FAILed by the heartbeat and retried as a later trial

    def budget_left(self, n_trials: int) -> int:
        """New trials the study may still ask for (waiting ones are popped before any new one)."""
        return n_trials - len(self.done) - len(self.running) - len(self.waiting)

    def count(self, state: str) -> int:
        return sum(t.state.name == state for t in self.done)


def ledger(trials: list[FrozenTrial]) -> TrialLedger:
    """Classify ``trials`` (see `TrialLedger`)."""
    retried_numbers = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    done, running, waiting, duplicates, retried = [], [], [], [], []
    for trial in trials:
        state = trial.state.name
        if state == "RUNNING":
            running.append(trial)
        elif state == "WAITING":
            waiting.append(trial)
        elif state == "FAIL" and trial.user_attrs.get(OUTCOME) == "duplicate":
            duplicates.append(trial)
        elif state == "FAIL" and trial.number in retried_numbers:
            retried.append(trial)
        else:
            done.append(trial)
    return TrialLedger(done, running, waiting, duplicates, retried)
