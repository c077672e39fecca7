"""Tuning studies on a real local Ray, real Optuna SQLite storage and a real MLflow store: parallel trials,
pruning, duplicates, and a driver or a worker killed mid-study."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.tracking import find_run
from orchestrator.tune import load_tuning, measure_run, trials_frame, tune
from orchestrator.tune.runner import MAX_DUPLICATE_STREAK

SPEC = """\
name: {name}
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {cache}}}
tracking: {{uri: "sqlite:///{db}"}}
storage: {storage}
base:
  model: {{preset: nano, residual: {{variant: mhc, n: 2}}}}
  training: {{budget: {{steps: {steps}}}, batch_size: 8, seq_len: 64, eval_every: 10, eval_windows: 4,
             checkpoint_every: 10}}
heartbeat: {{interval_s: 1, grace_s: 4, max_retry: 2}}
"""
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module (its workers stay warm between tests); RAY_ADDRESS=local keeps it off
    any cluster someone started on this machine."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        from orchestrator.scheduler import connect

        connect(None)
        yield
        import ray

        ray.shutdown()


def _write(tmp_path: Path, cache: Path, name: str, extra: str, steps: int = 20) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = SPEC.format(
        name=name, cache=cache, db=tmp_path / "mlruns.db", storage=tmp_path / "runs", steps=steps
    )
    path.write_text(text + extra)
    return path


def _study(spec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=spec.storage_url)


def _child_runs(spec) -> dict[str, list]:
    """MLflow runs of the study's experiment by run_key, parents left out."""
    client = MlflowClient(spec.tracking_config.uri)
    experiment = client.get_experiment_by_name(spec.tracking_config.experiment)
    by_key: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if run.data.tags.get("study_parent") != "true":
            by_key.setdefault(run.data.tags["run_key"], []).append(run)
    return by_key


def test_two_parallel_workers_complete_a_small_multi_objective_study(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray
):
    path = _write(
        tmp_path,
        data_cache_dir,
        "parallel",
        """\
search:
  sinkhorn_iters: {low: 0, high: 30, step: 10}
budget: {n_trials: 3, parallelism: 2}
""",
    )
    spec = load_tuning(path)
    result = tune(spec, spec_file=path)
    assert result.finished and (result.complete, result.pruned, result.failed) == (3, 0, 0)
    assert result.launched == 4  # three trials and the baseline; duplicate proposals launch nothing

    frame = trials_frame(spec.storage_url, spec.study_name)
    complete = frame.filter(pl.col("state") == "COMPLETE")
    assert complete.height == 3
    assert complete["run_key"].n_unique() == 3 and complete["sinkhorn_iters"].n_unique() == 3
    assert frame.filter(pl.col("state") != "COMPLETE")["outcome"].to_list() == ["duplicate"] * (
        frame.height - 3
    )

    # Optuna was told the three metrics, which are what MLflow holds for each trial's child run.
    client = MlflowClient(spec.tracking_config.uri)
    baseline = client.get_run(result.baseline_run_id)
    assert baseline.data.tags["variant"] == "residual" and baseline.data.tags["optuna_baseline"] == "true"
    baseline_step = measure_run(spec.tracking_config, baseline.data.tags["run_key"], 20).step_time_s
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["study_parent"] == "true" and parent.data.tags["study"] == "parallel"
    runs = [baseline]
    for trial in _study(spec).get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        assert trial.values == [attrs["val_loss"], attrs["step_time_overhead"], attrs["ds_error"]]
        assert attrs["step_time_overhead"] == pytest.approx(attrs["step_time_s"] / baseline_step - 1)
        run = client.get_run(attrs["run_id"])
        runs.append(run)
        assert run.info.status == "FINISHED" and run.data.tags["run_key"] == attrs["run_key"]
        assert run.data.tags["optuna_trial"] == str(trial.number) and run.data.tags["study"] == "parallel"
        assert run.data.tags["sinkhorn_iters"] == str(trial.params["sinkhorn_iters"])
        assert run.data.metrics["final/val_loss"] == attrs["val_loss"]
        assert run.data.metrics["eval/ds_error_max"] == attrs["ds_error"]
    assert all(run.data.tags["mlflow.parentRunId"] == result.parent_run_id for run in runs)
    overlapping = [
        (a.info.run_id, b.info.run_id)
        for a in runs
        for b in runs
        if a is not b and a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
    ]
    assert overlapping, "no two runs trained at the same time"

    # The Pareto flag: no complete trial dominates a flagged one; every unflagged one is dominated.
    objectives = ("val_loss", "step_time_overhead", "ds_error")
    points = {row["number"]: [row[o] for o in objectives] for row in complete.iter_rows(named=True)}

    def dominated(number: int) -> bool:
        mine = points[number]
        return any(
            all(o <= m for o, m in zip(other, mine, strict=True)) and other != mine
            for other in points.values()
        )

    flags = dict(zip(complete["number"], complete["pareto"], strict=True))
    assert any(flags.values()) and all(flags[n] == (not dominated(n)) for n in points)

    started = time.monotonic()
    again = tune(spec, spec_file=path)
    assert again.launched == 0 and again.finished and time.monotonic() - started < 10
    assert trials_frame(spec.storage_url, spec.study_name).height == frame.height

    report = CliRunner().invoke(app, ["tune", str(path), "--report"], terminal_width=200)
    assert report.exit_code == 0, report.output
    assert f"Pareto front ({sum(flags.values())} of 3 complete)" in report.output


