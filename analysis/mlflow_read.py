"""Reading an MLflow tracking store into raw Polars frames, by SQL on SQL stores and by the public API elsewhere.

    reader = open_reader(tracking_uri, "auto")  # SqlReader on sqlite/postgresql/mysql stores, else ApiReader
    parts = reader.runs(reader.experiment_id(name, tracking_uri))   # active runs: info, tags, params, metrics
    raw = reader.history(pairs)                 # every logged value of each (run_id, metric) pair

Both readers return the same frames (tests/analysis/test_runs_compare.py checks it on a real store); analysis/
runs.py builds the runs and history frames from them.

Notable choices:
- **SQL stores are read with plain SQL** on MLflow's tables (``experiments``, ``runs``, ``tags``, ``params``,
  ``latest_metrics``, ``metrics``): a SQLite file read-only through `sqlite3` (MLflow is not even imported),
  other databases through the DBAPI connection of MLflow's own SQLAlchemy engine. MLflow's
  entities cost ~50 µs per value and ``search_runs`` builds an object per tag and param; the SQL path reads
  1,000 runs × 1,000 steps of the analysis' seven metrics in seconds (benchmarks/ANALYSIS.md). These tables
  are MLflow's private schema: any DBAPI error on them (a future MLflow that renamed a column) falls back to
  the public API with a warning, so a schema change costs speed, not results.
- **Histories are read one (run, metric) pair per query**, on MLflow's ``(run_uuid, key, step)`` index, in
  step order. Each query returns numbers only (step, timestamp, value, is_nan), flattened into numpy in C: no
  run id or metric name per value, which as Python strings were the largest cost of one query per chunk of
  runs.
- **Values come back as logged**: MLflow's SQL stores write NaN as 0 with ``is_nan`` set and ±inf as ±float
  max, and its entities return ±float max; both readers return NaN and ±inf.
- **The API reader** (an ``http://`` tracking server, or a SQL store with ``reader="api"``) pages through
  `MlflowClient.search_runs` and calls `MlflowClient.get_metric_history` per pair on a few threads (~70 ms a
  call against a one-worker local server).
"""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["READERS", "ApiReader", "Reader", "RunParts", "SqlReader", "client_for", "open_reader"]

logger = logging.getLogger(__name__)

READERS = ("auto", "sql", "api")
"""`open_reader` choices: SQL where the store is a SQL database, else the API; or either, forced."""
ReaderName = Literal["auto", "sql", "api"]

_MLFLOW_MAX_FLOAT = 1.7976931348623157e308  # MLflow's SQL stores write ±inf as ±float max
_SEARCH_PAGE = 10_000
_THREADS = 8  # concurrent requests to a tracking server
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}  # DBAPI paramstyles the SQL is written in
_LONG = {"run_id": pl.String, "key": pl.String, "value": pl.String}
_INFO = {
    "run_id": pl.String,
    "run_name": pl.String,
    "status": pl.String,
    "start_time": pl.Int64,
    "end_time": pl.Int64,
    "artifact_uri": pl.String,
}
_VALUES = {"step": pl.Int64, "timestamp": pl.Int64, "value": pl.Float64}


@dataclass(frozen=True, slots=True)
class RunParts:
    """An experiment's active runs as long frames, untyped: what both readers return."""

    info: pl.DataFrame
    """run_id, run_name, status, start_time, end_time (ms), artifact_uri: one row per run."""
    tags: pl.DataFrame
    """run_id, key, value (strings)."""
    params: pl.DataFrame
    """run_id, key, value (strings)."""
    metrics: pl.DataFrame
    """run_id, key, value (Float64): each logged metric's latest value."""


