"""The ledger side of tracking: a run's identity is its ``run_key`` tag; find runs by key, flatten params.

The scheduler asks `find_run` (or `find_runs` for a whole experiment) before launching: FINISHED means skip,
RUNNING / FAILED / KILLED means an earlier attempt exists and `RunTracker.open` will continue it. Deleted runs
are ignored. If a key has several runs (two workers raced to create it), the most telling one wins: FINISHED,
then RUNNING, then the rest, newest first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.tracking._mlflow import MAX_PARAM_VALUE_LENGTH, call_with_retry, check_name, make_client
from orchestrator.tracking.config import TrackingConfig
from orchestrator.tracking.errors import TrackingError
from orchestrator.tracking.sqlite_ledger import read_runs

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = ["RUN_KEY_TAG", "RunInfo", "find_run", "find_runs", "flatten_params"]

RUN_KEY_TAG = "run_key"
ATTEMPT_TAG = "attempt"
FAILURE_REASON_TAG = "failure_reason"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs

_RUN_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,250}$")
_STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 2, "FAILED": 3, "KILLED": 3}


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What the ledger knows about one run_key's MLflow run."""

    run_id: str
    run_key: str
    experiment_id: str
    status: str  # RUNNING | SCHEDULED | FINISHED | FAILED | KILLED
    attempt: int  # 1 for the first attempt, +1 per reopening
    failure_reason: str | None
    start_time_ms: int | None
    end_time_ms: int | None
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)  # latest value of each metric (progress views)

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @classmethod
    def from_mlflow(cls, run: Run) -> RunInfo:
        return cls.from_record(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            start_time_ms=run.info.start_time,
            end_time_ms=run.info.end_time,
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
        )

    @classmethod
    def from_record(
        cls,
        *,
        run_id: str,
        experiment_id: str,
        status: str,
        start_time_ms: int | None,
        end_time_ms: int | None,
        tags: dict[str, str],
        metrics: dict[str, float],
    ) -> RunInfo:
        """From a run's stored fields, whichever reader fetched them (MLflow's client or the SQLite ledger)."""
        return cls(
            run_id=run_id,
            run_key=tags.get(RUN_KEY_TAG, ""),
            experiment_id=experiment_id,
            status=status,
            attempt=int(tags.get(ATTEMPT_TAG, "1")),
            failure_reason=tags.get(FAILURE_REASON_TAG),
            start_time_ms=start_time_ms,
            end_time_ms=end_time_ms,
            tags=tags,
            metrics=metrics,
        )


def check_run_key(run_key: str) -> str:
    if not isinstance(run_key, str) or not _RUN_KEY.match(run_key):
        raise ValueError(f"run_key {run_key!r} must be 1-250 characters from A-Z a-z 0-9 _ . : -")
    return run_key


def _preferred(runs: list[RunInfo]) -> RunInfo:
    return min(runs, key=lambda run: (_STATUS_RANK.get(run.status, 4), -(run.start_time_ms or 0)))


def experiment_id(client: MlflowClient, config: TrackingConfig, *, create: bool) -> str | None:
    """The id of ``config.experiment``, created (at ``config.artifact_location``) if asked; None if absent."""

    def lookup() -> str | None:
        experiment = client.get_experiment_by_name(config.experiment)
        if experiment is None:
            return None
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"experiment {config.experiment!r} ({experiment.experiment_id}) is deleted in {config.uri}: "
                "restore it (mlflow experiments restore) or choose another tracking.experiment"
            )
        return experiment.experiment_id

    found = call_with_retry(
        lookup, what="looking up the experiment", config=config, timeout_s=config.open_timeout_s
    )
    if found is not None or not create:
        return found

    def create_it() -> str:
        try:
            return client.create_experiment(config.experiment, artifact_location=config.artifact_location)
        except Exception as error:  # another worker created it first
            if getattr(error, "error_code", None) == "RESOURCE_ALREADY_EXISTS" and (existing := lookup()):
                return existing
            raise

    return call_with_retry(
        create_it, what="creating the experiment", config=config, timeout_s=config.open_timeout_s
    )


def search_key(client: MlflowClient, config: TrackingConfig, exp_id: str, run_key: str) -> list[Run]:
    """Every active run of ``exp_id`` tagged ``run_key``."""
    check_run_key(run_key)
    return call_with_retry(
        lambda: list(
            client.search_runs([exp_id], filter_string=f"tags.{RUN_KEY_TAG} = '{run_key}'", max_results=1000)
        ),
        what=f"searching runs for run_key {run_key}",
        config=config,
        timeout_s=config.open_timeout_s,
    )


def find_run(config: TrackingConfig, run_key: str, *, client: MlflowClient | None = None) -> RunInfo | None:
    """The run tagged ``run_key`` in ``config.experiment`` (see the module doc for duplicates), or None."""
    client = client or make_client(config)
    exp_id = experiment_id(client, config, create=False)
    if exp_id is None:
        return None
    runs = search_key(client, config, exp_id, run_key)
    return _preferred([RunInfo.from_mlflow(run) for run in runs]) if runs else None


def find_runs(config: TrackingConfig, *, client: MlflowClient | None = None) -> dict[str, RunInfo]:
    """Every run_key of ``config.experiment`` with its preferred run: one query for a whole sweep (read from
    the SQLite file directly when it can be, see `sqlite_ledger`; through MLflow otherwise)."""
    runs = read_runs(config, RunInfo.from_record) if client is None else None
    if runs is None:
        runs = _search_all(client or make_client(config), config)
    by_key: dict[str, list[RunInfo]] = {}
    for run in runs:
        if run.run_key:
            by_key.setdefault(run.run_key, []).append(run)
    return {key: _preferred(candidates) for key, candidates in by_key.items()}


def _search_all(client: MlflowClient, config: TrackingConfig) -> list[RunInfo]:
    """Every active run of the experiment through MLflow's paged search."""
    exp_id = experiment_id(client, config, create=False)
    if exp_id is None:
        return []
    runs: list[RunInfo] = []
    token = None
    while True:
        page = call_with_retry(
            lambda token=token: client.search_runs([exp_id], max_results=1000, page_token=token),
            what="listing runs",
            config=config,
            timeout_s=config.open_timeout_s,
        )
        runs += [RunInfo.from_mlflow(run) for run in page]
        token = page.token
        if not token:
            return runs


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested mappings → dotted keys; lists as JSON; others as ``str``; MLflow's key and length rules."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
            return
        text = _param_value(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            raise ValueError(
                f"param {prefix!r} is {len(text)} characters; MLflow keeps at most {MAX_PARAM_VALUE_LENGTH}: "
                "log it with log_dict_artifact instead"
            )
        flat[check_name("param", prefix)] = text

    walk("", params)
    return flat
