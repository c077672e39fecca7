"""Tracking through a real MLflow SQLite store: what a run leaves behind, reuse by run_key, batching, endings.

One SQLite file per module (creating the schema costs seconds); each test uses its own experiment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from models.errors import ConfigError, LadderError
from orchestrator.tracking import (
    ParamConflictError,
    RunFinishedError,
    RunTracker,
    TrackingConfig,
    TrackingError,
    find_run,
    find_runs,
    flatten_params,
    serve_ui,
)


class RecordingClient(MlflowClient):
    """A real client that records, for every ``log_batch``, the calling thread and the batch's sizes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[threading.Thread, int, int]] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=True):
        self.batches.append((threading.current_thread(), len(metrics), len(tags)))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow-sqlite")


@pytest.fixture
def config(store_dir: Path, request: pytest.FixtureRequest) -> TrackingConfig:
    return TrackingConfig(
        uri=f"sqlite:///{store_dir / 'mlruns.db'}",
        experiment=request.node.name,
        flush_interval_s=0.2,
        retry_initial_s=0.05,
        retry_max_s=0.5,
    )


def history(config: TrackingConfig, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(point.step, point.value) for point in MlflowClient(config.uri).get_metric_history(run_id, key)]


# ---------------------------------------------------------------------------------------------------- config
def test_relative_sqlite_paths_become_absolute_with_artifacts_and_spills_beside_the_file(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrackingConfig(uri="sqlite:///stores/mlruns.db?timeout=30")
    assert config.uri == f"sqlite:///{tmp_path}/stores/mlruns.db?timeout=30"
    assert config.artifact_location == str(tmp_path / "stores" / "mlartifacts")
    assert config.spill_dir == str(tmp_path / "stores" / "mlspill")
    assert TrackingConfig().uri == f"sqlite:///{tmp_path}/mlruns.db"


def test_a_config_resolved_in_one_directory_means_the_same_store_in_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrackingConfig(uri="sqlite:///mlruns.db", experiment="sweep")
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "worker")  # a Ray worker with another working directory
    assert TrackingConfig(**config.model_dump()) == config


