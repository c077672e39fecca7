"""Run a sweep's grid points on Ray: each pending point once, skipping finished ones, resuming partial ones.

The tracking store is the ledger (DESIGN.md): before launching, `plan` asks it about every point's run_key:
FINISHED → skip; FAILED with an infrastructure reason (node died, killed, OOM, crashed) → retry while
attempts remain; FAILED ``diverged`` → never retried; anything else (never run, interrupted while RUNNING,
KILLED by a cancel) → run, and the trainer resumes from the point's newest checkpoint. Ray holds no state we
cannot lose: a killed driver or worker costs at most the steps since a run's last checkpoint.

Failures and retries. Each point is one Ray task with the CPUs/GPUs its size needs. A task whose worker or
node dies is rerun by Ray (``max_retries``) and the rerun resumes from the checkpoint, reopening the same
MLflow run (``attempt`` + 1). ``retry.max_retries`` bounds a run's infrastructure retries over all
submissions: Ray gets the retries the ledger still allows (a run that FAILED before gets fewer). A task that
dies past its retries cannot record its own end, so the driver records it: the run becomes FAILED with
reason ``node_died``, ``oom`` or ``crashed`` (a point that died before its trainer opened a run gets a
FAILED run), and the next submission retries it while attempts remain. The driver never overwrites a run
whose directory lock is held: a live trainer (an orphan finishing the run) records its own end.

Cancelling (`ladder cancel`, or Ctrl-C in `ladder submit`): the loop sees the sweep's cancel marker
(`orchestrator.control`) within one poll interval, force-cancels its in-flight tasks (interrupts those that
drive a worker group, so that Ray Train aborts the group and frees its gang), records their runs as KILLED with
reason ``cancelled`` and returns with ``cancelled=True``. A KILLED run is always resumable: the
next submission continues it from its checkpoint whatever its attempt count (which counts every reopening,
so many cancels leave fewer retries for a later failure).

Points start smallest budget first, at most ``max_concurrent`` at a time. A parent MLflow run per sweep holds
the sweep file and the summary; every point is a child run of it.

Multi-worker points (``resources.workers > 1``) run the same way, as one Ray task each (counted against
``max_concurrent``), whose body drives a Ray Train worker group (`orchestrator.distributed.launch`): the task
itself takes no resources, the group takes ``workers`` × {CPU: cpus, GPU: gpus} as one gang (all workers or
none, whole GPUs only). A dead worker makes Ray Train restart the group from the newest sharded checkpoint, up
to the retries the ledger still allows; past them the task fails and the driver records the run as for a
single worker. A point whose gang can never fit the cluster (more CPUs or GPUs than it has), or whose batch
does not split over its workers, is refused before anything launches (on a cluster given by ``--address``,
whose autoscaler may add nodes, the size check only warns).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ConfigError, LadderError
from orchestrator.checkpoint import is_locked
from orchestrator.control import SweepControl
from orchestrator.sweep import GridPoint, SweepSpec
from orchestrator.tracking import RunInfo, RunTracker, TrackingConfig, find_run, find_runs

__all__ = ["PointState", "SweepBusyError", "SweepResult", "TaskReport", "connect", "plan", "submit"]

log = logging.getLogger(__name__)

# Environment every Ray worker gets: no usage stats, no inherited MLflow run (mlflow issue 15713).
WORKER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_RUN_ID": ""}
# Starts of an embedded Ray before giving up (see `connect`).
RAY_START_ATTEMPTS = 3
# How long a cancel waits for a force-cancelled task to report and for its trainer to release the run lock.
CANCEL_TIMEOUT_S = 30.0
# KILLED runs that resume on the next submission: cancelled (`ladder cancel`), interrupted (Ctrl-C in the
# trainer), or ended without a reason. Any other KILLED reason (``pruned`` by a tuner) is final.
RESUMABLE_KILLS = (None, "cancelled", "killed")
# Tags the driver sets when it records an end the trainer could not (the tracker's names).
FAILURE_REASON_TAG = "failure_reason"
FAILURE_DETAIL_TAG = "failure_detail"


class SweepBusyError(LadderError):
    """Another live process is submitting the same sweep."""


@dataclass(frozen=True, slots=True)
class PointState:
    """Where one grid point stands, per the tracking store (and, while submitting, the scheduler)."""

    point: GridPoint
    state: str  # pending | running | finished | failed | skipped
    reason: str | None = None
    step: int | None = None
    loss: float | None = None
    run_id: str | None = None
    retries_left: int = 0  # infrastructure retries the ledger still allows this point


@dataclass(frozen=True, slots=True)
class TaskReport:
    """What one Ray task of a submission did; times are wall clock (``time.time()``, driver and workers)."""

    run_key: str
    launched_at: float  # the driver submitted the task
    outcome: str  # FINISHED | FAILED | skipped | cancelled | node_died | oom | crashed
    reason: str | None = None
    started_at: float | None = None  # the task body began (its last attempt)
    first_step_started_at: float | None = None  # the first optimizer step of that attempt began
    first_step: int | None = None  # which step that was (> 1 after a resume)
    ended_at: float | None = None
    cpu_s: float | None = None  # CPU time of the task body's process (all threads)
    node_id: str | None = None

    @property
    def startup_s(self) -> float | None:
        """Task start to its first step: imports, data, model build, tracker open (the per-run overhead)."""
        if self.started_at is None or self.first_step_started_at is None:
            return None
        return self.first_step_started_at - self.started_at


@dataclass(frozen=True, slots=True)
class SweepResult:
    """The final state of every grid point, and what this submission did."""

    states: list[PointState]
    launched: int
    parent_run_id: str | None
    tasks: list[TaskReport] = field(default_factory=list)
    cancelled: bool = False
    submitted_at: float = 0.0

    @property
    def complete(self) -> bool:
        return all(s.state in ("finished", "skipped") for s in self.states)


def _state(sweep: SweepSpec, point: GridPoint, info: RunInfo | None) -> PointState:
    max_retries = sweep.retry.max_retries
    if info is None:
        return PointState(point, "pending", retries_left=max_retries)
    tokens = info.metrics.get("train/tokens")
    progress = {
        "run_id": info.run_id,
        "reason": info.failure_reason,
        "step": None if tokens is None else round(tokens / point.spec.training.tokens_per_step),
        "loss": info.metrics.get("final/val_loss", info.metrics.get("train/loss")),
    }
    if info.status == "FINISHED":
        return PointState(point, "finished", **progress)
    if info.status == "FAILED":
        if not _retryable(sweep, info.failure_reason, info.attempt):
            return PointState(point, "failed", **progress)
        # `attempt` attempts are spent; 1 + max_retries are allowed in all.
        progress["retries_left"] = max(0, max_retries - info.attempt)
    elif info.status == "KILLED" and info.failure_reason not in RESUMABLE_KILLS:
        return PointState(point, "failed", **progress)  # stopped on purpose for good (a pruned trial)
    else:  # RUNNING (interrupted, or live) or KILLED (cancelled): not a failure, the full budget remains
        progress["retries_left"] = max_retries
    # RUNNING with a live lock holder is running; otherwise it was interrupted and will resume.
    return PointState(point, "running" if is_locked(point.spec.run_dir) else "pending", **progress)


def plan(sweep: SweepSpec, points: list[GridPoint]) -> list[PointState]:
    """Each point's state from the tracking store: which must run and which are done (no Ray, no training)."""
    if not points:
        return []
    runs = find_runs(points[0].spec.tracking)
    return [_state(sweep, point, runs.get(point.spec.run_key)) for point in points]