class Reader(Protocol):
    """What analysis/runs.py reads a store through."""

    name: str

    def experiment_id(self, experiment: str, tracking_uri: str) -> str:
        """The id of the experiment named (or numbered) `experiment`; ValueError naming the ones there."""
        ...

    def runs(self, experiment_id: str) -> RunParts: ...

    def history(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Every logged value of the (run_id, metric) rows of `pairs`: columns pair (the row's index in
        `pairs`), step, timestamp, value; ordered by pair, then step (a step logged twice, by a resumed run,
        in either order)."""
        ...


def client_for(tracking_uri: str) -> MlflowClient:
    """An `MlflowClient` on `tracking_uri`, importing MLflow (seconds) only now, with telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # A progress bar per downloaded artifact otherwise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:  # pragma: no cover - mlflow is a project dependency
        raise ImportError(
            "reading runs needs the mlflow package: pip install 'mlflow==3.17.2' (an mhc-ladder dependency)"
        ) from error
    return MlflowClient(tracking_uri=tracking_uri)


def open_reader(tracking_uri: str, reader: ReaderName = "auto") -> Reader:
    """`SqlReader` on a SQL store (unless ``reader="api"``), else `ApiReader`; ``reader="sql"`` on a store
    that is not SQL is a ValueError. An existing SQLite file is opened read-only with `sqlite3`, without
    importing MLflow (seconds of a cold ``ladder dashboard``); other databases through MLflow's engine."""
    if reader not in READERS:
        raise ValueError(f"reader ({reader!r}) must be one of {READERS}")
    fallback = (lambda: ApiReader(client_for(tracking_uri))) if reader == "auto" else None
    path = _sqlite_path(tracking_uri)
    if reader != "api" and path is not None and path.is_file():
        target = f"{path.resolve().as_uri()}?mode=ro"
        return SqlReader(lambda: sqlite3.connect(target, uri=True), "?", sqlite3.Error, fallback=fallback)
    client = client_for(tracking_uri)
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    sql_ok = engine is not None and engine.dialect.paramstyle in _PLACEHOLDERS
    if reader == "sql" and not sql_ok:
        raise ValueError(f"reader='sql' needs a SQL tracking store; {tracking_uri} is not one")
    if reader == "api" or not sql_ok:
        return ApiReader(client)
    mark = _PLACEHOLDERS[engine.dialect.paramstyle]
    return SqlReader(engine.raw_connection, mark, engine.dialect.loaded_dbapi.Error, fallback=fallback)


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (relative to the working directory, as MLflow reads it)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _no_experiment(experiment: str, tracking_uri: str, names: list[str]) -> ValueError:
    return ValueError(f"no MLflow experiment {experiment!r} in {tracking_uri} (experiments there: {sorted(names)})")


def _decoded(value: pl.Expr) -> pl.Expr:
    """±float max (how MLflow stores ±inf) back to ±inf; NaN stays NaN (Polars orders NaN above inf)."""
    return (
        pl.when(value.is_nan())
        .then(value)
        .when(value >= _MLFLOW_MAX_FLOAT)
        .then(float("inf"))
        .when(value <= -_MLFLOW_MAX_FLOAT)
        .then(float("-inf"))
        .otherwise(value)
    )


# ----------------------------------------------------------------------------------------------------------
# SQL.


class SqlReader:
    """Plain SQL on MLflow's tables (module doc), on DBAPI connections from `connect` whose parameter marker
    is `mark`; `fallback` (built when needed) takes over, with a warning, on a DBAPI `error`."""

    name = "sql"

    def __init__(
        self,
        connect: Callable[[], Any],
        mark: str,
        error: type[BaseException],
        fallback: Callable[[], ApiReader] | None = None,
    ) -> None:
        self.connect = connect
        self.mark = mark
        self._error = error
        self.fallback = fallback

    def experiment_id(self, experiment: str, tracking_uri: str) -> str:
        try:
            rows = self._query({"all": ("SELECT experiment_id, name FROM experiments", [])})["all"]
        except self._error as error:
            return self._fall_back(error).experiment_id(experiment, tracking_uri)
        by_name = {name: str(id_) for id_, name in rows}
        ids = set(by_name.values())
        if experiment in by_name:
            return by_name[experiment]
        if experiment in ids:  # an id, as MLflow's client also accepts
            return experiment
        raise _no_experiment(experiment, tracking_uri, list(by_name))

    def runs(self, experiment_id: str) -> RunParts:
        active = f"SELECT run_uuid FROM runs WHERE experiment_id = {self.mark} AND lifecycle_stage = 'active'"
        queries = {
            "info": "SELECT run_uuid, name, status, start_time, end_time, artifact_uri FROM runs "
            f"WHERE experiment_id = {self.mark} AND lifecycle_stage = 'active'",
            "tags": f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({active})",
            "params": f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({active})",
            "metrics": f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({active})",
        }
        try:
            rows = self._query({name: (sql, [int(experiment_id)]) for name, sql in queries.items()})
        except self._error as error:
            return self._fall_back(error).runs(experiment_id)
        metrics = pl.DataFrame(
            rows["metrics"], schema={**_LONG, "value": pl.Float64, "is_nan": pl.Boolean}, orient="row"
        )
        return RunParts(
            info=pl.DataFrame(rows["info"], schema=_INFO, orient="row"),
            tags=pl.DataFrame(rows["tags"], schema=_LONG, orient="row"),
            params=pl.DataFrame(rows["params"], schema=_LONG, orient="row"),
            metrics=metrics.select(
                "run_id",
                "key",
                pl.when(pl.col("is_nan")).then(float("nan")).otherwise(_decoded(pl.col("value"))).alias("value"),
            ),
        )

    def history(self, pairs: pl.DataFrame) -> pl.DataFrame:
        # ORDER BY step makes SQLite pick MLflow's (run_uuid, key, step) index: without it, lacking table
        # statistics, it scans the metric's whole range of the primary key (60x slower at 1M values). Adding
        # the timestamp to the ORDER BY would make SQLite sort every run's values (half the query's time).
        sql = (
            "SELECT step, timestamp, value, is_nan FROM metrics "
            f"WHERE run_uuid = {self.mark} AND key = {self.mark} ORDER BY step"
        )
        rows: list[tuple] = []
        counts = np.zeros(pairs.height, dtype=np.int64)
        try:
            connection = self.connect()
            try:
                cursor = connection.cursor()
                for index, pair in enumerate(pairs.select("run_id", "metric").iter_rows()):
                    cursor.execute(sql, pair)
                    got = cursor.fetchall()
                    rows.extend(got)
                    counts[index] = len(got)
            finally:
                connection.close()
        except self._error as error:
            return self._fall_back(error).history(pairs)
        # Numbers only, flattened in C: a third of the time of building the frame from the row tuples.
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=4 * len(rows))
        columns = flat.reshape(-1, 4)
        frame = pl.DataFrame(
            {
                "pair": np.repeat(np.arange(pairs.height, dtype=np.int64), counts),
                # Exact: steps and millisecond timestamps are far below 2**53.
                "step": columns[:, 0].astype(np.int64),
                "timestamp": columns[:, 1].astype(np.int64),
                "value": columns[:, 2],
                "is_nan": columns[:, 3] != 0,
            }
        )
        return frame.select(
            "pair",
            "step",
            "timestamp",
            pl.when(pl.col("is_nan")).then(float("nan")).otherwise(_decoded(pl.col("value"))).alias("value"),
        )

    def _query(self, queries: dict[str, tuple[str, list[Any]]]) -> dict[str, list[tuple]]:
        """Each query's rows, on one raw DBAPI connection (SQLAlchemy's Row objects would cost more than the
        query)."""
        connection = self.connect()
        try:
            cursor = connection.cursor()
            out = {}
            for name, (sql, args) in queries.items():
                cursor.execute(sql, args)
                out[name] = cursor.fetchall()
            return out
        finally:
            connection.close()

    def _fall_back(self, error: BaseException) -> ApiReader:
        if self.fallback is None:
            raise error
        logger.warning(
            "reading MLflow's tables by SQL failed (%s: %s), so this store is read through the MLflow API "
            "instead (slower, same results). Pass reader='api' to skip the attempt",
            type(error).__name__,
            error,
        )
        return self.fallback()


