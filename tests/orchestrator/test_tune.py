"""Tuning studies on a real local Ray, real Optuna SQLite storage and a real MLflow store: parallel trials,
pruning, duplicates, and a driver or a worker killed mid-study."""

import time
from pathlib import Path

import optuna
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
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