def _retryable(sweep: SweepSpec, reason: str | None, attempt: int) -> bool:
    return reason in sweep.retry.retry_reasons and attempt <= sweep.retry.max_retries


def _parent_run(tracking: TrackingConfig, sweep: SweepSpec, sweep_file: Path | None) -> str:
    """The sweep's parent MLflow run (created on first submission; later submissions attach to it)."""
    key = f"sweep.{hashlib.sha256(sweep.name.encode()).hexdigest()[:16]}"
    existing = find_run(tracking, key)
    if existing is not None:
        return existing.run_id
    tracker = RunTracker.open(
        tracking, run_key=key, run_name=sweep.name, tags={"sweep_parent": "true", "sweep": sweep.name},
        params={},
    )
    with tracker:
        tracker.log_dict_artifact(sweep.model_dump(mode="json"), "sweep/resolved.json")
        if sweep_file is not None:
            tracker.log_artifact(sweep_file, "sweep")
        tracker.finish("FINISHED")
    return tracker.run_id


def _check_runnable(sweep: SweepSpec, points: list[GridPoint], cluster: dict[str, float] | None = None) -> None:
    """Refuse points that can never run, before anything launches: a batch that does not split over the
    workers, or (given the cluster's resources) a gang larger than the cluster."""
    from orchestrator.distributed import check_cluster_fits, check_parallel

    for point in points:
        key = point.size if point.size in sweep.resources else "default"
        try:
            check_parallel(point.spec)
            if cluster is not None:
                check_cluster_fits(point.spec, cluster)
        except ConfigError as error:
            raise ConfigError(
                f"grid point {point.spec.run_key} (size {point.size}, sweep.resources.{key}): {error}"
            ) from error


