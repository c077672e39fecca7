"""Run a tuning study: ask-and-tell against Optuna RDB storage, each trial a RunSpec trained in a Ray task.

One driver process (``ladder tune SPEC``) loops:
  1. `fail_stale_trials`: a RUNNING trial whose heartbeat stopped for ``grace_s`` becomes FAIL and the
     storage's retry callback queues a WAITING copy with the same parameters;
  2. while fewer than ``parallelism`` trials run and the budget allows, ``study.ask`` (which pops WAITING
     retries and enqueued points first) and submit the trial's RunSpec as a Ray task. A proposal whose run_key
     equals a live or settled trial's is told FAIL as a ``duplicate`` without training (samplers do repeat
     points of small integer spaces), so every settled trial is a distinct run;
  3. settle finished tasks: FINISHED → read the metrics back from the tracking store → ``study.tell`` (held
     until the baseline's step time is known when the overhead is an objective); PRUNED → tell PRUNED;
     diverged or an exception → tell FAIL; a worker that died → nothing: its heartbeat stops and step 1
     retries the trial, whose RunSpec has the same run_key, so the trainer resumes its checkpoint. A result
     for a trial that the heartbeat failed meanwhile (a worker or database stalled past ``grace_s``) is
     dropped with a warning, never raised: its retry finds the run FINISHED in the tracking store.

The worker reports each evaluation's validation loss with ``trial.report`` and asks ``trial.should_prune()``
(single objective only) through the trainer's ``on_eval``; it loads the trial from the storage by number,
so any worker on any node can run any trial. Heartbeats: the driver records them from ``ask`` until the worker
claims the trial (user attribute ``worker``), the worker while it trains, the driver again while a finished
trial waits for the baseline; each from a thread of its own, so a busy trainer or a stalled driver loop does
not let a live trial lapse. A worker finding its trial already failed (the driver's beats lapsed before the
worker started) does not train it: the retry does.

Resume: the same command continues the study. Settled trials are never repeated; trials of a driver that died
go stale and are retried (resuming their checkpoints, or finding their runs FINISHED and costing nothing);
the sampler is re-seeded with ``seed + trials so far``. The baseline (the base run with the plain residual)
is found through the ledger by its run_key, so it is trained once, and not at all if a sweep already did.

MLflow: a parent run per study (tags ``study_parent``, ``study``; the resolved spec as an artifact); every
trial and the baseline are its children, trials tagged ``study`` and ``optuna_trial`` (the trial number).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import ConfigError
from orchestrator.runspec import RunSpec
from orchestrator.tracking import RunTracker, find_run
from orchestrator.tune.measure import RunMeasurement, measure_run
from orchestrator.tune.spec import HeartbeatConfig, TuningSpec
from orchestrator.tune.study import (
    OUTCOME,
    TuningError,
    ledger,
    make_pruner,
    make_storage,
    masked_url,
    open_study,
    optuna_module,
    quiet_optuna,
    trial_id,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage

__all__ = ["TuneResult", "tune"]

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # host:pid of the process training the trial; None until a worker claims it
# Consecutive duplicate proposals after which the search space counts as exhausted (a 4-value space asked
# for 10 distinct trials): the sampler keeps proposing points that already ran.
MAX_DUPLICATE_STREAK = 50
MAX_ERROR_LENGTH = 500
# A worker's answer when its trial was failed by the heartbeat before it could claim it (see `_claim`).
STALE = "STALE"


@dataclass(frozen=True, slots=True)
class TuneResult:
    """What one invocation left the study with."""

    study_name: str
    storage: str  # masked URL
    n_trials: int
    complete: int
    pruned: int
    failed: int  # failed for good: diverged, error, retries exhausted
    launched: int  # Ray tasks this invocation started (trials and the baseline)
    timed_out: bool
    exhausted: bool  # the sampler ran out of new points
    parent_run_id: str | None
    baseline_run_id: str | None

    @property
    def finished(self) -> bool:
        """Whether the study settled all its trials."""
        return self.complete + self.pruned + self.failed >= self.n_trials


@dataclass(slots=True)
class _Task:
    kind: str  # trial | baseline
    spec: RunSpec
    number: int | None = None
    trial_id: int | None = None


@dataclass(slots=True)
class _Parked:
    trial_id: int
    spec: RunSpec
    measurement: RunMeasurement
    steps: int


# ---------------------------------------------------------------------------------------------- worker side
class _Heartbeat:
    """Records the heartbeats of a set of trials every ``interval_s`` from a daemon thread while the block runs.

    A thread, not the caller's loop: a worker's loop is the trainer, and the driver's loop stalls for seconds at
    a time on a loaded machine (a settle reads the tracking store, SQLite waits for its lock, Ray is slow to
    answer). A beat that waited on such a stall let a live trial's heartbeat lapse past ``grace_s``: the trial
    was failed and retried while it still ran. The set is replaced with `hold` as trials come and go.
    """

    def __init__(self, storage: RDBStorage, trial_ids: set[int], interval_s: int, name: str) -> None:
        self._storage, self._interval = storage, interval_s
        self._held = set(trial_ids)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)
        self._warned: set[int] = set()

    def held(self) -> set[int]:
        """The trial ids beaten for now."""
        with self._lock:
            return set(self._held)

    def hold(self, trial_ids: set[int]) -> None:
        """Beat for exactly ``trial_ids`` from now on (those newly held get a beat at once)."""
        with self._lock:
            new = set(trial_ids) - self._held
            self._held = set(trial_ids)
        for tid in new:
            self._record(tid)

    def _record(self, tid: int) -> None:
        try:
            self._storage.record_heartbeat(tid)
        except Exception as error:  # a locked or unreachable database: the next beat may pass
            if tid not in self._warned:
                log.warning("heartbeat of trial id %d failed (%s); retrying every %d s", tid, error, self._interval)
                self._warned.add(tid)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                held = sorted(self._held)
            for tid in held:
                self._record(tid)

    def __enter__(self) -> _Heartbeat:
        with self._lock:
            held = sorted(self._held)
        for tid in held:
            self._storage.record_heartbeat(tid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _claim(storage: RDBStorage, tid: int) -> bool:
    """Mark the trial as trained by this process (the driver stops beating for it); False if it already
    finished: the driver's heartbeat lapsed before this worker started, so the trial was failed and a retry
    with the same run_key took it over (training it here as well would only wait on the run lock)."""
    optuna = optuna_module()
    try:
        storage.set_trial_user_attr(tid, WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def _trial_task(
    spec_data: dict[str, Any], study_ref: dict[str, Any], number: int, parent_run_id: str | None
) -> dict[str, Any]:
    """Ray task body: train trial ``number``'s RunSpec, reporting evaluations to Optuna (and pruning) here."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # mlflow issue 15713: an inherited run id overrides parent_run_id
    optuna = optuna_module()
    from orchestrator.train import run

    heartbeat = HeartbeatConfig(**study_ref["heartbeat"])
    storage = make_storage(study_ref["storage"], heartbeat, retry=False)
    with quiet_optuna():
        study = optuna.load_study(
            study_name=study_ref["study"],
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=make_pruner(study_ref["pruner_kind"], study_ref["pruner"]),
        )
    tid = trial_id(storage, study_ref["study"], number)
    trial = optuna.trial.Trial(study, tid)
    single = len(study.directions) == 1
    warned = []

    def on_eval(step: int, val_loss: float) -> bool:
        if not single:  # Optuna has no intermediate values or pruning for several objectives
            return False
        try:
            trial.report(val_loss, step)
            return study_ref["pruner_kind"] != "none" and trial.should_prune()
        except Exception as error:  # the trial was failed meanwhile, or the storage is busy: keep training
            if not warned:
                log.warning(
                    "trial %d: reporting step %d to Optuna failed (%s); training on", number, step, error
                )
                warned.append(error)
            return False

    with _Heartbeat(storage, {tid}, heartbeat.interval_s, f"optuna-heartbeat-{tid}"):
        if not _claim(storage, tid):
            log.warning("trial %d was failed by its heartbeat before this worker started: not training it", number)
            return {"status": STALE, "reason": None, "run_id": None, "steps": 0}
        result = run(RunSpec(**spec_data), parent_run_id=parent_run_id, on_eval=on_eval)
    return {
        "status": result.status,
        "reason": result.failure_reason,
        "run_id": result.run_id,
        "steps": result.steps,
    }


