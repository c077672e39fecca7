"""`RunTracker`: the one object the trainer talks to about MLflow.

    with RunTracker.open(config, run_key, run_name, tags, params) as tracker:
        tracker.log_metrics({"train/loss": loss}, step)      # memory append; never touches the network
        tracker.log_dict_artifact(profile, "diagnostics/step_00000100.json")
        tracker.finish("FINISHED")                           # or leave the block: FINISHED / FAILED / KILLED

Choices:
- Explicit run ids through `mlflow.tracking.MlflowClient`; no fluent active-run state, so several trackers (a
  sweep's parent run and its children) live in one process.
- Identity is the ``run_key`` tag. Opening a key whose run is RUNNING / FAILED / KILLED (an interrupted
  attempt) reuses that run: status back to RUNNING, ``attempt`` tag + 1, the old ``failure_reason`` moved to
  ``previous_failure_reason``; a FINISHED key raises `RunFinishedError`. Params are immutable in MLflow: on
  reuse unchanged ones are not re-logged, new ones are added, changed ones raise `ParamConflictError`.
- Metrics, tags and artifacts are queued in call order (`OpQueue`) and sent by one background thread per run:
  consecutive metrics and tags go out as one ``log_batch`` (≤ 1000 metrics, ≤ 100 tags: MLflow's limits), an
  artifact as one upload. It flushes every ``flush_interval_s``, or at once when a full batch is waiting. A
  failed call keeps its operations at the front of the queue and is retried with capped exponential back-off,
  so nothing is lost or reordered; timestamps are taken when the caller logs, so a resend of a batch whose
  outcome was unknown is deduplicated by the store. A call the store refuses as bad input (4xx) is not
  retried: its operations go to ``<run_id>.rejected.jsonl`` and `finish` raises.
- Past ``max_buffered_points`` unsent operations, the queue spills to ``<spill_dir>/<run_id>.jsonl`` (chosen
  over blocking the training loop) and warns once; the file is sent first when the store returns, and also
  when the same run_key is reopened after the process died.
- Artifacts are staged at call time under ``<spill_dir>/<run_id>/`` (a dict is serialised, a file or folder
  copied), so later changes to the source do not leak into a delayed upload. Meant for configs, profiles and
  small files; checkpoints live in the run's storage folder, not in MLflow.
- `finish` flushes for up to its timeout; if the store is still unreachable it writes every unsent operation
  to the spill file and raises `TrackingError` naming the file, rather than drop anything. At interpreter exit
  an unfinished tracker flushes for up to 10 s and spills the rest (its run stays RUNNING: an interrupted
  attempt).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.tracking._mlflow import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    backoff_delay,
    call_with_retry,
    check_name,
    is_transient,
    make_client,
    prepare_process,
)
from orchestrator.tracking.buffer import Batch, Op, OpQueue
from orchestrator.tracking.config import TrackingConfig
from orchestrator.tracking.errors import ParamConflictError, RunFinishedError, TrackingError
from orchestrator.tracking.runs import (
    ATTEMPT_TAG,
    FAILURE_REASON_TAG,
    PARENT_RUN_TAG,
    RUN_KEY_TAG,
    check_run_key,
    experiment_id,
    flatten_params,
    search_key,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["RunStatus", "RunTracker", "TrackerStats"]

log = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
FAILURE_DETAIL_TAG = "failure_detail"
PREVIOUS_FAILURE_TAG = "previous_failure_reason"
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
# Operation kinds in the queue (and the spill file): (kind, ...fields).
_METRIC = "m"  # ("m", key, value, step, timestamp_ms)
_TAG = "t"  # ("t", key, value)
_ARTIFACT = "a"  # ("a", staged local path, artifact directory or None)
_EXIT_FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """A snapshot of a tracker's delivery state."""

    pending: int  # operations logged but not yet taken by the store
    spilled: int  # of those, held in the spill file
    sent_metrics: int  # metric points the store has taken
    store_calls: int  # successful log_batch / artifact calls
    failed_calls: int  # calls that failed and will be retried
    rejected: int  # operations the store refused as bad input (kept in the rejected file)
    last_error: str | None


def _plain(obj: Any) -> Any:
    """JSON/YAML-ready data: mappings and sequences recursively, array-likes via ``tolist``, paths as str."""
    if isinstance(obj, Mapping):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(item) for item in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(obj.tolist())
    raise TypeError(f"cannot log {type(obj).__name__} in a dict artifact: convert it to plain data first")


