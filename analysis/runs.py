"""Runs and metric histories from any MLflow tracking store as Polars frames; results written as parquet/JSON.

    runs = load_runs("sqlite:///mlruns.db", "quickstart")                  # one row per run
    history = load_history("sqlite:///mlruns.db", "quickstart", ["train/loss"])   # long format
    runs, history = load_experiment(uri, "quickstart", HISTORY_METRICS)   # both, reading the store once
    profiles = load_amax_profiles(uri, "quickstart")        # per-layer Amax at each run's last evaluation

What the trainer logs (the contract these frames read) is in orchestrator/train.py: grid coordinates and
counts as tags, the flattened resolved config as params, per-step metrics, ``final/*`` metrics at the end and
``diagnostics/step_XXXXXXXX.json`` artifacts at every evaluation.

Notable choices:
- **No pandas, and SQL where the store is SQL.** analysis/mlflow_read.py reads the store into long Polars
  frames: plain SQL on MLflow's tables for SQL stores, `MlflowClient` elsewhere (a tracking server); both give
  the same frames. Histories are read only for the (run, metric) pairs the runs logged.
- **Repeated steps** (a resumed run re-logs the steps since its last checkpoint) are deduplicated per (run,
  metric, step), keeping the value logged last. MLflow stores NaN with an ``is_nan`` flag and ±inf as ±float
  max; both come back as the non-finite values they were.
- **Tokens and FLOPs of a history row are step × the run's per-step constants**, not joined from the
  ``train/tokens`` and ``train/flops`` histories: the trainer logs exactly ``step × tokens_per_step`` and
  ``step × flops_per_step``, and not reading those two histories halves the values read.
- **One row per run_key.** If a key has several runs (two workers raced to create it), the ledger's rule picks
  one (orchestrator/tracking/runs.py): FINISHED, then RUNNING, then the rest, newest first. The parent run of
  a sweep (tag ``sweep_parent=true``) is not a grid point and is left out.
- **Step-time statistics skip the warm-up**: medians over the steps after the first `WARMUP_FRACTION` of the
  run (at least the first step is dropped: it includes compilation and allocator growth).
- **Params become columns** under their dotted names (``model.dim``, ``training.lr``), typed Int64 / Float64 /
  Boolean when every value parses as one (``None`` is null), else String; a param named like a core column is
  renamed ``param.<name>``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from analysis.mlflow_read import READERS, Reader, ReaderName, RunParts, client_for, open_reader

__all__ = [
    "AMAX_QUANTITIES",
    "HISTORY_METRICS",
    "HISTORY_SCHEMA",
    "READERS",
    "WARMUP_FRACTION",
    "load_amax_profiles",
    "load_experiment",
    "load_history",
    "load_runs",
    "read_results",
    "write_results",
]

logger = logging.getLogger(__name__)

WARMUP_FRACTION = 0.1
"""Fraction of a run's steps left out of its step-time statistics (at least its first step)."""

HISTORY_METRICS = (
    "train/loss",
    "train/grad_norm",
    "eval/loss",
    "eval/amax_fwd_composite_max",
    "eval/amax_bwd_composite_max",
    "eval/ds_error_max",
    "perf/step_time_s",
)
"""The per-step metrics the analysis reads (`load_experiment`'s default)."""

HISTORY_SCHEMA = {
    "run_key": pl.String,
    "run_id": pl.String,
    "step": pl.Int64,
    "tokens": pl.Float64,
    "flops": pl.Float64,
    "metric": pl.String,
    "value": pl.Float64,
}
"""Columns of a history frame: one row per (run, metric, step)."""

AMAX_QUANTITIES = ("layer_forward", "layer_backward", "composite_forward", "composite_backward", "ds_error")
"""Per-layer lists in a ``diagnostics/step_*.json`` artifact; ``expert_load`` adds expert_max_violation,
expert_cv and dead_experts per MoE layer."""