def test_the_tracking_uri_environment_variable_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.chdir(tmp_path)
    config = TrackingConfig()
    assert config.uri == "http://127.0.0.1:5999"
    assert config.artifact_location is None  # the server decides
    assert config.spill_dir == str(tmp_path / "mlspill")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"uri": "mlruns.db"}, "tracking.uri (mlruns.db) must be a URI"),
        ({"uri": "sqlite:///:memory:"}, "tracking.uri (sqlite:///:memory:) must name a SQLite file"),
        ({"retry_initial_s": 5, "retry_max_s": 1}, "tracking.retry_max_s (1.0) must be >= retry_initial_s"),
        ({"flush_interval_s": 0}, "tracking.flush_interval_s (0)"),
    ],
)
def test_bad_tracking_configs_name_the_field_value_and_rule(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrackingConfig(**fields)


def test_params_flatten_to_dotted_keys_and_oversized_values_are_refused():
    assert flatten_params(
        {"model": {"dim": 64, "moe": {"top_k": 2}}, "betas": (0.9, 0.95), "name": None}
    ) == {
        "model.dim": "64",
        "model.moe.top_k": "2",
        "betas": "[0.9, 0.95]",
        "name": "None",
    }
    with pytest.raises(ValueError, match="param 'blob' is 6001 characters"):
        flatten_params({"blob": "x" * 6001})


def test_the_ui_refuses_a_server_uri_it_would_only_shadow():
    with pytest.raises(ValueError, match="already a tracking server"):
        serve_ui("http://127.0.0.1:5000")


# ---------------------------------------------------------------------------------------------------- runs
def test_a_finished_run_holds_its_tags_params_histories_artifacts_and_status(config, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("as logged")
    params = {
        "model": {"dim": 64, "residual": {"variant": "mhc", "n": 4}},
        "training": {"betas": [0.9, 0.95]},
    }
    tags = {"size": "nano", "variant": "mhc", "n": 4, "seed": 0}
    with RunTracker.open(config, "key-full", "nano-mhc", tags=tags, params=params) as tracker:
        for step in range(1, 201):
            tracker.log_metrics(
                {"train/loss": 10 / step, "train/lr": 1e-3 * step, "perf/tokens_per_s": 99.5 + step}, step
            )
            if step % 50 == 0:
                tracker.log_dict_artifact(
                    {"layer_forward": [1.0, step / 100]}, f"diagnostics/step_{step:08d}.json"
                )
        tracker.log_dict_artifact({"model": {"dim": 64}, "lr": 0.001}, "config/resolved.yaml")
        tracker.log_artifact(notes, "extra")
        notes.write_text("changed after logging")  # the upload is of the file as it was when logged
        tracker.set_tags({"params_total": 12345})
        tracker.finish("FINISHED")

    client = MlflowClient(config.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "nano-mhc"
    assert {
        key: run.data.tags[key]
        for key in ("size", "variant", "n", "seed", "run_key", "attempt", "params_total")
    } == {
        "size": "nano",
        "variant": "mhc",
        "n": "4",
        "seed": "0",
        "run_key": "key-full",
        "attempt": "1",
        "params_total": "12345",
    }
    assert "failure_reason" not in run.data.tags
    assert run.data.params == {
        "model.dim": "64",
        "model.residual.variant": "mhc",
        "model.residual.n": "4",
        "training.betas": "[0.9, 0.95]",
    }
    steps = list(range(1, 201))
    assert history(config, tracker.run_id, "train/loss") == [(s, 10 / s) for s in steps]
    assert history(config, tracker.run_id, "train/lr") == [(s, 1e-3 * s) for s in steps]
    assert history(config, tracker.run_id, "perf/tokens_per_s") == [(s, 99.5 + s) for s in steps]

    downloaded = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "download")))
    profiles = sorted(path.name for path in (downloaded / "diagnostics").iterdir())
    assert profiles == [f"step_{step:08d}.json" for step in (50, 100, 150, 200)]
    assert json.loads((downloaded / "diagnostics" / "step_00000150.json").read_text()) == {
        "layer_forward": [1.0, 1.5]
    }
    assert yaml.safe_load((downloaded / "config" / "resolved.yaml").read_text()) == {
        "model": {"dim": 64},
        "lr": 0.001,
    }
    assert (downloaded / "extra" / "notes.txt").read_text() == "as logged"
    assert Path(config.artifact_location) in (downloaded.parent, *Path(run.info.artifact_uri).parents)
    assert not tracker.spill_path.exists()
    assert not (Path(config.spill_dir) / tracker.run_id).exists()  # staged artifacts cleaned up


def test_reopening_a_failed_run_key_continues_the_same_run_and_a_finished_one_refuses(config):
    tags, params = {"variant": "mhc"}, {"lr": 0.001}
    first = RunTracker.open(config, "key-resume", "resume", tags=tags, params=params)
    for step in range(1, 51):
        first.log_metrics({"train/loss": 1 / step}, step)
    first.finish("FAILED", failure_reason="killed")
    interrupted = find_run(config, "key-resume")
    assert (interrupted.status, interrupted.failure_reason, interrupted.attempt) == ("FAILED", "killed", 1)

    second = RunTracker.open(config, "key-resume", "resume", tags=tags, params=params)
    assert (second.run_id, second.attempt) == (first.run_id, 2)
    assert find_run(config, "key-resume").status == "RUNNING"
    for step in range(51, 101):
        second.log_metrics({"train/loss": 1 / step}, step)
    second.finish("FINISHED")

    run = MlflowClient(config.uri).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempt"] == "2"
    assert "failure_reason" not in run.data.tags
    assert run.data.tags["previous_failure_reason"] == "killed"
    assert history(config, first.run_id, "train/loss") == [(s, 1 / s) for s in range(1, 101)]
    assert len(MlflowClient(config.uri).search_runs([run.info.experiment_id])) == 1

    with pytest.raises(RunFinishedError, match="already FINISHED") as raised:
        RunTracker.open(config, "key-resume", "resume", tags=tags, params=params)
    assert raised.value.run_id == first.run_id
    assert isinstance(raised.value, LadderError)
    finished = find_run(config, "key-resume")
    assert (finished.status, finished.run_id, finished.attempt) == ("FINISHED", first.run_id, 2)
    assert find_run(config, "key-never-run") is None
    assert set(find_runs(config)) == {"key-resume"}