def test_a_hopeless_trial_is_pruned_at_its_first_evaluation(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray
):
    path = _write(
        tmp_path,
        data_cache_dir,
        "pruning",
        """\
search:
  lr: {low: 1.0e-7, high: 1.0e-2, log: true}
objectives: [val_loss]
pruner: {kind: median, n_startup_trials: 1}
enqueue: [{lr: 1.0e-2}, {lr: 1.0e-7}]
budget: {n_trials: 2, parallelism: 1}
""",
        steps=30,
    )
    spec = load_tuning(path)
    result = tune(spec)
    assert (result.complete, result.pruned, result.failed, result.launched) == (1, 1, 0, 2)
    good, hopeless = _study(spec).get_trials()
    assert good.state.name == "COMPLETE" and good.params == {"lr": 1e-2}
    assert sorted(good.intermediate_values) == [10, 20]
    assert hopeless.state.name == "PRUNED" and hopeless.params == {"lr": 1e-7}
    assert list(hopeless.intermediate_values) == [10]
    assert hopeless.intermediate_values[10] > good.intermediate_values[10]
    assert hopeless.user_attrs["steps"] == 10  # 20 of its 30 steps were never trained
    run = MlflowClient(spec.tracking_config.uri).get_run(hopeless.user_attrs["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "pruned"


def test_a_search_space_smaller_than_the_budget_trains_each_point_once(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray
):
    path = _write(
        tmp_path,
        data_cache_dir,
        "tiny",
        """\
search:
  sinkhorn_iters: {low: 1, high: 2}
objectives: [ds_error]
pruner: {kind: none}
budget: {n_trials: 4, parallelism: 2}
""",
        steps=10,
    )
    spec = load_tuning(path)
    result = tune(spec)
    assert result.exhausted and not result.finished
    assert (result.complete, result.launched) == (2, 2)
    frame = trials_frame(spec.storage_url, spec.study_name)
    assert sorted(frame.filter(pl.col("state") == "COMPLETE")["sinkhorn_iters"]) == [1, 2]
    duplicates = frame.filter(pl.col("outcome") == "duplicate")
    assert duplicates.height >= MAX_DUPLICATE_STREAK and set(duplicates["state"]) == {"FAIL"}
    assert len(_child_runs(spec)) == 2


def test_a_worker_killed_mid_trial_fails_by_heartbeat_and_is_retried_from_its_checkpoint(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray
):
    path = _write(
        tmp_path,
        data_cache_dir,
        "worker-killed",
        """\
search:
  sinkhorn_iters: {low: 0, high: 30}
objectives: [val_loss, ds_error]
budget: {n_trials: 1, parallelism: 1}
""",
        steps=40,
    )
    spec = load_tuning(path)
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["result"] = tune(spec)
        except BaseException as error:  # surfaced by the assert below
            outcome["error"] = error

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline and driver.is_alive():
        time.sleep(0.2)
        if not Path(spec.storage_url.removeprefix("sqlite:///")).exists():
            continue
        for trial in _study(spec).get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            worker, key = trial.user_attrs.get("worker"), trial.user_attrs.get("run_key")
            if worker and key and (Path(spec.storage) / key / "step-00000010").exists():
                victim = trial
    assert victim is not None, f"no trial reached its first checkpoint: {outcome}"
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    driver.join(timeout=180)
    assert not driver.is_alive() and "error" not in outcome, outcome
    result = outcome["result"]
    assert result.finished and (result.complete, result.failed) == (1, 0)

    failed, retry = _study(spec).get_trials()
    assert failed.number == victim.number and failed.state.name == "FAIL"
    assert "outcome" not in failed.user_attrs  # failed by its heartbeat, not told by the driver
    assert retry.state.name == "COMPLETE" and retry.system_attrs["failed_trial"] == failed.number
    assert retry.params == failed.params and retry.user_attrs["run_key"] == failed.user_attrs["run_key"]
    info = find_run(spec.tracking_config, retry.user_attrs["run_key"])
    assert info.status == "FINISHED" and info.attempt >= 2  # the same MLflow run, resumed
    assert info.tags["optuna_trial"] == str(retry.number)
    assert len(_child_runs(spec)[retry.user_attrs["run_key"]]) == 1


def test_killing_the_driver_mid_study_and_rerunning_completes_it_without_duplicates(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray
):
    path = _write(
        tmp_path,
        data_cache_dir,
        "driver-killed",
        """\
search:
  sinkhorn_iters: {low: 0, high: 30}
objectives: [val_loss, ds_error]
budget: {n_trials: 4, parallelism: 2}
""",
        steps=40,
    )
    spec = load_tuning(path)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "tune", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **RAY_ENV},
        start_new_session=True,  # so the driver and its embedded Ray die together
    )
    interrupted: list = []
    deadline = time.monotonic() + 240
    while not interrupted and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        if not Path(spec.storage_url.removeprefix("sqlite:///")).exists():
            continue
        try:
            trials = _study(spec).get_trials()
        except KeyError:  # the study is not created yet
            continue
        if any(t.state.name == "COMPLETE" for t in trials):
            interrupted = [
                t
                for t in trials
                if t.state.name == "RUNNING"
                and t.user_attrs.get("run_key")
                and (Path(spec.storage) / t.user_attrs["run_key"] / "step-00000010").exists()
            ]
    assert process.poll() is None, "the study ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert interrupted, "no trial was mid-run when the driver was killed"

    result = tune(spec)
    assert result.finished and (result.complete, result.pruned, result.failed) == (4, 0, 0)
    trials = _study(spec).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert len({t.user_attrs["run_key"] for t in complete}) == 4
    assert len({t.params["sinkhorn_iters"] for t in complete}) == 4
    by_number = {t.number: t for t in trials}
    for (
        victim
    ) in interrupted:  # failed by its heartbeat, retried with its parameters, and that retry completed
        assert by_number[victim.number].state.name == "FAIL"
        retries = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retries) == 1 and retries[0].params == victim.params
    runs = _child_runs(spec)
    assert set(runs) == {t.user_attrs["run_key"] for t in complete}
    assert all(len(found) == 1 and found[0].info.status == "FINISHED" for found in runs.values())