_STEP_TIME_METRICS = ("perf/step_time_s",)
_SUMMARY_METRICS = ("eval/loss", *_STEP_TIME_METRICS)  # what `load_runs` reads for best loss and step time
_STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "SCHEDULED": 2, "FAILED": 3, "KILLED": 3}
_THREADS = 8  # concurrent requests to an artifact store

# Tags read into typed columns: name -> dtype. Everything else in `tags` stays in MLflow.
_TAG_COLUMNS: dict[str, pl.DataType] = {
    "run_key": pl.String(),
    "size": pl.String(),
    "variant": pl.String(),
    "n": pl.Int64(),
    "sinkhorn_iters": pl.Int64(),
    "seed": pl.Int64(),
    "sweep": pl.String(),
    "budget": pl.Float64(),
    "params_total": pl.Int64(),
    "params_activated": pl.Int64(),
    "params_activated_non_embedding": pl.Int64(),
    "total_steps": pl.Int64(),
    "device": pl.String(),
    "hardware": pl.String(),
    "unigram_entropy": pl.Float64(),
    "failure_reason": pl.String(),
    "diverged_step": pl.Int64(),
    "attempt": pl.Int64(),
    "optuna_trial": pl.Int64(),
    "study": pl.String(),
}
# Latest values of logged metrics read into columns: metric -> column.
_METRIC_COLUMNS = {
    "final/val_loss": "final_val_loss",
    "final/tokens": "final_tokens",
    "final/flops": "final_flops",
    "final/wall_time_s": "wall_time_s",
    "final/peak_memory_mb": "peak_memory_mb",
    "train/flops_6n": "flops_6n",
    "train/flops": "flops",
    "train/tokens": "tokens",
    "train/epochs": "epochs",
    "train/loss": "last_train_loss",
    "eval/loss": "last_eval_loss",
}


# ----------------------------------------------------------------------------------------------------------
# MLflow access.


# ----------------------------------------------------------------------------------------------------------
# Runs.


def _parse_param(values: pl.Series) -> pl.Series:
    """A String column of MLflow param values, typed Int64 / Float64 / Boolean when every value parses."""
    cleaned = values.replace({"None": None, "": None, "null": None})
    if cleaned.null_count() == cleaned.len():
        return cleaned
    for dtype in (pl.Int64, pl.Float64):
        parsed = cleaned.cast(dtype, strict=False)
        if parsed.null_count() == cleaned.null_count():
            return parsed
    lowered = cleaned.str.to_lowercase()
    if lowered.drop_nulls().is_in(["true", "false"]).all():
        return lowered == "true"
    return values


def _wide(long: pl.DataFrame, names: Iterable[str], dtype: pl.DataType) -> pl.DataFrame:
    """run_id and a column per name (null where a run lacks the key) from a long run_id, key, value frame."""
    names = list(names)
    wide = (
        long.filter(pl.col("key").is_in(names)).pivot(on="key", index="run_id", values="value")
        if not long.is_empty()
        else pl.DataFrame(schema={"run_id": pl.String})
    )
    return wide.with_columns(pl.lit(None, dtype).alias(n) for n in names if n not in wide.columns)


def _raw_runs(parts: RunParts, experiment: str) -> pl.DataFrame:
    """One row per run (the sweep parent left out): info, typed tag columns, latest metrics, parsed params."""
    tags = _wide(parts.tags, [*_TAG_COLUMNS, "mlflow.parentRunId", "sweep_parent"], pl.String())
    metrics = _wide(parts.metrics, _METRIC_COLUMNS, pl.Float64()).rename(_METRIC_COLUMNS)
    frame = (
        parts.info.join(tags, on="run_id", how="left")
        .filter(pl.col("sweep_parent").fill_null("") != "true")
        .join(metrics, on="run_id", how="left")
        .select(
            "run_id",
            "run_name",
            pl.lit(experiment, pl.String).alias("experiment"),
            pl.col("mlflow.parentRunId").alias("parent_run_id"),
            "status",
            pl.col("start_time", "end_time").cast(pl.Datetime("ms")),
            "artifact_uri",
            *(pl.col(name).cast(dtype, strict=False) for name, dtype in _TAG_COLUMNS.items()),
            *_METRIC_COLUMNS.values(),
        )
    )
    params = parts.params.filter(pl.col("run_id").is_in(frame.get_column("run_id").implode()))
    names = sorted(params.get_column("key").unique())
    if not names:
        return frame
    wide = _wide(params, names, pl.String())
    typed = wide.select(
        "run_id",
        *(_parse_param(wide.get_column(n)).alias(f"param.{n}" if n in frame.columns else n) for n in names),
    )
    return frame.join(typed, on="run_id", how="left")