def test_reopening_with_a_changed_param_raises_and_new_params_are_added(config):
    first = RunTracker.open(config, "key-params", "p", tags={}, params={"lr": 0.001, "dim": 64})
    first.finish("KILLED")
    with pytest.raises(ParamConflictError, match=r"lr: '0.001' -> '0.002'"):
        RunTracker.open(config, "key-params", "p", tags={}, params={"lr": 0.002, "dim": 64})
    reopened = RunTracker.open(
        config, "key-params", "p", tags={}, params={"lr": 0.001, "dim": 64, "extra": "x"}
    )
    reopened.finish("FINISHED")
    assert MlflowClient(config.uri).get_run(first.run_id).data.params == {
        "lr": "0.001",
        "dim": "64",
        "extra": "x",
    }


def test_ten_thousand_points_cost_a_handful_of_batched_calls_none_on_the_callers_thread(config):
    config = config.model_copy(update={"flush_interval_s": 60.0})  # only full batches until finish
    client = RecordingClient(config.uri)
    tracker = RunTracker.open(config, "key-throughput", "t", tags={}, params={}, client=client)
    for step in range(2000):
        tracker.log_metrics({f"metric_{index}": step + index / 10 for index in range(5)}, step)
    tracker.finish("FINISHED")

    metric_batches = [(thread, num_metrics) for thread, num_metrics, _ in client.batches if num_metrics]
    assert sum(num for _, num in metric_batches) == 10_000
    assert (
        len(metric_batches) <= 11
    )  # 10 full batches of MLflow's 1000-metric maximum (+ at most one partial)
    assert all(num <= 1000 for _, num in metric_batches)
    assert all(thread is not threading.current_thread() for thread, _ in metric_batches)
    assert history(config, tracker.run_id, "metric_3") == [(s, s + 0.3) for s in range(2000)]
    assert tracker.stats.sent_metrics == 10_000


def test_points_beyond_the_memory_cap_spill_to_disk_and_arrive_in_order(config, caplog):
    config = config.model_copy(update={"flush_interval_s": 60.0, "max_buffered_points": 50})
    tracker = RunTracker.open(config, "key-spill", "s", tags={}, params={})
    for step in range(300):
        tracker.log_metrics({"a": step, "b": -step}, step)
    assert tracker.stats.spilled > 0
    assert tracker.spill_path.exists()
    assert "spilled to" in caplog.text
    tracker.finish("FINISHED")
    assert history(config, tracker.run_id, "a") == [(s, float(s)) for s in range(300)]
    assert history(config, tracker.run_id, "b") == [(s, float(-s)) for s in range(300)]
    assert not tracker.spill_path.exists()


def test_leaving_the_block_on_a_crash_fails_the_run_and_on_an_interrupt_kills_it(config):
    with (
        pytest.raises(RuntimeError),
        RunTracker.open(config, "key-crash", "c", tags={}, params={}) as tracker,
    ):
        tracker.log_metrics({"loss": 1.0}, 1)
        raise RuntimeError("boom")
    crashed = MlflowClient(config.uri).get_run(tracker.run_id)
    assert crashed.info.status == "FAILED"
    assert crashed.data.tags["failure_reason"] == "crashed"
    assert crashed.data.tags["failure_detail"] == "RuntimeError: boom"
    assert history(config, tracker.run_id, "loss") == [(1, 1.0)]

    with (
        pytest.raises(KeyboardInterrupt),
        RunTracker.open(config, "key-ctrl-c", "k", tags={}, params={}) as tracker,
    ):
        raise KeyboardInterrupt
    killed = MlflowClient(config.uri).get_run(tracker.run_id)
    assert (killed.info.status, killed.data.tags["failure_reason"]) == ("KILLED", "killed")

    with RunTracker.open(config, "key-clean", "ok", tags={}, params={}) as tracker:
        tracker.log_metrics({"loss": 0.5}, 1)
    assert MlflowClient(config.uri).get_run(tracker.run_id).info.status == "FINISHED"
    with pytest.raises(TrackingError, match="already ended"):
        tracker.log_metrics({"loss": 0.4}, 2)


