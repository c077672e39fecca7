"""Tuning studies on a real local Ray, real Optuna SQLite storage and a real MLflow store: parallel trials,
pruning, duplicates, and a driver or a worker killed mid-study.

The kill tests run on loaded 2-core machines (CI runs two test processes beside other work), so they wait on
states, never on time: a kill fires when a run directory holds a checkpoint that is not its final one (the
trainer keeps only the newest two, so no particular step directory can be waited for), every wait has a
generous deadline, and no assertion is about how long anything took.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import orchestrator
from orchestrator.checkpoint import PREFIX, list_checkpoints
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
             checkpoint_every: {checkpoint_every}}}
heartbeat: {{interval_s: 1, grace_s: 4, max_retry: 2}}
"""
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module (its workers stay warm between tests); RAY_ADDRESS=local keeps it off
    any cluster someone started on this machine. Started as `tune` starts its own: a start that a loaded
    machine makes fail (Ray's 15 s wait for its dashboard agent) is retried."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        from orchestrator.scheduler import connect

        connect(None)
        yield
        import ray

        ray.shutdown()


def _write(
    tmp_path: Path, cache: Path, name: str, extra: str, steps: int = 20, checkpoint_every: int = 10
) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = SPEC.format(
        name=name,
        cache=cache,
        db=tmp_path / "mlruns.db",
        storage=tmp_path / "runs",
        steps=steps,
        checkpoint_every=checkpoint_every,
    )
    path.write_text(text + extra)
    return path


def _storage(spec) -> optuna.storages.RDBStorage:
    """The study's storage for a reader beside live writers: it waits up to 60 s for SQLite's lock, as the
    driver and the workers do, not sqlite3's default 5 s (a loaded machine holds locks longer)."""
    return optuna.storages.RDBStorage(spec.storage_url, engine_kwargs={"connect_args": {"timeout": 60}})


def _study(spec) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=_storage(spec))


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


def test_a_result_for_a_trial_its_heartbeat_already_failed_is_dropped_not_raised(tmp_path, data_cache_dir):
    """Under load a live trial's heartbeat can lapse: Optuna fails it and queues a retry, and then its worker's
    result arrives. Writing that result raised UpdateFinishedTrialError and killed the driver (`ladder tune`
    exited 1); it must be dropped (the retry reuses the run), and a worker must not claim such a trial."""
    from orchestrator.tune.measure import RunMeasurement
    from orchestrator.tune.runner import _claim, _Driver, _Parked
    from orchestrator.tune.study import quiet_optuna, trial_id

    path = _write(
        tmp_path,
        data_cache_dir,
        "lapsed",
        "search:\n  sinkhorn_iters: {low: 0, high: 30}\nobjectives: [val_loss, ds_error]\nbudget: {n_trials: 3}\n",
    )
    spec = load_tuning(path)
    driver = _Driver(spec, spec_file=None, address=None, poll_s=0.1, on_update=None)
    with quiet_optuna():
        trials = [driver.study.ask(driver.distributions) for _ in range(3)]
    ids = [trial_id(driver.storage, spec.study_name, t.number) for t in trials]
    for tid in ids:  # what `fail_stale_trials` does to a trial whose heartbeat lapsed
        driver.storage.set_trial_state_values(tid, state=optuna.trial.TrialState.FAIL)

    measurement = RunMeasurement("run", val_loss=3.0, ds_error=1e-4, step_time_s=0.1, hardware="cpu")
    parked = _Parked(ids[0], spec.trial_spec(trials[0].params, trials[0].number), measurement, steps=20)
    driver._tell_complete(trials[0].number, parked)
    driver._tell_failed(trials[1].number, "diverged", None)
    assert not _claim(driver.storage, ids[2])

    stored = _study(spec).get_trials()
    assert [t.state.name for t in stored] == ["FAIL"] * 3
    assert all("outcome" not in t.user_attrs and "worker" not in t.user_attrs for t in stored)


