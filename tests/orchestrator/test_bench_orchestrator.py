"""`ladder bench orchestrator`: the overhead arithmetic, and one real (tiny) sweep through the CLI."""

import csv

import pytest
from typer.testing import CliRunner

from orchestrator.bench_orchestrator import OrchestratorBenchmark, RunTiming, _launch_latency
from orchestrator.cli import app
from orchestrator.scheduler import TaskReport

runner = CliRunner()

TINY = """\
name: tiny-bench
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {cache}}}
base:
  training: {{batch_size: 8, seq_len: 64, eval_every: 50, eval_windows: 8, checkpoint_every: 50}}
grid:
  size: [nano]
  budget: [3.0e+9]
  residual: [{{variant: residual}}, {{variant: mhc, n: 2}}]
"""


@pytest.fixture(autouse=True)
def _ray_environment(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_launch_latency_counts_from_when_a_cpu_was_free_for_the_task():
    def task(key, started, ended, node="n"):
        return TaskReport(key, launched_at=0.0, outcome="FINISHED", started_at=started, ended_at=ended,
                          node_id=node)

    first, queued, elsewhere = task("a", 1.0, 10.0), task("b", 10.5, 20.0), task("c", 2.0, 9.0, node="m")
    reports = [first, queued, elsewhere]
    assert _launch_latency(first, reports) == 1.0  # a CPU was free at launch
    assert _launch_latency(queued, reports) == 0.5  # queued behind `first`: counted from its end, not launch
    assert _launch_latency(elsewhere, reports) == 2.0  # other nodes' tasks do not free its CPU


def test_utilisation_is_task_cpu_over_wall_times_cores():
    run = RunTiming("k", "nano", first_step_s=3.0, launch_s=0.2, startup_s=0.5, cpu_s=9.0)
    result = OrchestratorBenchmark(sweep="s", num_runs=1, cores=2, ray_start_s=4.0, wall_s=10.0, cpu_s=18.0,
                                   resubmit_s=1.0, resubmit_cli_s=None, runs=[run], task_wall_s=19.0)
    assert result.utilisation == pytest.approx(0.9)
    rows = {metric: (value, target) for metric, value, _, target in result.rows()}
    occupancy = rows["core occupancy (Σ task wall / wall × cores)"][0]
    share = rows["tasks' CPU / tasks' wall (a core each = 100 %)"][0]
    assert occupancy == pytest.approx(0.95) and occupancy * share == pytest.approx(result.utilisation)
    value, target = rows["scheduling overhead per run, mean"]
    assert value == pytest.approx(0.7) and target.met(value)
    assert rows["resubmission, `ladder submit` (fresh process)"][0] is None


def test_bench_orchestrator_runs_a_sweep_prints_targets_and_appends_csv(tmp_path, pd_literary_dataset,
                                                                        data_cache_dir):
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY.format(cache=data_cache_dir))
    csv_path = tmp_path / "orchestrator.csv"
    args = ["bench", "orchestrator", str(sweep), "--workdir", str(tmp_path / "work"), "--csv", str(csv_path)]
    result = runner.invoke(app, args, terminal_width=220)
    assert result.exit_code == 0, result.output
    for metric in ("scheduling overhead per run, mean", "CPU utilisation", "resubmission, in process",
                   "submit → first step, median run"):
        assert metric in result.output
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    by_metric = {row["metric"]: row for row in rows}
    assert {"machine", "git_sha", "timestamp", "value", "target", "meets_target"} <= set(rows[0])
    assert float(by_metric["sweep wall (submit → last task end)"]["value"]) > 0
    assert 0 < float(by_metric["CPU utilisation (task CPU / wall × cores)"]["value"]) <= 1.0
    assert by_metric["resubmission, in process"]["meets_target"] in ("True", "False")
    assert float(by_metric["resubmission, `ladder submit` (fresh process)"]["value"]) > 0


def test_bench_orchestrator_has_help_and_a_dry_run(tmp_path, data_cache_dir):
    assert runner.invoke(app, ["bench", "orchestrator", "--help"]).exit_code == 0
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(TINY.format(cache=data_cache_dir))
    result = runner.invoke(app, ["bench", "orchestrator", str(sweep), "--dry-run", "--scale", "2"],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output and "budgets × 2" in result.output