def _baseline_task(spec_data: dict[str, Any], parent_run_id: str | None) -> dict[str, Any]:
    """Ray task body: train the baseline run (a plain RunSpec; no Optuna trial)."""
    os.environ.pop("MLFLOW_RUN_ID", None)
    from orchestrator.train import run

    result = run(RunSpec(**spec_data), parent_run_id=parent_run_id)
    return {
        "status": result.status,
        "reason": result.failure_reason,
        "run_id": result.run_id,
        "steps": result.steps,
    }


# ---------------------------------------------------------------------------------------------- driver side
def _parent_run(spec: TuningSpec, spec_file: Path | None) -> str:
    """The study's parent MLflow run (created on the first invocation; later ones attach to it)."""
    tracking = spec.tracking_config
    identity = f"{spec.storage_url}|{spec.study_name}"
    key = f"study.{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    existing = find_run(tracking, key)
    if existing is not None:
        return existing.run_id
    storage = masked_url(spec.storage_url)
    # sweep_parent too: every consumer that skips sweep parents (they are not training runs) skips this one.
    tags = {
        "study_parent": "true",
        "sweep_parent": "true",
        "study": spec.study_name,
        "optuna_storage": storage,
    }
    tracker = RunTracker.open(
        tracking, run_key=key, run_name=f"study {spec.study_name}", tags=tags, params={}
    )
    with tracker:
        resolved = spec.model_dump(mode="json")
        resolved["study"]["storage"] = storage
        tracker.log_dict_artifact(resolved, "tuning/resolved.json")
        if spec_file is not None:
            tracker.log_artifact(spec_file, "tuning")
        tracker.finish("FINISHED")
    return tracker.run_id