def _check_cluster(sweep: SweepSpec, points: list[GridPoint], *, embedded: bool) -> None:
    """Refuse gangs larger than the embedded Ray (its resources are fixed); on a cluster, whose autoscaler may
    still add nodes, only warn that such points wait."""
    import ray

    try:
        _check_runnable(sweep, points, ray.cluster_resources())
    except ConfigError as error:
        if embedded:
            raise
        log.warning("%s; the points wait for the cluster to grow (an autoscaler) or forever", error)


def _on_loopback(address: str) -> bool:
    """Whether ``address`` ("auto" resolved as Ray resolves it) is a cluster on this machine's loopback."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS") or ""
        if not address or address == "auto":
            try:  # where `ray start` records the head (a private helper: tolerate its absence)
                from ray._private.utils import read_ray_address

                address = read_ray_address() or ""
            except (ImportError, AttributeError, OSError):
                address = ""
    if address.startswith("ray://"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _keep_ray_on_loopback() -> None:
    """Stop Ray from rewriting 127.0.0.1 to the machine's network address (STACK.md, Ray 2.60 trap).

    ``ray.init`` replaces a loopback bootstrap address with the address it would advertise, so a driver of a
    head started with ``--node-ip-address=127.0.0.1`` (which listens on loopback only) connects to the wrong
    address and hangs. Ray skips the rewrite when multi-node mode is off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once at import): right for a cluster that lives on one
    machine's loopback, so it is switched off for such addresses only, and for processes this one starts.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):  # Ray already imported: the env var came too late
        ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None) -> None:
    """Connect to ``address`` (a cluster's GCS ``host:port``, ``ray://host:port``, or "auto"), or start an
    embedded local Ray with all CPUs and no dashboard. A cluster on 127.0.0.1 is reached on 127.0.0.1.

    A failed start of the embedded Ray is retried: Ray 2.60's raylet gives its dashboard agent a hard-coded
    15 s to write its port file and aborts when it is late (ray-project/ray#65983); on a loaded machine the
    agent's Python start-up alone takes longer and ``ray.init`` raises "The current node timed out during
    startup". The failed start leaves no process behind after ``ray.shutdown``, and the next one usually
    passes. A cluster address is tried once: there a failure means a wrong address or a cluster that is down.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {"env_vars": WORKER_ENV}
    if address:
        if _on_loopback(address):
            _keep_ray_on_loopback()
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=False)
            return
        except Exception as error:
            if attempt == RAY_START_ATTEMPTS:
                raise
            log.warning("Ray did not start (%s); starting it again (%d of %d)", error, attempt + 1,
                        RAY_START_ATTEMPTS)
            ray.shutdown()


def _train_point(spec_data: dict[str, Any], parent_run_id: str | None, max_failures: int = 0) -> dict[str, Any]:
    """Ray task body: train one RunSpec in this worker process (threads = the CPUs it was granted), or drive
    its Ray Train worker group (multi-worker specs; ``max_failures`` group restarts)."""
    started_at, cpu_started = time.time(), time.process_time()
    import ray

    from orchestrator.runspec import RunSpec
    from orchestrator.train import StepReport, run

    os.environ.pop("MLFLOW_RUN_ID", None)
    spec = RunSpec(**spec_data)
    first: dict[str, Any] = {}

    def on_step(report: StepReport) -> None:
        if not first:  # when the first step of this attempt began, and which step it was
            first["at"] = time.time() - spec.training.tokens_per_step / report.tokens_per_s
            first["step"] = report.step

    # A multi-worker run calls on_step in its workers, where this closure's record would be lost.
    single = spec.resources.workers == 1
    result = run(spec, parent_run_id=parent_run_id, on_step=on_step if single else None, max_failures=max_failures)
    return {
        "status": result.status,
        "reason": result.failure_reason,
        "run_id": result.run_id,
        "skipped": result.skipped,
        "started_at": started_at,
        "first_step_started_at": first.get("at"),
        "first_step": first.get("step"),
        "ended_at": time.time(),
        "cpu_s": time.process_time() - cpu_started,
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _failure_reason(error: BaseException) -> str:
    """The ledger's reason for a task that ended in a Ray error rather than a trainer result."""
    import ray.exceptions as errors

    if isinstance(error, errors.TaskCancelledError):
        return "cancelled"
    if isinstance(error, errors.OutOfMemoryError):
        return "oom"
    if isinstance(error, errors.NodeDiedError | errors.LocalRayletDiedError):
        return "node_died"
    return "crashed"  # the worker process died, or the task raised outside the trainer's tracked block