def _one_per_key(frame: pl.DataFrame) -> pl.DataFrame:
    """Runs without a run_key are keyed by their id; of several runs per key, the ledger's preferred one."""
    frame = frame.with_columns(pl.coalesce("run_key", "run_id").alias("run_key"))
    ranked = frame.with_columns(
        pl.col("status").replace_strict(_STATUS_RANK, default=4, return_dtype=pl.Int64).alias("_rank")
    ).sort(["run_key", "_rank", "start_time"], descending=[False, False, True], nulls_last=True)
    kept = ranked.unique("run_key", keep="first", maintain_order=True).drop("_rank")
    if dropped := frame.height - kept.height:
        logger.warning(
            "%d runs share a run_key with another run (workers raced to create them); kept one per key "
            "(FINISHED, then RUNNING, then the rest, newest first)",
            dropped,
        )
    return kept


def _arm_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """`arm`: the variant, or "variant n=N it=K" where one variant ran with several (n, sinkhorn_iters)."""
    settings = frame.group_by("variant").agg(pl.struct("n", "sinkhorn_iters").n_unique().alias("_settings"))
    return (
        frame.join(settings, on="variant", how="left", nulls_equal=True)
        .with_columns(
            pl.when(pl.col("_settings") > 1)
            .then(pl.format("{} n={} it={}", "variant", "n", "sinkhorn_iters"))
            .otherwise(pl.col("variant"))
            .alias("arm")
        )
        .drop("_settings")
    )


def _per_step_constants(frame: pl.DataFrame) -> pl.DataFrame:
    """tokens_per_step, flops_per_token, flops_per_step (see the module doc) and the hardware fallback."""
    batch, seq = "training.batch_size", "training.seq_len"
    from_params = (
        pl.col(batch).cast(pl.Float64) * pl.col(seq).cast(pl.Float64)
        if batch in frame.columns and seq in frame.columns
        else pl.lit(None, pl.Float64)
    )
    return frame.with_columns(
        pl.coalesce(from_params, pl.col("final_tokens") / pl.col("total_steps")).alias("tokens_per_step"),
        pl.coalesce(pl.col("final_flops") / pl.col("final_tokens"), pl.col("flops") / pl.col("tokens")).alias(
            "flops_per_token"
        ),
        pl.coalesce("hardware", "device", pl.lit("unknown")).alias("hardware"),
        pl.col("flops_6n").alias("final_flops_6n"),
        (pl.col("epochs") > 1.0 + 1e-9).fill_null(False).alias("repeated_data"),
    ).with_columns((pl.col("tokens_per_step") * pl.col("flops_per_token")).alias("flops_per_step"))


def _summaries(frame: pl.DataFrame, history: pl.DataFrame) -> pl.DataFrame:
    """best_val_loss, last_step and the step-time statistics, joined onto the runs frame."""
    best = (
        history.filter(pl.col("metric") == "eval/loss", pl.col("value").is_finite())
        .group_by("run_key")
        .agg(pl.col("value").min().alias("best_val_loss"))
    )
    last = history.group_by("run_key").agg(pl.col("step").max().alias("last_step"))
    times = history.filter(pl.col("metric").is_in(_STEP_TIME_METRICS), pl.col("value").is_finite())
    timed = (
        times.with_columns(pl.col("step").max().over("run_key").alias("_last"))
        .filter(pl.col("step") > pl.max_horizontal(pl.lit(1), (pl.col("_last") * WARMUP_FRACTION).ceil()))
        .group_by("run_key")
        .agg(
            pl.col("value").median().alias("step_time_s"),
            pl.col("value").mean().alias("step_time_mean_s"),
            pl.len().cast(pl.Int64).alias("num_timed_steps"),
        )
    )
    out = frame
    for part in (best, last, timed):
        out = out.join(part, on="run_key", how="left")
    return out.with_columns(
        (pl.col("tokens_per_step") / pl.col("step_time_s")).alias("tokens_per_s"),
        (pl.col("flops_per_step") / pl.col("step_time_s")).alias("flops_per_s"),
    )


