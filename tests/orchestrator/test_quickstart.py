"""The README's main job end to end through the installed `ladder` command: the shipped quickstart sweep
(every variant × both sizes × three budgets, budgets scaled down so the suite stays fast) is submitted,
tracked, reported by `ladder status`, skipped on resubmission and turned into a dashboard."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.bench_orchestrator import prepare_sweep
from orchestrator.sweep import load_sweep

QUICKSTART = Path(__file__).parents[2] / "sweeps" / "quickstart.yaml"
# The smallest budget still buys p1 one optimizer step; nano trains 14 / 48 / 146 steps.
SCALE = 0.15


def _ladder(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    return subprocess.run([str(Path(sys.executable).parent / "ladder"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_quickstart_sweep_runs_end_to_end_through_the_cli(tmp_path, pd_literary_dataset, data_cache_dir):
    sweep_file = prepare_sweep(QUICKSTART, tmp_path, scale=SCALE, data_cache=data_cache_dir)
    _, points = load_sweep(sweep_file)
    assert len(points) == 24
    assert {p.spec.model.residual.variant for p in points} == {"residual", "hc", "mhc", "mhc-lite"}

    submitted = _ladder("submit", str(sweep_file), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    assert "launched 24; finished 24, failed 0, pending 0 of 24" in submitted.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("sweep_parent") != "true"]
    assert sorted(r.data.tags["run_key"] for r in children) == sorted(p.spec.run_key for p in points)
    assert all(r.info.status == "FINISHED" for r in children)
    steps = {p.spec.run_key: p.spec.total_steps() for p in points}
    for run in children:  # every run trained its whole budget and was evaluated at the end
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert max(m.step for m in history) == steps[run.data.tags["run_key"]]
        assert run.data.metrics["final/val_loss"] < 7.7  # about ln(2048) = 7.62 at the start

    status = _ladder("status", str(sweep_file), cwd=tmp_path)
    assert status.returncode == 0, status.stdout[-3000:] + status.stderr[-3000:]
    assert status.stdout.count("finished") >= 24

    again = _ladder("submit", str(sweep_file), cwd=tmp_path)
    assert again.returncode == 0 and "launched 0; finished 24" in again.stdout, again.stdout[-3000:]

    out = tmp_path / "dash"
    dashboard = _ladder("dashboard", "--experiment", "quickstart", "--tracking-uri",
                        f"sqlite:///{tmp_path / 'mlruns.db'}", "--out", str(out), cwd=tmp_path)
    assert dashboard.returncode == 0, dashboard.stdout[-3000:] + dashboard.stderr[-3000:]
    pages = sorted(path.name for path in (out / "quickstart").glob("*.html"))
    assert "index.html" in pages and len(pages) >= 3, pages