def test_a_child_run_gets_its_explicit_parent_whatever_mlflow_run_id_says(config, monkeypatch):
    parent = RunTracker.open(config, "key-sweep", "sweep", tags={"kind": "sweep"}, params={})
    monkeypatch.setenv(
        "MLFLOW_RUN_ID", parent.run_id[::-1]
    )  # inherited from some launcher (mlflow issue 15713)
    child = RunTracker.open(config, "key-child", "child", tags={}, params={}, parent_run_id=parent.run_id)
    assert "MLFLOW_RUN_ID" not in os.environ
    for step in range(5):  # two live trackers in one process, each with its own run
        parent.log_metrics({"sweep/done": step}, step)
        child.log_metrics({"loss": 2.0 * step}, step)
    child.finish("FINISHED")
    parent.finish("FINISHED")
    client = MlflowClient(config.uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in client.get_run(parent.run_id).data.tags
    assert history(config, child.run_id, "loss") == [(s, 2.0 * s) for s in range(5)]
    assert history(config, parent.run_id, "loss") == []


def test_bad_names_and_values_fail_at_the_call_not_later_in_the_background(config):
    with pytest.raises(ValueError, match="run_key"):
        RunTracker.open(config, "key with 'quotes'", "x", tags={}, params={})
    with pytest.raises(ValueError, match="param 'cfg' is 7000 characters"):
        RunTracker.open(config, "key-bad-param", "x", tags={}, params={"cfg": "y" * 7000})
    assert find_run(config, "key-bad-param") is None  # nothing was created
    with RunTracker.open(config, "key-bad-names", "x", tags={}, params={}) as tracker:
        with pytest.raises(ValueError, match="metric name 'loss!'"):
            tracker.log_metrics({"loss!": 1.0}, 0)
        with pytest.raises(ValueError, match="must not resolve to another path"):
            tracker.log_metrics({"train//loss": 1.0}, 0)
        with pytest.raises(TypeError):
            tracker.log_metrics({"loss": "high"}, 0)
        with pytest.raises(ValueError, match="relative path"):
            tracker.log_dict_artifact({}, "../outside.json")
        tracker.log_metrics({"loss": float("nan")}, 1)  # non-finite values are data, not errors
    assert tracker.stats.rejected == 0
    [point] = MlflowClient(config.uri).get_metric_history(tracker.run_id, "loss")
    assert point.step == 1 and point.value != point.value


def test_a_process_that_exits_without_finishing_still_delivers_its_points(config):
    script = f"""
from orchestrator.tracking import RunTracker, TrackingConfig
config = TrackingConfig(uri={config.uri!r}, experiment={config.experiment!r}, flush_interval_s=600)
tracker = RunTracker.open(config, "key-exit", "exit", tags={{}}, params={{}})
for step in range(50):
    tracker.log_metrics({{"loss": float(step)}}, step)
print(tracker.run_id)
"""  # no finish: the process just ends, with every point still in memory (the flush interval is 10 min)
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[-1]
    assert history(config, run_id, "loss") == [(s, float(s)) for s in range(50)]
    assert find_run(config, "key-exit").status == "RUNNING"  # an interrupted attempt, to be resumed


def test_points_the_store_refuses_are_kept_and_reported_not_retried_forever(config):
    tracker = RunTracker.open(config, "key-refused", "r", tags={}, params={})
    tracker.log_metrics({"loss": 1.0}, 1)
    assert tracker.flush(timeout_s=30)
    MlflowClient(config.uri).delete_run(tracker.run_id)  # someone deletes the run mid-training
    for step in range(2, 5):
        tracker.log_metrics({"loss": float(step)}, step)
    with pytest.raises(TrackingError, match=r"refused 3 operation\(s\)") as raised:
        tracker.finish("FINISHED", timeout_s=30)
    assert "not marked FINISHED" in str(raised.value)  # a deleted run cannot be ended either
    kept = [json.loads(line) for line in tracker.rejected_path.read_text().splitlines()]
    assert [(op[1], op[3], op[2]) for op in kept] == [("loss", step, float(step)) for step in range(2, 5)]
    assert tracker.stats.failed_calls == 0  # bad input is not retried