_CORE_ORDER = [
    "run_key",
    "run_id",
    "run_name",
    "experiment",
    "parent_run_id",
    "status",
    "failure_reason",
    "diverged_step",
    "attempt",
    "start_time",
    "end_time",
    "sweep",
    "arm",
    "variant",
    "n",
    "sinkhorn_iters",
    "size",
    "budget",
    "seed",
    "params_total",
    "params_activated",
    "params_activated_non_embedding",
    "total_steps",
    "last_step",
    "final_val_loss",
    "best_val_loss",
    "last_eval_loss",
    "last_train_loss",
    "final_tokens",
    "final_flops",
    "final_flops_6n",
    "tokens_per_step",
    "flops_per_token",
    "flops_per_step",
    "epochs",
    "repeated_data",
    "step_time_s",
    "step_time_mean_s",
    "num_timed_steps",
    "tokens_per_s",
    "flops_per_s",
    "wall_time_s",
    "peak_memory_mb",
    "device",
    "hardware",
    "unigram_entropy",
    "optuna_trial",
    "study",
    "artifact_uri",
]


def _finish_runs(frame: pl.DataFrame, history: pl.DataFrame) -> pl.DataFrame:
    frame = _summaries(frame, history).drop("flops_6n", "flops", "tokens")
    params = [c for c in frame.columns if c not in _CORE_ORDER]
    return frame.select(_CORE_ORDER + params).sort("run_key")


# ----------------------------------------------------------------------------------------------------------
# Histories.


def _history(
    reader: Reader, runs: pl.DataFrame, logged: pl.DataFrame, metrics: Sequence[str] | None
) -> pl.DataFrame:
    """The long history of `runs` (with `run_key`, `tokens_per_step`, `flops_per_step` columns): the values
    of `metrics` (None: all) each run logged (`logged`: the latest-metrics frame of `RunParts`), ordered by
    run_key, metric and step."""
    constants = runs.select("run_id", "run_key", "tokens_per_step", "flops_per_step")
    # Pairs in output order: the reader returns values grouped by pair and in step order, so the values need
    # sorting only where a step was logged twice (keeping its latest value).
    pairs = (
        logged.filter(pl.lit(True) if metrics is None else pl.col("key").is_in(list(metrics)))
        .join(constants, on="run_id", how="inner")
        .select("run_key", "run_id", pl.col("key").alias("metric"), "tokens_per_step", "flops_per_step")
        .sort("run_key", "metric")
    )
    if pairs.is_empty():
        return pl.DataFrame(schema=HISTORY_SCHEMA)
    values = reader.history(pairs)
    repeated = (pl.col("pair") == pl.col("pair").shift(1)) & (pl.col("step") == pl.col("step").shift(1))
    if values.select(repeated.any()).item():  # a resumed run re-logged steps: the latest value goes last
        values = values.sort("pair", "step", "timestamp", maintain_order=True)
    last_of_step = (
        (pl.col("step") != pl.col("step").shift(-1)) | (pl.col("pair") != pl.col("pair").shift(-1))
    ).fill_null(True)
    values = values.filter(last_of_step)
    labels = pairs.gather(values.get_column("pair"))
    return pl.concat([labels, values.drop("pair", "timestamp")], how="horizontal").select(
        "run_key",
        "run_id",
        "step",
        (pl.col("step") * pl.col("tokens_per_step")).alias("tokens"),
        (pl.col("step") * pl.col("flops_per_step")).alias("flops"),
        "metric",
        "value",
    )