def _check_artifact_file(artifact_file: str) -> PurePosixPath:
    path = PurePosixPath(artifact_file)
    if not artifact_file or path.is_absolute() or ".." in path.parts or not path.name:
        raise ValueError(
            f"artifact_file {artifact_file!r} must be a relative path such as 'config/resolved.json'"
        )
    return path


def _tag_value(key: str, value: Any) -> str:
    text = str(value)
    if len(text) > MAX_TAG_VALUE_LENGTH:
        raise ValueError(
            f"tag {key!r} is {len(text)} characters; MLflow keeps at most {MAX_TAG_VALUE_LENGTH}"
        )
    return text


def _checked_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {check_name("tag", key): _tag_value(key, value) for key, value in tags.items()}


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class RunTracker:
    """Buffered, retrying, resumable logging to one MLflow run (see the module doc). Create with `open`."""

    def __init__(
        self,
        config: TrackingConfig,
        client: MlflowClient,
        *,
        run_id: str,
        run_key: str,
        experiment_id: str,
        attempt: int,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.run_key = run_key
        self.experiment_id = experiment_id
        self.attempt = attempt
        self._client = client
        spill_dir = Path(config.spill_dir)
        self._queue = OpQueue(spill_dir / f"{run_id}.jsonl", config.max_buffered_points)
        self._staging = spill_dir / run_id
        self.rejected_path = spill_dir / f"{run_id}.rejected.jsonl"
        self._metric_keys: set[str] = set()
        self._finished: str | None = None
        self._closing = False
        self._flush_requested = False
        self._wake = threading.Event()
        self._abandon = threading.Event()
        self._progress = threading.Condition()
        self._spill_warned = False
        self._sent_metrics = self._store_calls = self._failed_calls = self._rejected = 0
        self._last_error: str | None = None
        self._rejected_error: str | None = None
        self._thread = threading.Thread(
            target=self._flush_loop, name=f"mlflow-flush-{run_id[:8]}", daemon=True
        )
        self._thread.start()
        _live_trackers.add(self)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        config: TrackingConfig,
        run_key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        parent_run_id: str | None = None,
        *,
        client: MlflowClient | None = None,
    ) -> RunTracker:
        """Create the run for ``run_key`` in ``config.experiment``, or continue its interrupted attempt.

        ``params`` may be nested (flattened to dotted keys); every ``tags`` entry becomes a run tag, as do
        ``run_key``, ``attempt`` and (given ``parent_run_id``) MLflow's parent-run tag. ``client`` lets a
        caller share or instrument a client; by default one is made for ``config.uri``. Raises
        `RunFinishedError` if the key already FINISHED, `ParamConflictError` if reopened with different
        params, `TrackingError` if the store stays unreachable for ``config.open_timeout_s``.
        """
        check_run_key(run_key)
        flat_params = flatten_params(params)
        run_tags = _checked_tags(tags)
        run_tags[RUN_KEY_TAG] = run_key
        if parent_run_id is not None:
            run_tags[PARENT_RUN_TAG] = parent_run_id
        prepare_process(config)
        client = client or make_client(config)
        exp_id = experiment_id(client, config, create=True)
        assert exp_id is not None
        runs = search_key(client, config, exp_id, run_key)

        def retry(fn: Any, what: str) -> Any:
            return call_with_retry(fn, what=what, config=config, timeout_s=config.open_timeout_s)

        if finished := [run for run in runs if run.info.status == "FINISHED"]:
            run_id = finished[0].info.run_id
            raise RunFinishedError(
                f"run_key {run_key} already FINISHED as MLflow run {run_id} in experiment "
                f"{config.experiment!r} ({config.uri}): skip it rather than train it again",
                run_id,
            )
        if runs:
            run = max(runs, key=lambda candidate: candidate.info.start_time or 0)
            if len(runs) > 1:
                log.warning(
                    "run_key %s has %d unfinished runs; continuing the newest, %s",
                    run_key,
                    len(runs),
                    run.info.run_id,
                )
            run_id, previous = run.info.run_id, run.data.params
            conflicts = {
                key: (previous[key], value)
                for key, value in flat_params.items()
                if key in previous and previous[key] != value
            }
            if conflicts:
                shown = "; ".join(
                    f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(conflicts.items())[:10]
                )
                raise ParamConflictError(
                    f"run_key {run_key} (MLflow run {run_id}) was logged with other values for "
                    f"{len(conflicts)} param(s): {shown}. MLflow params are immutable; a changed config "
                    "needs a new run_key"
                )
            new_params = {key: value for key, value in flat_params.items() if key not in previous}
            attempt = int(run.data.tags.get(ATTEMPT_TAG, "1")) + 1
            run_tags[ATTEMPT_TAG] = str(attempt)
            if reason := run.data.tags.get(FAILURE_REASON_TAG):
                run_tags[PREVIOUS_FAILURE_TAG] = reason
            for stale in (FAILURE_REASON_TAG, FAILURE_DETAIL_TAG):
                if stale in run.data.tags:
                    retry(lambda stale=stale: client.delete_tag(run_id, stale), f"clearing tag {stale}")
            retry(lambda: client.update_run(run_id, status="RUNNING"), "reopening the run")
            log.info(
                "reopened MLflow run %s for run_key %s (attempt %d, was %s)",
                run_id,
                run_key,
                attempt,
                run.info.status,
            )
            batch_tags = run_tags
        else:
            attempt = 1
            run_tags[ATTEMPT_TAG] = "1"
            created = retry(
                lambda: client.create_run(exp_id, run_name=run_name, tags=run_tags), "creating the run"
            )
            run_id, new_params, batch_tags = created.info.run_id, flat_params, {}
        _log_batch_now(client, config, run_id, params=new_params, tags=batch_tags)
        return cls(config, client, run_id=run_id, run_key=run_key, experiment_id=exp_id, attempt=attempt)

    # ------------------------------------------------------------------ logging (never blocks on the store)
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue one point per metric at ``step``; timestamp (default now) is fixed now, not when sent."""
        self._check_open()
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        step = int(step)
        ops = []
        for key, value in metrics.items():
            if key not in self._metric_keys:
                self._metric_keys.add(check_name("metric", key))
            if isinstance(value, str | bytes):
                raise TypeError(f"metric {key!r} value {value!r} must be a number")
            ops.append((_METRIC, key, float(value), step, timestamp))
        self._enqueue(ops)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Queue tags (values as strings); a later value of the same key wins."""
        self._check_open()
        self._enqueue([(_TAG, key, value) for key, value in _checked_tags(tags).items()])

    def log_dict_artifact(self, obj: Any, artifact_file: str) -> None:
        """Queue ``obj`` as a JSON (or, for ``.yaml``/``.yml``, YAML) artifact at ``artifact_file``."""
        self._check_open()
        path = _check_artifact_file(artifact_file)
        data = _plain(obj)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2)
        staged = self._stage_dir() / path.name
        staged.write_text(text, encoding="utf-8")
        self._enqueue([(_ARTIFACT, str(staged), str(path.parent) if str(path.parent) != "." else None)])

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Queue a file or folder (its contents as of now) under ``artifact_path`` (default: the root)."""
        self._check_open()
        source = Path(local_path)
        if artifact_path is not None:
            _check_artifact_file(artifact_path)
        if not source.exists():
            raise FileNotFoundError(f"artifact {source} does not exist")
        staged = self._stage_dir() / source.name
        if source.is_dir():
            shutil.copytree(source, staged)
        else:
            shutil.copy2(source, staged)
        self._enqueue([(_ARTIFACT, str(staged), artifact_path)])

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything queued so far; True once the store has it all, False if the timeout passed first.

        Waits at most ``timeout_s`` (default ``config.finish_timeout_s``); nothing is dropped either way.
        """
        timeout = self.config.finish_timeout_s if timeout_s is None else timeout_s
        self._flush_requested = True
        self._wake.set()
        with self._progress:
            done = self._progress.wait_for(lambda: self._queue.pending == 0 or self._queue.closed, timeout)
        self._flush_requested = False
        return done and self._queue.pending == 0

    @property
    def spill_path(self) -> Path:
        """Where unsent operations go when memory is full or the store is unreachable at the end."""
        return self._queue.spill_path

    @property
    def stats(self) -> TrackerStats:
        return TrackerStats(
            pending=self._queue.pending,
            spilled=self._queue.spilled,
            sent_metrics=self._sent_metrics,
            store_calls=self._store_calls,
            failed_calls=self._failed_calls,
            rejected=self._rejected,
            last_error=self._last_error,
        )

    # ------------------------------------------------------------------ ending
    def finish(
        self,
        status: RunStatus = "FINISHED",
        failure_reason: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Deliver everything, tag ``failure_reason`` if given, and end the run with ``status``.

        Keeps retrying an unreachable store for ``timeout_s`` (default ``config.finish_timeout_s``); past it,
        writes the unsent operations to `spill_path` and raises `TrackingError` (the run then stays RUNNING in
        the store, and reopening its run_key sends them). Also raises if the store refused any operation.
        """
        if status not in _TERMINAL:
            raise ValueError(f"status {status!r} must be one of {', '.join(_TERMINAL)}")
        if self._finished is not None:
            raise TrackingError(f"run {self.run_id} already ended ({self._finished})")
        timeout = self.config.finish_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        if failure_reason is not None:
            self.set_tags({FAILURE_REASON_TAG: failure_reason})
        self._finished = status
        spilled_to, unsent = self._close(deadline)
        if unsent:
            num_points = sum(op[0] == _METRIC for op in unsent)
            raise TrackingError(
                f"tracking store {self.config.uri} did not take {len(unsent)} operation(s) ({num_points} "
                f"metric points) of run {self.run_id} (run_key {self.run_key}) within {timeout:.0f} s "
                f"(last error: {self._last_error}). They are saved in {spilled_to} and are sent first when "
                f"run_key {self.run_key} is reopened; the run is still RUNNING in the store, not {status}."
            )
        problems = []
        if self._rejected:
            problems.append(
                f"the tracking store refused {self._rejected} operation(s) of run {self.run_id} "
                f"({self._rejected_error}); they are kept in {self.rejected_path}"
            )
        try:
            call_with_retry(
                lambda: self._client.set_terminated(self.run_id, status),
                what=f"ending run {self.run_id} as {status}",
                config=self.config,
                timeout_s=max(0.0, deadline - time.monotonic()),
            )
        except TrackingError as error:
            delivered = "" if self._rejected else "every logged point was delivered, but "
            problems.append(f"{error}; {delivered}the run is not marked {status}")
        if problems:
            raise TrackingError(". ".join(problems))
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        """Normal exit: FINISHED (unless ended). Exception: FAILED/crashed. Interrupt: KILLED/killed."""
        if self._finished is not None:
            return False
        if exc_type is None:
            self.finish("FINISHED")
            return False
        status, reason = ("FAILED", "crashed") if issubclass(exc_type, Exception) else ("KILLED", "killed")
        try:
            self.set_tags({FAILURE_DETAIL_TAG: f"{exc_type.__name__}: {exc}"[:MAX_TAG_VALUE_LENGTH]})
            self.finish(status, failure_reason=reason)
        except TrackingError as error:  # the original exception matters more; this one is logged
            log.error("could not record the %s end of run %s: %s", status, self.run_id, error)
        return False

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._finished is not None:
            raise TrackingError(
                f"run {self.run_id} already ended ({self._finished}); nothing more can be logged"
            )

    def _stage_dir(self) -> Path:
        directory = self._staging / uuid.uuid4().hex[:12]
        directory.mkdir(parents=True)
        return directory

    def _enqueue(self, ops: list[Op]) -> None:
        if not ops:
            return
        if self._queue.put(ops) and not self._spill_warned:
            self._spill_warned = True
            log.warning(
                "tracking store %s is behind (last error: %s): more than %d operations are unsent, so they "
                "are spilled to %s and sent in order when it catches up. Raise tracking.max_buffered_points "
                "to keep more in memory.",
                self.config.uri,
                self._last_error,
                self.config.max_buffered_points,
                self.spill_path,
            )
        if self._queue.pending >= MAX_METRICS_PER_BATCH:
            self._wake.set()

    def _close(self, deadline: float) -> tuple[Path | None, list[Op]]:
        """Stop the flusher after it drains the queue, or at ``deadline``; spill and return what is unsent."""
        _live_trackers.discard(self)
        self._closing = True
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() or self._queue.pending:
            self._abandon.set()
            spilled_to, unsent = self._queue.dump()
            log.error(
                "run %s: %d unsent tracking operation(s) written to %s", self.run_id, len(unsent), spilled_to
            )
            return spilled_to, unsent
        return None, []

    def _flush_before_exit(self) -> None:
        if self._finished is None:
            self._finished = "EXITED"
            self._close(time.monotonic() + _EXIT_FLUSH_TIMEOUT_S)

    def _flush_loop(self) -> None:
        failures, outage_started = 0, 0.0
        next_due = time.monotonic() + self.config.flush_interval_s
        while not self._abandon.is_set():
            if failures == 0:
                self._wake.wait(max(0.0, next_due - time.monotonic()))
                self._wake.clear()
            now = time.monotonic()
            due = now >= next_due
            if due:
                next_due = now + self.config.flush_interval_s
            force = due or failures > 0 or self._closing or self._flush_requested
            try:
                self._drain(force)
            except Exception as error:  # transient: keep the batch, back off, retry
                failures += 1
                self._failed_calls += 1
                self._last_error = f"{type(error).__name__}: {error}"[:500]
                delay = backoff_delay(failures, self.config)
                if failures == 1:
                    outage_started = now
                    log.warning(
                        "tracking store %s unreachable (%s); %d operation(s) buffered, retrying with "
                        "back-off up to %.0f s",
                        self.config.uri,
                        self._last_error,
                        self._queue.pending,
                        self.config.retry_max_s,
                    )
                self._abandon.wait(delay)
                continue
            if failures:
                log.info(
                    "tracking store %s reachable again after %d failed attempt(s) over %.0f s",
                    self.config.uri,
                    failures,
                    time.monotonic() - outage_started,
                )
                failures = 0
            if self._closing and self._queue.pending == 0:
                return

    def _drain(self, force: bool) -> None:
        """Send batches from the front: only full ones unless ``force``. Raises on a transient failure."""
        while not self._abandon.is_set():
            if not force and self._queue.pending < MAX_METRICS_PER_BATCH:
                return
            batch = self._queue.peek(MAX_METRICS_PER_BATCH)
            if batch is None:
                return
            count, send = self._prepare(batch)
            try:
                send()
                self._store_calls += 1
            except Exception as error:
                if is_transient(error):
                    raise
                self._reject(batch.ops[:count], error)
            else:
                self._sent_metrics += sum(op[0] == _METRIC for op in batch.ops[:count])
            applied = self._queue.ack(batch, count)
            if applied and batch.ops[0][0] == _ARTIFACT:
                shutil.rmtree(Path(batch.ops[0][1]).parent, ignore_errors=True)
            with self._progress:
                self._progress.notify_all()

    def _prepare(self, batch: Batch) -> tuple[int, Any]:
        """How many operations from the front of ``batch`` go in one store call, and that call."""
        first = batch.ops[0]
        if first[0] == _ARTIFACT:
            _, staged, artifact_dir = first

            def upload() -> None:
                if not os.path.exists(staged):
                    raise ValueError(f"staged artifact {staged} is missing")
                self._client.log_artifact(self.run_id, staged, artifact_dir)

            return 1, upload
        from mlflow.entities import Metric, RunTag

        metrics: list[Metric] = []
        tags: dict[str, str] = {}
        count = 0
        for op in batch.ops:
            if op[0] == _ARTIFACT or len(metrics) + len(tags) >= MAX_ENTITIES_PER_BATCH:
                break
            if op[0] == _METRIC:
                if len(metrics) >= MAX_METRICS_PER_BATCH:
                    break
                _, key, value, step, timestamp = op
                metrics.append(Metric(key, value, timestamp, step))
            else:
                if len(tags) >= MAX_PARAMS_TAGS_PER_BATCH and op[1] not in tags:
                    break
                tags[op[1]] = op[2]
            count += 1
        tag_entities = [RunTag(key, value) for key, value in tags.items()]
        return count, lambda: self._client.log_batch(self.run_id, metrics=metrics, tags=tag_entities)

    def _reject(self, ops: list[Op], error: Exception) -> None:
        self._rejected += len(ops)
        self._rejected_error = f"{type(error).__name__}: {error}"[:500]
        self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(op) + "\n" for op in ops)
        log.error(
            "tracking store %s refused %d operation(s) of run %s (%s); kept in %s",
            self.config.uri,
            len(ops),
            self.run_id,
            self._rejected_error,
            self.rejected_path,
        )


def _log_batch_now(
    client: MlflowClient, config: TrackingConfig, run_id: str, *, params: dict[str, str], tags: dict[str, str]
) -> None:
    """Params and tags, synchronously, in MLflow-sized chunks (used while opening a run)."""
    from mlflow.entities import Param, RunTag

    param_items, tag_items = list(params.items()), list(tags.items())
    for chunk in _chunks(param_items, MAX_PARAMS_TAGS_PER_BATCH):
        call_with_retry(
            lambda chunk=chunk: client.log_batch(run_id, params=[Param(k, v) for k, v in chunk]),
            what="logging params",
            config=config,
            timeout_s=config.open_timeout_s,
        )
    for chunk in _chunks(tag_items, MAX_PARAMS_TAGS_PER_BATCH):
        call_with_retry(
            lambda chunk=chunk: client.log_batch(run_id, tags=[RunTag(k, v) for k, v in chunk]),
            what="logging tags",
            config=config,
            timeout_s=config.open_timeout_s,
        )


_live_trackers: weakref.WeakSet[RunTracker] = weakref.WeakSet()


@atexit.register
def _flush_live_trackers() -> None:
    """At interpreter exit, give unfinished trackers a bounded flush and spill the rest (module doc)."""
    for tracker in list(_live_trackers):
        tracker._flush_before_exit()