def _wait_unlocked(point: GridPoint, timeout_s: float) -> bool:
    """Wait until no process holds the point's run lock (a killed trainer's flock goes with its process)."""
    deadline = time.monotonic() + timeout_s
    while is_locked(point.spec.run_dir):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _record_end(point: GridPoint, status: str, reason: str, detail: str, parent_run_id: str | None) -> None:
    """Record the end of a run whose trainer could not (its process died or was killed).

    Only a run that is still RUNNING is ended, and only while no process holds its lock; a run already ended
    by its trainer keeps that record. A point without a run gets one for failures (so the ledger counts the
    attempt and ``ladder status`` shows the reason), not for cancels: a cancel of a task that never started
    changes nothing.
    """
    from orchestrator.tracking._mlflow import call_with_retry, make_client

    spec = point.spec
    if is_locked(spec.run_dir):
        log.warning("run %s is still held by a live trainer; it records its own end", spec.run_key)
        return
    info = find_run(spec.tracking, spec.run_key)
    if info is None:
        if status == "KILLED":
            return
        tracker = RunTracker.open(
            spec.tracking, run_key=spec.run_key, run_name=spec.name or spec.run_key, tags=spec.tags,
            params={}, parent_run_id=parent_run_id,
        )
        tracker.set_tags({FAILURE_DETAIL_TAG: detail})
        tracker.finish("FAILED", failure_reason=reason)
        return
    if info.status != "RUNNING":
        return
    client = make_client(spec.tracking)

    def end() -> None:
        client.set_tag(info.run_id, FAILURE_REASON_TAG, reason)
        client.set_tag(info.run_id, FAILURE_DETAIL_TAG, detail[:8000])
        client.set_terminated(info.run_id, status)

    call_with_retry(end, what=f"recording run {info.run_id} as {status}", config=spec.tracking,
                    timeout_s=spec.tracking.open_timeout_s)
    log.info("recorded run %s (%s) as %s: %s", info.run_id, spec.run_key, status, reason)