# ------------------------------------------------------------------------------------------- fault injection
T = TypeVar("T")
WAIT_S = 300.0  # a deadline for states that a quiet machine reaches in seconds; only a hang should hit it


def _wait_for(what: str, probe: Callable[[], T | None], *, interval_s: float = 0.05, context=lambda: "") -> T:
    """Poll ``probe`` until it returns something other than None (or raises); fail after `WAIT_S` naming
    ``what`` and ``context()`` (the driver's log, its error)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_S:.0f} s waiting for {what}\n{context()}")
        time.sleep(interval_s)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's checkpoints, newest first (the trainer keeps the newest two)."""
    return [int(path.name.removeprefix(PREFIX)) for path in list_checkpoints(run_dir)]


def _mid_run(run_dir: Path, total_steps: int) -> int | None:
    """The newest checkpoint's step if the run has one and it is not the final one, else None."""
    steps = _checkpoint_steps(run_dir)
    return steps[0] if steps and steps[0] < total_steps else None


def _resumed_without_gap(spec, run_key: str, killed_at: float, checkpoint_step: int) -> None:
    """The run of ``run_key`` is one FINISHED MLflow run on attempt >= 2 whose steps after the kill continue
    from a checkpoint at or after ``checkpoint_step`` (not from step 1), and whose curve has no gap."""
    info = find_run(spec.tracking_config, run_key)
    assert info.status == "FINISHED" and info.attempt >= 2  # the same MLflow run, reopened
    history = MlflowClient(spec.tracking_config.uri).get_metric_history(info.run_id, "train/loss")
    after_kill = [m.step for m in history if m.timestamp / 1000 >= killed_at]
    assert after_kill and min(after_kill) > checkpoint_step, (checkpoint_step, sorted(after_kill)[:3])
    assert {m.step for m in history} == set(range(1, spec.base_spec.total_steps() + 1))


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
        checkpoint_every=5,  # a kill lands between the first checkpoint and the last: a 15-step window
    )
    spec = load_tuning(path)
    total = spec.base_spec.total_steps()
    runs_dir = Path(spec.storage)
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["result"] = tune(spec)
        except BaseException as error:  # surfaced by the asserts below
            outcome["error"] = error

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()

    def first_checkpoint() -> tuple[str, int] | None:
        """(run_key, step) once the one trial's run directory holds a checkpoint. The directory exists only
        after a worker claimed the trial, so the study exists by then: no reader races its creation."""
        assert driver.is_alive(), f"the driver ended before the trial checkpointed: {outcome}"
        for run_dir in runs_dir.iterdir() if runs_dir.is_dir() else []:
            if steps := _checkpoint_steps(run_dir):
                return run_dir.name, steps[0]
        return None

    run_key, step = _wait_for("the trial's first checkpoint", first_checkpoint, context=lambda: str(outcome))
    assert step < total, "the trial trained to the end before its worker could be killed"
    (victim,) = _study(spec).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert victim.user_attrs["run_key"] == run_key
    number, params, worker = victim.number, victim.params, victim.user_attrs["worker"]
    killed_at = time.time()
    os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
    driver.join(timeout=WAIT_S)
    assert not driver.is_alive() and "error" not in outcome, outcome
    result = outcome["result"]
    assert result.finished and (result.complete, result.failed) == (1, 0)

    failed, retry = _study(spec).get_trials()
    assert failed.number == number and failed.state.name == "FAIL" and failed.params == params
    assert "outcome" not in failed.user_attrs  # failed by its heartbeat, not told by the driver
    assert retry.state.name == "COMPLETE" and retry.system_attrs["failed_trial"] == failed.number
    assert retry.params == failed.params and retry.user_attrs["run_key"] == run_key
    _resumed_without_gap(spec, run_key, killed_at, step)
    assert find_run(spec.tracking_config, run_key).tags["optuna_trial"] == str(retry.number)
    assert len(_child_runs(spec)[run_key]) == 1