# ----------------------------------------------------------------------------------------------------------
# Public loaders.


def load_experiment(
    tracking_uri: str,
    experiment: str,
    metrics: Sequence[str] | None = HISTORY_METRICS,
    *,
    reader: ReaderName = "auto",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The runs frame and the history of `metrics` (None: every logged metric), reading the store once.

    The runs frame has one row per run_key (module doc): grid coordinates and counts from the tags (`size`,
    `variant`, `n`, `sinkhorn_iters`, `seed`, `budget`, `params_*`, `hardware` ...), `arm` (the variant, or
    "variant n=N it=K" where a variant ran with several settings), `status` and `failure_reason`, final and
    best
    validation loss, tokens, FLOPs (true: `final_flops`; 6·N·D: `final_flops_6n`), the per-step constants,
    `epochs` and `repeated_data` (epochs > 1), step-time statistics (median over steps after the warm-up),
    tokens/s and FLOP/s at the median step time, wall time, peak memory, then every param as a column.

    `reader` (`READERS`): "auto" reads SQL stores by SQL and others through the MLflow API; "sql" or "api"
    force one (analysis/mlflow_read.py; both give the same frames).
    """
    store = open_reader(tracking_uri, reader)
    parts = store.runs(store.experiment_id(experiment, tracking_uri))
    frame = _per_step_constants(_arm_labels(_one_per_key(_raw_runs(parts, experiment))))
    wanted = None if metrics is None else list(dict.fromkeys([*metrics, *_SUMMARY_METRICS]))
    history = _history(store, frame, parts.metrics, wanted)
    runs = _finish_runs(frame, history)
    if metrics is not None:
        history = history.filter(pl.col("metric").is_in(list(metrics)))
    return runs, history


def load_runs(tracking_uri: str, experiment: str) -> pl.DataFrame:
    """One row per run of `experiment` (name or id) in the store at `tracking_uri` (see `load_experiment`)."""
    return load_experiment(tracking_uri, experiment, metrics=())[0]


def load_history(tracking_uri: str, experiment: str, metrics: Sequence[str] | None = None) -> pl.DataFrame:
    """Long-format history: run_key, run_id, step, tokens, flops, metric, value (`HISTORY_SCHEMA`).

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///mlruns.db``, ``http://host:5000``).
        experiment: experiment name or id.
        metrics: metric names to read; None reads every logged metric.
    """
    return load_experiment(tracking_uri, experiment, metrics=metrics)[1]


def load_amax_profiles(
    tracking_uri: str, experiment: str, *, runs: pl.DataFrame | None = None, steps: str = "last"
) -> pl.DataFrame:
    """Per-layer diagnostics from the ``diagnostics/step_*.json`` artifacts, long format.

    Columns: run_key, run_id, step, quantity (`AMAX_QUANTITIES`, expert_max_violation, expert_cv,
    dead_experts), layer (0-based sublayer, or MoE layer for the expert quantities), value.

    Args:
        runs: the runs frame (saves searching the experiment again).
        steps: "last" reads each run's last evaluation; "all" reads every evaluation (for the evolution).
    """
    if steps not in ("last", "all"):
        raise ValueError(f"steps ({steps!r}) must be 'last' or 'all'")
    if runs is None:
        store = open_reader(tracking_uri)
        runs = _one_per_key(_raw_runs(store.runs(store.experiment_id(experiment, tracking_uri)), experiment))
    keys = dict(zip(runs.get_column("run_id").to_list(), runs.get_column("run_key").to_list(), strict=True))
    uris = dict(
        zip(runs.get_column("run_id").to_list(), runs.get_column("artifact_uri").to_list(), strict=True)
    )

    def pick(paths: Iterable[str]) -> list[tuple[int, str]]:
        by_step = sorted(
            (int(Path(p).stem[len("step_") :]), p)
            for p in paths
            if Path(p).stem.startswith("step_") and Path(p).stem[len("step_") :].isdigit()
        )
        return by_step[-1:] if steps == "last" else by_step

    def rows_local(run_id: str, root: Path) -> list[tuple]:
        rows = []
        for step, path in pick(str(p) for p in (root / "diagnostics").glob("step_*.json")):
            rows.extend(_profile_rows(keys[run_id], run_id, step, json.loads(Path(path).read_text())))
        return rows

    remote = [run_id for run_id in keys if _local_path(uris.get(run_id)) is None]
    client = client_for(tracking_uri) if remote else None  # MLflow only for artifacts off this machine

    def rows_remote(run_id: str, tmp: str) -> list[tuple]:
        assert client is not None
        rows = []
        listed = [f.path for f in client.list_artifacts(run_id, "diagnostics") if not f.is_dir]
        for step, path in pick(listed):
            local = client.download_artifacts(run_id, path, os.path.join(tmp, run_id))
            rows.extend(_profile_rows(keys[run_id], run_id, step, json.loads(Path(local).read_text())))
        return rows

    with tempfile.TemporaryDirectory(prefix="mhc-ladder-diagnostics-") as tmp:

        def read(run_id: str) -> list[tuple]:
            root = _local_path(uris.get(run_id))
            return rows_local(run_id, root) if root is not None else rows_remote(run_id, tmp)

        with ThreadPoolExecutor(_THREADS) as pool:
            rows = [row for part in pool.map(read, keys) for row in part]
    return pl.DataFrame(
        rows,
        schema={
            "run_key": pl.String,
            "run_id": pl.String,
            "step": pl.Int64,
            "quantity": pl.String,
            "layer": pl.Int64,
            "value": pl.Float64,
        },
        orient="row",
    ).sort("run_key", "step", "quantity", "layer")


def _local_path(artifact_uri: str | None) -> Path | None:
    """The directory of a run's artifacts when the store keeps them on this machine's file system (read
    directly: listing and downloading through MLflow costs ~25 ms per run), else None. A local directory that
    does not exist is a run that logged no artifacts."""
    if not artifact_uri:
        return None
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(artifact_uri)
    return None


def _profile_rows(run_key: str, run_id: str, step: int, profile: Mapping[str, Any]) -> list[tuple]:
    rows = []
    for quantity in AMAX_QUANTITIES:
        for layer, value in enumerate(profile.get(quantity) or []):
            rows.append((run_key, run_id, step, quantity, layer, _float(value)))
    for layer, load in enumerate(profile.get("expert_load") or []):
        for name, quantity in (
            ("max_violation", "expert_max_violation"),
            ("cv", "expert_cv"),
            ("dead_experts", "dead_experts"),
        ):
            if name in load:
                rows.append((run_key, run_id, step, quantity, layer, _float(load[name])))
    return rows


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


# ----------------------------------------------------------------------------------------------------------
# Results on disk.


def write_results(results: Any, directory: str | os.PathLike) -> dict[str, Path]:
    """Write every Polars frame of `results` (a dataclass or a mapping) to ``<name>.parquet`` and everything
    else that is JSON-serialisable to ``results.json``; returns the paths written by name.

    Frames that are None are skipped; dataclass values (a config) become dicts. Non-finite floats are written
    as JSON null.
    """
    items = (
        {f.name: getattr(results, f.name) for f in dataclasses.fields(results)}
        if dataclasses.is_dataclass(results)
        else dict(results)
    )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    scalars: dict[str, Any] = {}
    for name, value in items.items():
        if isinstance(value, pl.DataFrame):
            path = out / f"{name}.parquet"
            value.write_parquet(path)
            written[name] = path
        elif value is not None:
            scalars[name] = _jsonable(value)
    path = out / "results.json"
    path.write_text(json.dumps(scalars, indent=2, allow_nan=False) + "\n")
    written["results"] = path
    return written


def read_results(directory: str | os.PathLike) -> dict[str, Any]:
    """What `write_results` wrote: frames by name plus the entries of ``results.json``."""
    root = Path(directory)
    items: dict[str, Any] = json.loads((root / "results.json").read_text())
    for path in sorted(root.glob("*.parquet")):
        items[path.stem] = pl.read_parquet(path)
    return items


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Iterable):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