class _Submission:
    """One submission's loop: launch, collect, react to a cancel (see the module doc)."""

    def __init__(self, sweep: SweepSpec, todo: list[PointState], control: SweepControl, token: str,
                 parent_run_id: str, poll_s: float) -> None:
        import ray

        self.ray = ray
        self.sweep, self.control, self.token = sweep, control, token
        self.parent_run_id, self.poll_s = parent_run_id, poll_s
        self.queue = list(todo)  # already smallest budget first
        self.in_flight: dict[Any, tuple[GridPoint, float]] = {}
        self.reports: list[TaskReport] = []
        self.launched = 0
        self.remote = ray.remote(_train_point)

    def launch(self) -> None:
        limit = self.sweep.max_concurrent or (len(self.queue) + len(self.in_flight))
        while self.queue and len(self.in_flight) < limit:
            state = self.queue.pop(0)
            point = state.point
            resources = point.resources
            training = point.spec.training.model_copy(update={"threads": resources.threads})
            spec = point.spec.model_copy(update={"training": training})
            # A worker group's gang is reserved by Ray Train; its driving task only waits, taking nothing.
            grouped = resources.workers > 1
            task = self.remote.options(
                num_cpus=0 if grouped else resources.cpus,
                num_gpus=0 if grouped else resources.gpus,
                max_retries=state.retries_left,
                retry_exceptions=False,
            ).remote(spec.model_dump(mode="json"), self.parent_run_id, state.retries_left if grouped else 0)
            self.in_flight[task] = (point, time.time())
            self.launched += 1

    def collect(self, task: Any) -> None:
        """Record how a finished task ended; a Ray error becomes the run's failure record."""
        point, launched_at = self.in_flight.pop(task)
        try:
            result = self.ray.get(task)
        except Exception as error:  # the task died past its retries, or was cancelled
            reason = _failure_reason(error)
            if reason != "cancelled":
                log.warning("grid point %s failed on Ray (%s): %s", point.spec.run_key, reason, error)
            self._record_failure(point, launched_at, reason, f"{type(error).__name__}: {error}")
            return
        outcome = "skipped" if result["skipped"] else result["status"]
        fields = ("started_at", "first_step_started_at", "first_step", "ended_at", "cpu_s", "node_id")
        self.reports.append(
            TaskReport(point.spec.run_key, launched_at, outcome, result["reason"],
                       **{name: result[name] for name in fields})
        )

    def _record_failure(self, point: GridPoint, launched_at: float, reason: str, detail: str) -> None:
        status = "KILLED" if reason == "cancelled" else "FAILED"
        # A force-cancelled trainer's lock goes with its process, a moment after Ray reports the cancel.
        _wait_unlocked(point, CANCEL_TIMEOUT_S if status == "KILLED" else 0.0)
        try:
            _record_end(point, status, reason, detail, self.parent_run_id)
        except LadderError as error:  # the store is down: the run stays RUNNING, i.e. resumable
            log.error("could not record the end of %s: %s", point.spec.run_key, error)
        self.reports.append(TaskReport(point.spec.run_key, launched_at, reason, reason))

    def cancel(self) -> None:
        """Force-cancel every in-flight task and record the runs it interrupted as KILLED/cancelled."""
        self.queue.clear()
        tasks = list(self.in_flight)
        for task in tasks:
            # A worker group's driving task is interrupted instead (SIGINT): Ray Train's handler aborts the group,
            # which releases its gang; a killed driver leaves the gang's placement group reserved on a Ray without
            # the state API (the embedded one), where Ray Train's cleaner cannot see the controller die.
            grouped = self.in_flight[task][0].resources.workers > 1
            self.ray.cancel(task, force=not grouped)
        ready, stuck = ([], [])
        if tasks:
            ready, stuck = self.ray.wait(tasks, num_returns=len(tasks), timeout=CANCEL_TIMEOUT_S)
        for task in ready:
            self.collect(task)  # cancelled, or finished just before the cancel landed (it stays FINISHED)
        for task in stuck:
            self.ray.cancel(task, force=True)  # an interrupted worker group that did not stop
            point, launched_at = self.in_flight.pop(task)
            log.warning("task of %s did not stop within %.0f s of its cancel", point.spec.run_key,
                        CANCEL_TIMEOUT_S)
            self._record_failure(point, launched_at, "cancelled", "cancelled; the task did not confirm")

    def run(self, points: list[GridPoint], on_update: Callable[[list[PointState]], None] | None) -> bool:
        """Until every point has run or a cancel arrives; True when cancelled."""
        last_update = 0.0
        try:
            while self.queue or self.in_flight:
                self.launch()
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=self.poll_s)
                if ready:  # and whatever else is done by now
                    rest = [task for task in self.in_flight if task not in ready]
                    more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
                    for task in [*ready, *more]:
                        self.collect(task)
                if self.control.cancel_requested(self.token):
                    log.warning("sweep %s: cancel requested; stopping %d task(s)", self.sweep.name,
                                len(self.in_flight))
                    self.cancel()
                    self.control.clear_cancel(self.token)
                    return True
                if on_update is not None and time.monotonic() - last_update >= self.poll_s:
                    on_update(plan(self.sweep, points))
                    last_update = time.monotonic()
        except KeyboardInterrupt:
            log.warning("sweep %s: interrupted; stopping %d task(s)", self.sweep.name, len(self.in_flight))
            self.cancel()
            return True
        return False


def submit(
    sweep: SweepSpec,
    points: list[GridPoint],
    *,
    sweep_file: Path | None = None,
    address: str | None = None,
    on_update: Callable[[list[PointState]], None] | None = None,
    poll_s: float = 2.0,
) -> SweepResult:
    """Run every pending point on Ray and wait for all of them (or a cancel); returns every point's state.

    Raises `ConfigError` for points that can never run (a gang larger than the cluster, a batch that does not
    split over its workers) and `SweepBusyError` when another process is submitting the same sweep; in both
    cases nothing is launched.
    """
    submitted_at = time.time()
    states = plan(sweep, points)
    todo = [s for s in states if s.state in ("pending", "running")]
    if not todo:  # nothing to run: no Ray, no lock (resubmitting a finished sweep is a ledger query)
        return SweepResult(states, launched=0, parent_run_id=None, submitted_at=submitted_at)
    _check_runnable(sweep, [s.point for s in todo])
    control = SweepControl.for_sweep(sweep.name, sweep.storage)
    with control.submitting() as token:
        if token is None:
            raise SweepBusyError(
                f"sweep {sweep.name!r} is already being submitted ({control.running_submission()}); wait "
                "for it or stop it with `ladder cancel`"
            )
        connect(address)
        _check_cluster(sweep, [s.point for s in todo], embedded=not address)
        parent_run_id = _parent_run(points[0].spec.tracking, sweep, sweep_file)
        submission = _Submission(sweep, todo, control, token, parent_run_id, poll_s)
        cancelled = submission.run(points, on_update)
    final = plan(sweep, points)
    if on_update is not None:
        on_update(final)
    return SweepResult(final, launched=submission.launched, parent_run_id=parent_run_id,
                       tasks=submission.reports, cancelled=cancelled, submitted_at=submitted_at)