# ----------------------------------------------------------------------------------------------------------
# Public API.


class ApiReader:
    """`MlflowClient.search_runs` and `get_metric_history` (any store, including tracking servers)."""

    name = "api"

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def experiment_id(self, experiment: str, tracking_uri: str) -> str:
        found = self.client.get_experiment_by_name(experiment)
        if found is None and experiment.isdigit():
            try:
                found = self.client.get_experiment(experiment)
            except Exception:  # MlflowException: no such id
                found = None
        if found is None:
            raise _no_experiment(experiment, tracking_uri, [e.name for e in self.client.search_experiments()])
        return found.experiment_id

    def runs(self, experiment_id: str) -> RunParts:
        entities, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], max_results=_SEARCH_PAGE, page_token=token)
            entities.extend(page)
            token = page.token
            if not token:
                break
        info = [
            (r.info.run_id, r.info.run_name, r.info.status, r.info.start_time, r.info.end_time, r.info.artifact_uri)
            for r in entities
        ]

        def long(items: str) -> list[tuple]:
            return [(r.info.run_id, k, v) for r in entities for k, v in getattr(r.data, items).items()]

        metrics = pl.DataFrame(long("metrics"), schema={**_LONG, "value": pl.Float64}, orient="row")
        return RunParts(
            info=pl.DataFrame(info, schema=_INFO, orient="row"),
            tags=pl.DataFrame(long("tags"), schema=_LONG, orient="row"),
            params=pl.DataFrame(long("params"), schema=_LONG, orient="row"),
            metrics=metrics.with_columns(_decoded(pl.col("value")).alias("value")),
        )

    def history(self, pairs: pl.DataFrame) -> pl.DataFrame:
        wanted = pairs.select("run_id", "metric").rows()
        logger.info("reading %d metric histories through the MLflow API", len(wanted))

        def one(index: int) -> list[tuple]:
            run_id, key = wanted[index]
            return [(index, m.step, m.timestamp, m.value) for m in self.client.get_metric_history(run_id, key)]

        with ThreadPoolExecutor(_THREADS) as pool:
            rows = [row for part in pool.map(one, range(len(wanted))) for row in part]
        frame = pl.DataFrame(rows, schema={"pair": pl.Int64, **_VALUES}, orient="row")
        return frame.sort("pair", "step").with_columns(_decoded(pl.col("value")).alias("value"))