class _Driver:
    """The ask / launch / settle loop of one invocation (see the module doc)."""

    def __init__(
        self,
        spec: TuningSpec,
        *,
        spec_file: Path | None,
        address: str | None,
        poll_s: float,
        on_update: Callable[[list[optuna.trial.FrozenTrial]], None] | None,
    ) -> None:
        self.spec = spec
        self.spec_file = spec_file
        self.address = address
        self.poll_s = poll_s
        self.on_update = on_update
        self.storage = make_storage(spec.storage_url, spec.heartbeat, retry=True)
        self.study = open_study(spec, self.storage)
        self.distributions = spec.search.distributions()
        self.tasks: dict[Any, _Task] = {}
        self.parked: dict[int, _Parked] = {}
        self.abandoned: set[int] = set()  # trials whose worker died: left to go stale
        self.baseline: RunMeasurement | None = None
        self.baseline_attempts = 0
        self.launched = 0
        self.duplicate_streak = 0
        self.exhausted = False
        # The driver's beats (see `_held`); started by `run` once there is something to run.
        self.beat = _Heartbeat(self.storage, set(), spec.heartbeat.interval_s, "optuna-driver-heartbeat")
        self.parent_run_id: str | None = None
        self.study_ref = {
            "storage": spec.storage_url,
            "study": spec.study_name,
            "heartbeat": spec.heartbeat.model_dump(),
            "pruner_kind": spec.pruner_kind,
            "pruner": spec.pruner.model_dump() if spec.pruner is not None else None,
        }

    # -------------------------------------------------------------- main loop
    def run(self) -> TuneResult:
        import ray

        from orchestrator.scheduler import connect

        started = time.monotonic()
        deadline = started + self.spec.budget.timeout_s if self.spec.budget.timeout_s else None
        self._claim_orphans()
        book = ledger(self.study.get_trials(deepcopy=False))
        if not (book.running or book.waiting or book.budget_left(self.spec.budget.n_trials) > 0):
            return self._result(timed_out=False)  # a settled study: nothing to start, not even Ray
        self.parent_run_id = _parent_run(self.spec, self.spec_file)
        connect(self.address)
        self.remote_trial = ray.remote(_trial_task)
        self.remote_baseline = ray.remote(_baseline_task)
        if self.spec.needs_baseline:
            baseline = self.spec.baseline_spec()
            self.baseline = measure_run(self.spec.tracking_config, baseline.run_key, baseline.total_steps())
            if self.baseline is None:
                self._launch_baseline()
        with self.beat:
            timed_out = self._loop(deadline)
        if self.on_update is not None:
            self.on_update(self.study.get_trials(deepcopy=False))
        return self._result(timed_out)

    def _loop(self, deadline: float | None) -> bool:
        """Ask, launch and settle until the study is settled or the deadline passed (returned: timed out)."""
        import ray

        optuna = optuna_module()
        last_update = 0.0
        while True:
            with quiet_optuna():
                optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            self.beat.hold(self._held(trials))
            timed_out = deadline is not None and time.monotonic() >= deadline
            if not timed_out:
                self._launch(trials)
            if self.tasks:
                ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    self._settle(ref, self.tasks.pop(ref))
            else:
                time.sleep(self.poll_s)
            if self.baseline is not None and self.parked:
                for number in list(self.parked):
                    self._tell_complete(number, self.parked.pop(number))
            if self.on_update is not None and time.monotonic() - last_update >= 1.0:
                self.on_update(self.study.get_trials(deepcopy=False))
                last_update = time.monotonic()
            if self.tasks or self.parked:
                continue
            book = ledger(self.study.get_trials(deepcopy=False))
            launchable = (
                book.waiting or book.budget_left(self.spec.budget.n_trials) > 0
            ) and not self.exhausted
            if book.running and not timed_out:
                continue  # another driver's trials, or dead workers' ones on their way to stale and retried
            if not launchable or timed_out:
                return timed_out

    def _result(self, timed_out: bool) -> TuneResult:
        book = ledger(self.study.get_trials(deepcopy=False))
        return TuneResult(
            study_name=self.spec.study_name,
            storage=masked_url(self.spec.storage_url),
            n_trials=self.spec.budget.n_trials,
            complete=book.count("COMPLETE"),
            pruned=book.count("PRUNED"),
            failed=book.count("FAIL"),
            launched=self.launched,
            timed_out=timed_out,
            exhausted=self.exhausted,
            parent_run_id=self.parent_run_id,
            baseline_run_id=self.baseline.run_id if self.baseline is not None else None,
        )

    def _claim_orphans(self) -> None:
        """A driver killed between ``ask`` and its first heartbeat left a RUNNING trial that never goes stale:
        give each such trial (no run_key yet) one heartbeat, so it goes stale after the grace period."""
        for trial in self.study.get_trials(
            deepcopy=False, states=(optuna_module().trial.TrialState.RUNNING,)
        ):
            if "run_key" not in trial.user_attrs:
                self.storage.record_heartbeat(trial_id(self.storage, self.spec.study_name, trial.number))

    def _held(self, trials: list[optuna.trial.FrozenTrial]) -> set[int]:
        """The trial ids this driver beats for: asked but not claimed by a worker yet (a trial missing from
        ``trials`` was asked after they were read), or finished and waiting for the baseline. A claimed trial
        is its worker's to beat for, so a killed worker's trial goes stale even while this driver lives."""
        by_number = {t.number: t for t in trials}
        held = {parked.trial_id for parked in self.parked.values()}
        for task in self.tasks.values():
            if task.kind != "trial" or task.trial_id is None:
                continue
            trial = by_number.get(task.number)
            if trial is None or (trial.state.name == "RUNNING" and trial.user_attrs.get(WORKER_ATTR) is None):
                held.add(task.trial_id)
        return held

    # -------------------------------------------------------------- launching
    def _slots(self, trials: list[optuna.trial.FrozenTrial]) -> int:
        own = {task.number for task in self.tasks.values()} | set(self.parked) | self.abandoned
        foreign = [t for t in trials if t.state.name == "RUNNING" and t.number not in own]
        return self.spec.budget.parallelism - len(self.tasks) - len(foreign)

    def _launch(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        while not self.exhausted and self._slots(trials) > 0:
            book = ledger(trials)
            if not book.waiting and book.budget_left(self.spec.budget.n_trials) <= 0:
                break
            self._ask_and_submit(trials)
            trials = self.study.get_trials(deepcopy=False)

    def _ask_and_submit(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        with quiet_optuna():
            trial = self.study.ask(self.distributions)
        tid = trial_id(self.storage, self.spec.study_name, trial.number)
        self.storage.record_heartbeat(tid)  # from now on a dead driver's trial goes stale
        self.beat.hold(self.beat.held() | {tid})  # and a live driver's does not, however long its loop stalls
        trial.set_user_attr(WORKER_ATTR, None)
        try:
            spec = self.spec.trial_spec(dict(trial.params), trial.number)
        except ConfigError as error:
            self._tell_failed(trial.number, "error", str(error))
            return
        duplicate = self._duplicate_of(spec.run_key, trial.number, trials)
        if duplicate is not None:
            trial.set_user_attr(OUTCOME, "duplicate")
            trial.set_user_attr("duplicate_of", duplicate)
            with quiet_optuna():
                self.study.tell(
                    trial.number, state=optuna_module().trial.TrialState.FAIL, skip_if_finished=True
                )
            self.duplicate_streak += 1
            if self.duplicate_streak >= MAX_DUPLICATE_STREAK:
                log.warning(
                    "the sampler proposed %d points in a row that already ran: the search space looks "
                    "exhausted; stopping with %s",
                    MAX_DUPLICATE_STREAK,
                    "the trials so far",
                )
                self.exhausted = True
            return
        self.duplicate_streak = 0
        trial.set_user_attr("run_key", spec.run_key)
        resources = self.spec.resources
        ref = self.remote_trial.options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0, retry_exceptions=False
        ).remote(spec.model_dump(mode="json"), self.study_ref, trial.number, self.parent_run_id)
        self.tasks[ref] = _Task("trial", spec, trial.number, tid)
        self.launched += 1
        log.info("trial %d: %s (run_key %s)", trial.number, trial.params, spec.run_key)

    def _duplicate_of(self, run_key: str, number: int, trials: list[optuna.trial.FrozenTrial]) -> int | None:
        """The number of a live or settled trial with this run_key (errors and heartbeat failures aside)."""
        for other in trials:
            if other.number == number or other.user_attrs.get("run_key") != run_key:
                continue
            state = other.state.name
            if state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING") or (
                state == "FAIL" and other.user_attrs.get(OUTCOME) == "diverged"
            ):
                return other.number
        return None

    def _launch_baseline(self) -> None:
        if self.baseline_attempts > self.spec.heartbeat.max_retry:
            raise TuningError(f"the baseline run's worker died {self.baseline_attempts} times; giving up")
        spec = self.spec.baseline_spec()
        resources = self.spec.resources
        ref = self.remote_baseline.options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0, retry_exceptions=False
        ).remote(spec.model_dump(mode="json"), self.parent_run_id)
        self.tasks[ref] = _Task("baseline", spec)
        self.baseline_attempts += 1
        self.launched += 1
        log.info("baseline: %s (run_key %s)", spec.model.residual.variant, spec.run_key)

    # -------------------------------------------------------------- settling
    def _settle(self, ref: Any, task: _Task) -> None:
        import ray

        try:
            outcome = ray.get(ref)
        except (
            ray.exceptions.RayTaskError
        ) as error:  # the task raised: a bug or a bad config, not a dead worker
            cause = error.cause if getattr(error, "cause", None) is not None else error
            if task.kind == "baseline":
                raise TuningError(f"the baseline run raised: {cause}") from None
            self._tell_failed(task.number, "error", f"{type(cause).__name__}: {cause}")
            return
        except ray.exceptions.RayError as error:  # the worker or its node died
            if task.kind == "baseline":
                log.warning("the baseline's worker died (%s): launching it again", type(error).__name__)
                self._launch_baseline()
            else:
                log.warning(
                    "trial %d: worker died (%s); its heartbeat will lapse and the trial be retried",
                    task.number,
                    type(error).__name__,
                )
                self.abandoned.add(task.number)
            return
        if task.kind == "baseline":
            self._settle_baseline(task, outcome)
            return
        status = outcome["status"]
        if status == STALE:  # failed by its heartbeat before its worker started; the retry trains the run
            log.warning("trial %d: failed by its heartbeat before its worker claimed it; retried", task.number)
        elif status == "FINISHED":
            measurement = measure_run(self.spec.tracking_config, task.spec.run_key, task.spec.total_steps())
            if measurement is None:
                self._tell_failed(
                    task.number,
                    "error",
                    "the run finished but the tracking store has no FINISHED run for its run_key",
                )
                return
            parked = _Parked(task.trial_id, task.spec, measurement, outcome["steps"])
            if self.spec.needs_baseline and self.baseline is None:
                self.parked[task.number] = parked  # told once the baseline's step time is known
            else:
                self._tell_complete(task.number, parked)
        elif status == "PRUNED":
            attrs = {OUTCOME: "pruned", "run_id": outcome["run_id"], "steps": outcome["steps"]}
            if self._attrs(task.number, attrs):
                with quiet_optuna():
                    self.study.tell(
                        task.number, state=optuna_module().trial.TrialState.PRUNED, skip_if_finished=True
                    )
        elif self._attrs(task.number, {"run_id": outcome["run_id"], "steps": outcome["steps"]}):
            self._tell_failed(task.number, outcome["reason"] or "failed", None)

    def _settle_baseline(self, task: _Task, outcome: dict[str, Any]) -> None:
        if outcome["status"] != "FINISHED":
            raise TuningError(
                f"the baseline run {task.spec.run_key} ended {outcome['status']} ({outcome['reason']}): the "
                "step-time overhead cannot be measured. Fix the base training config (or drop "
                "step_time_overhead from the objectives) and run again"
            )
        self.baseline = measure_run(self.spec.tracking_config, task.spec.run_key, task.spec.total_steps())
        if self.baseline is None:
            raise TuningError(
                f"the baseline run {task.spec.run_key} finished but is not FINISHED in the store"
            )

    def _attrs(self, number: int, attrs: dict[str, Any]) -> bool:
        """Set user attributes of a trial this driver is about to tell; False (nothing more to tell) when the
        trial finished meanwhile. That happens to a trial whose heartbeat lapsed while its worker still ran
        (a stalled worker or database on a loaded machine): Optuna failed it and queued a retry, and a finished
        trial refuses every write. Its retry has the same run_key, so it finds this run FINISHED in the
        tracking store (or resumes it) and is told in its place: the study loses nothing."""
        optuna = optuna_module()
        tid = trial_id(self.storage, self.spec.study_name, number)
        try:
            for key, value in attrs.items():
                self.storage.set_trial_user_attr(tid, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            state = self.storage.get_trial(tid).state.name
            log.warning(
                "trial %d was %s before its result arrived (heartbeat lapse?); its retry will reuse the run",
                number,
                state,
            )
            return False
        return True

    def _tell_complete(self, number: int, parked: _Parked) -> None:
        metrics = parked.measurement.metrics(self.baseline)
        attrs: dict[str, Any] = {
            OUTCOME: "complete",
            "run_id": parked.measurement.run_id,
            "steps": parked.steps,
            **metrics,
        }
        if self.baseline is not None and parked.measurement.hardware != self.baseline.hardware:
            attrs["overhead_note"] = (
                f"timed on {parked.measurement.hardware}, the baseline on {self.baseline.hardware}"
            )
        missing = [name for name in self.spec.metrics if name not in metrics]
        if missing:
            if self._attrs(number, {k: v for k, v in attrs.items() if k != OUTCOME}):
                self._tell_failed(number, "error", f"no value for {', '.join(missing)}")
            return
        if not self._attrs(number, attrs):
            return
        with quiet_optuna():
            frozen = self.study.tell(number, self.spec.objective_values(metrics), skip_if_finished=True)
        if frozen.state.name != "COMPLETE":
            log.warning(
                "trial %d was %s before its result arrived (heartbeat lapse?); its retry will reuse the "
                "finished run",
                number,
                frozen.state.name,
            )

    def _tell_failed(self, number: int, outcome: str, detail: str | None) -> None:
        attrs: dict[str, Any] = {OUTCOME: outcome}
        if detail:
            attrs["error"] = detail[:MAX_ERROR_LENGTH]
        if not self._attrs(number, attrs):
            return
        log.warning("trial %d failed: %s%s", number, outcome, f" ({detail})" if detail else "")
        with quiet_optuna():
            self.study.tell(number, state=optuna_module().trial.TrialState.FAIL, skip_if_finished=True)


def tune(
    spec: TuningSpec,
    *,
    spec_file: Path | None = None,
    address: str | None = None,
    on_update: Callable[[list[optuna.trial.FrozenTrial]], None] | None = None,
    poll_s: float = 0.5,
) -> TuneResult:
    """Run (or continue) the study of ``spec`` until its budget is settled, its timeout passes, or the sampler
    runs out of new points; trials train on Ray (``address``: a cluster or "auto"; default: embedded)."""
    return _Driver(spec, spec_file=spec_file, address=address, poll_s=poll_s, on_update=on_update).run()
