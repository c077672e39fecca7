"""Sweeps on a real local Ray with a real MLflow store: every grid point exactly once, whatever gets killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.scheduler import plan, submit
from orchestrator.sweep import load_sweep

SWEEP = """\
name: {name}
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {cache}}}
tracking: {{uri: "sqlite:///{db}"}}
storage: {storage}
base:
  training: {{batch_size: 8, seq_len: 64, eval_every: 20, eval_windows: 8, checkpoint_every: 10}}
grid:
  size: [nano]
  budget: [1.0e+10, {big}]
  residual: [{{variant: residual}}, {{variant: mhc, n: 2}}]
max_concurrent: 2
"""


@pytest.fixture(autouse=True)
def _ray_environment(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _write_sweep(tmp_path: Path, data_cache_dir: Path, name: str, big: str = "3.0e+10") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SWEEP.format(
            name=name, cache=data_cache_dir, db=tmp_path / "mlruns.db", storage=tmp_path / "runs", big=big
        )
    )
    return path


def _runs_by_key(db: Path, experiment: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_key: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("sweep_parent") != "true":
            by_key.setdefault(run.data.tags["run_key"], []).append(run)
    return by_key


def test_resubmitting_a_finished_sweep_launches_nothing(tmp_path, pd_literary_dataset, data_cache_dir):
    path = _write_sweep(tmp_path, data_cache_dir, "again")
    sweep, points = load_sweep(path)
    first = submit(sweep, points, sweep_file=path)
    assert first.complete and first.launched == 4
    started = time.monotonic()
    second = submit(sweep, points, sweep_file=path)
    assert second.launched == 0 and second.complete
    assert time.monotonic() - started < 5
    by_key = _runs_by_key(tmp_path / "mlruns.db", "again")
    assert set(by_key) == {p.spec.run_key for p in points}
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in by_key.values())
    parents = {r.data.tags.get("mlflow.parentRunId") for runs in by_key.values() for r in runs}
    assert len(parents) == 1 and None not in parents  # every point is a child of the sweep's parent run

    from typer.testing import CliRunner

    from orchestrator.cli import app

    out = tmp_path / "dash"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    shown = CliRunner().invoke(app, ["dashboard", "--experiment", "again", "--tracking-uri", uri, "--out", str(out)])
    assert shown.exit_code == 0, shown.output
    index = (out / "again" / "index.html").read_text()
    assert "again" in index and (out / "again" / "plotly.min.js").exists()


def test_killing_the_submitting_process_loses_and_duplicates_nothing(
    tmp_path, pd_literary_dataset, data_cache_dir
):
    path = _write_sweep(tmp_path, data_cache_dir, "killed", big="1.0e+11")
    sweep, points = load_sweep(path)
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so the whole process group (driver + local Ray) can be killed at once
    )
    largest = max(p.budget_flops for p in points)
    big = [p for p in points if p.budget_flops == largest]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if any((p.spec.run_dir / "step-00000010").exists() for p in big):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = [p for p in big if (p.spec.run_dir / "step-00000010").exists()]
    assert interrupted
    states = {s.point.spec.run_key: s.state for s in plan(sweep, points)}
    assert any(states[p.spec.run_key] != "finished" for p in big)

    result = submit(sweep, points, sweep_file=path)
    assert result.complete
    by_key = _runs_by_key(tmp_path / "mlruns.db", "killed")
    assert set(by_key) == {p.spec.run_key for p in points}
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in by_key.values())
    for point in interrupted:  # resumed from its checkpoint, in the same MLflow run
        run = by_key[point.spec.run_key][0]
        assert int(run.data.tags["attempt"]) >= 2