def test_killing_the_driver_mid_study_and_rerunning_completes_it_without_duplicates(
    tmp_path, pd_literary_dataset, data_cache_dir, local_ray, ray_temp
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
        checkpoint_every=5,
    )
    spec = load_tuning(path)
    total = spec.base_spec.total_steps()
    runs_dir = Path(spec.storage)
    log_path = tmp_path / "driver.log"
    # Its own Ray temp folder: the driver's embedded Ray is told apart from the fixture's (and anyone's) by it.
    source_root = str(Path(orchestrator.__file__).resolve().parents[1])  # the code this test imported
    env = {
        **os.environ,
        **RAY_ENV,
        "RAY_TMPDIR": str(ray_temp.path),
        "PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "tune", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,  # so the driver and its embedded Ray die together
        )

    def driver_log() -> str:
        return f"ladder tune exited {process.poll()}; its output:\n{log_path.read_text(errors='replace')[-6000:]}"

    storage: list[optuna.storages.RDBStorage] = []  # opened once the driver made the file: never beside it
    seen_complete: list[bool] = []

    def mid_study() -> dict[str, int] | None:
        """Run keys of runs with a non-final checkpoint, once some trial is COMPLETE (so the rerun must skip a
        settled trial as well as retry interrupted ones); None while that state is not reached."""
        assert process.poll() is None, f"the study ended before it could be killed\n{driver_log()}"
        run_dirs = [d for d in runs_dir.iterdir() if d.is_dir()] if runs_dir.is_dir() else []
        if not seen_complete and any(_checkpoint_steps(d)[:1] == [total] for d in run_dirs):
            if not storage:  # opened once, and only now: the driver created the file and its tables
                storage.append(_storage(spec))
            with contextlib.suppress(KeyError):  # a run trained to its end: the study exists by now
                study = optuna.load_study(study_name=spec.study_name, storage=storage[0])
                if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                    seen_complete.append(True)
        if not seen_complete:
            return None
        mid = {d.name: step for d in run_dirs if (step := _mid_run(d, total)) is not None}
        return mid or None

    try:
        mid = _wait_for("a complete trial and another one mid-run", mid_study, interval_s=0.1, context=driver_log)
        killed_at = time.time()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT_S)
        # An orphaned worker would keep training (and beating for) a trial that the rerun must find dead.
        survivors = ray_temp.end_processes(signals=(signal.SIGKILL,), grace_s=WAIT_S)
        assert not survivors, f"the killed driver's Ray processes {survivors} outlived SIGKILL for {WAIT_S:.0f} s"
    before = {t.number: t for t in _study(spec).get_trials()}
    interrupted = [
        t for t in before.values() if t.state.name == "RUNNING" and t.user_attrs.get("run_key") in mid
    ]
    assert interrupted, f"no trial was mid-run when the driver was killed: {mid}, {list(before.values())}"
    settled = {t.number: t.user_attrs["run_key"] for t in before.values() if t.state.name == "COMPLETE"}
    assert settled

    result = tune(spec)
    assert result.finished and (result.complete, result.pruned, result.failed) == (4, 0, 0)
    trials = _study(spec).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert len({t.user_attrs["run_key"] for t in complete}) == 4
    assert len({t.params["sinkhorn_iters"] for t in complete}) == 4
    by_number = {t.number: t for t in trials}
    for number, run_key in settled.items():  # a settled trial stays as it was: never repeated
        assert by_number[number].state.name == "COMPLETE"
        assert [t.number for t in complete if t.user_attrs["run_key"] == run_key] == [number]
    for victim in interrupted:  # failed by its heartbeat, retried with its parameters, and that retry completed
        assert by_number[victim.number].state.name == "FAIL"
        retries = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
        assert len(retries) == 1 and retries[0].params == victim.params
        run_key = victim.user_attrs["run_key"]
        _resumed_without_gap(spec, run_key, killed_at, mid[run_key])
    runs = _child_runs(spec)
    assert set(runs) == {t.user_attrs["run_key"] for t in complete}
    assert all(len(found) == 1 and found[0].info.status == "FINISHED" for found in runs.values())
