"""`ladder bench orchestrator`: what the scheduler costs around the training it runs.

Runs a sweep from scratch (default: the quickstart; ``scale`` multiplies every budget) in a private tracking
store and storage under ``workdir``, on the embedded local Ray or ``address``, and measures:

- **Ray start**: `connect` (the embedded Ray, or joining a cluster); timed apart, then excluded below.
- **submit → first step**, per run: the MLflow timestamp of the run's first ``train/loss`` point (logged
  when its first step ends) minus the start of the `submit` call. Includes queueing behind other runs by
  design: it is when a user sees each curve begin.
- **scheduling overhead**, per run: time neither queued behind other runs nor training. Launch = task
  start − when a CPU was free for it (its launch, or the last end of another task on its node before it
  started); start-up = its first step's start − task start (imports, data, model build, opening the MLflow
  run). A fresh Ray worker pays the imports once; later tasks reuse the process. Target: mean ≤ 1 s.
- **CPU utilisation**: Σ CPU time of the task bodies (all their threads) / (wall × cores), wall from the
  `submit` call to the last task's end, cores = the Ray cluster's CPUs. The driver, Ray's own processes and
  worker-process start are not counted as work, so idle cores and overhead both lower it. Target ≥ 90 %.
  Three rows tell idle cores from a shared machine: core occupancy (Σ task wall / (wall × cores): the share
  of core time with a task running, the scheduler's part), the tasks' CPU over their own wall time (1 thread
  each: 1.0 when every task had a core to itself) and how busy the whole machine was (``/proc/stat``, every
  process). Utilisation = occupancy × the tasks' CPU share.
- **resubmission** of the finished sweep: `submit` again in this process, and ``ladder submit`` in a fresh
  process (interpreter and imports included, what a user waits for). Target ≤ 5 s.

Rows (machine, git SHA, timestamp, metric, value, target) are appended to a CSV in long format.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.benchlog import append_rows, record_context

__all__ = ["OrchestratorBenchmark", "RunTiming", "Target", "append_csv", "prepare_sweep", "run_benchmark"]

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from issue 4: ``value <= limit`` (or ``>=`` when ``at_least``)."""

    limit: float
    at_least: bool = False

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.limit if self.at_least else value <= self.limit

    def __str__(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.limit:g}"


OVERHEAD_TARGET = Target(1.0)
UTILISATION_TARGET = Target(0.90, at_least=True)
RESUBMIT_TARGET = Target(5.0)


@dataclass(frozen=True, slots=True)
class RunTiming:
    """One run's timings (seconds)."""

    run_key: str
    label: str
    first_step_s: float | None  # submit call → end of the run's first step (MLflow timestamp)
    launch_s: float | None  # a CPU free for it → its task body started
    startup_s: float | None  # task body started → first step started
    cpu_s: float | None

    @property
    def overhead_s(self) -> float | None:
        if self.launch_s is None or self.startup_s is None:
            return None
        return self.launch_s + self.startup_s


@dataclass(frozen=True, slots=True)
class OrchestratorBenchmark:
    """Everything one benchmark run measured."""

    sweep: str
    num_runs: int
    cores: float
    ray_start_s: float
    wall_s: float
    cpu_s: float
    resubmit_s: float
    resubmit_cli_s: float | None
    runs: list[RunTiming]
    task_wall_s: float = 0.0  # Σ (task end − task start)
    machine_busy: float | None = None  # share of all cores busy (any process) over the sweep; Linux only

    @property
    def utilisation(self) -> float:
        return self.cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 and self.cores > 0 else 0.0

    def rows(self) -> list[tuple[str, float | None, str, Target | None]]:
        """(metric, value, unit, target) in display order."""
        overheads = [r.overhead_s for r in self.runs if r.overhead_s is not None]
        firsts = [r.first_step_s for r in self.runs if r.first_step_s is not None]
        startups = [r.startup_s for r in self.runs if r.startup_s is not None]
        launches = [r.launch_s for r in self.runs if r.launch_s is not None]

        def agg(values: list[float], fn: Callable[[list[float]], float]) -> float | None:
            return fn(values) if values else None

        return [
            ("ray start (connect)", self.ray_start_s, "s", None),
            ("submit → first step, first run", agg(firsts, min), "s", None),
            ("submit → first step, median run", agg(firsts, statistics.median), "s", None),
            ("submit → first step, last run", agg(firsts, max), "s", None),
            ("launch latency per run, mean", agg(launches, statistics.fmean), "s", None),
            ("start-up before step 1 per run, mean", agg(startups, statistics.fmean), "s", None),
            ("start-up before step 1, max (fresh worker)", agg(startups, max), "s", None),
            ("scheduling overhead per run, mean", agg(overheads, statistics.fmean), "s", OVERHEAD_TARGET),
            ("scheduling overhead per run, median", agg(overheads, statistics.median), "s", None),
            ("sweep wall (submit → last task end)", self.wall_s, "s", None),
            ("CPU utilisation (task CPU / wall × cores)", self.utilisation, "fraction", UTILISATION_TARGET),
            ("core occupancy (Σ task wall / wall × cores)",
             self.task_wall_s / (self.wall_s * self.cores) if self.wall_s > 0 else None, "fraction", None),
            ("tasks' CPU / tasks' wall (a core each = 100 %)",
             self.cpu_s / self.task_wall_s if self.task_wall_s > 0 else None, "fraction", None),
            ("machine CPU busy, all processes", self.machine_busy, "fraction", None),
            ("resubmission, in process", self.resubmit_s, "s", RESUBMIT_TARGET),
            ("resubmission, `ladder submit` (fresh process)", self.resubmit_cli_s, "s", RESUBMIT_TARGET),
        ]


def prepare_sweep(source: Path, workdir: Path, scale: float = 1.0, data_cache: Path | None = None) -> Path:
    """Copy the sweep to ``workdir/sweep.yaml`` with a private tracking store and storage, budgets ×
    ``scale`` and, if given, the data cache ``data_cache`` (a corpus built there is reused, not rebuilt)."""
    raw = yaml.safe_load(source.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: the top level must be a mapping of sweep fields")
    workdir.mkdir(parents=True, exist_ok=True)
    raw["tracking"] = {**(raw.get("tracking") or {}), "uri": f"sqlite:///{workdir / 'mlruns.db'}"}
    raw["storage"] = str(workdir / "runs")
    if data_cache is not None:
        raw["data"] = {**(raw.get("data") or {}), "cache_dir": str(Path(data_cache).expanduser().absolute())}
    grid = raw.get("grid") or {}
    if scale != 1.0:
        if "budget" in grid:
            grid["budget"] = [float(value) * scale for value in grid["budget"]]
        for entry in raw.get("include") or []:
            if "budget" in entry:
                entry["budget"] = float(entry["budget"]) * scale
    target = workdir / "sweep.yaml"
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


def _launch_latency(report: Any, reports: list[Any]) -> float | None:
    """Task start − when a CPU was free for it: its launch, or the last end of another task on its node."""
    if report.started_at is None:
        return None
    freed = [
        other.ended_at for other in reports
        if other is not report and other.node_id == report.node_id and other.ended_at is not None
        and other.ended_at <= report.started_at
    ]
    return report.started_at - max([report.launched_at, *freed])


def _first_step_times(tracking: Any, run_ids: dict[str, str], since: float) -> dict[str, float]:
    """Seconds from ``since`` to each run's first ``train/loss`` point, by run_key (MLflow timestamps)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking.uri)
    times = {}
    for run_key, run_id in run_ids.items():
        history = client.get_metric_history(run_id, "train/loss")
        if history:
            first = min(history, key=lambda metric: (metric.step, metric.timestamp))
            times[run_key] = first.timestamp / 1000 - since
    return times


def run_benchmark(
    sweep_file: Path,
    *,
    address: str | None = None,
    cli_resubmit: bool = True,
    on_update: Callable[[list[Any]], None] | None = None,
) -> OrchestratorBenchmark:
    """Run ``sweep_file`` (prepared by `prepare_sweep`: its store must be empty) and measure it."""
    import ray

    from orchestrator.scheduler import connect, submit
    from orchestrator.sweep import load_sweep

    sweep, points = load_sweep(sweep_file)
    started = time.perf_counter()
    connect(address)
    ray_start_s = time.perf_counter() - started
    cores = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))

    before = _machine_cpu()
    result = submit(sweep, points, sweep_file=sweep_file, address=address, on_update=on_update)
    after = _machine_cpu()
    if not result.complete:
        failed = [s.point.spec.run_key for s in result.states if s.state not in ("finished", "skipped")]
        raise RuntimeError(f"the benchmark sweep did not complete: {', '.join(failed)} did not finish")
    reports = [r for r in result.tasks if r.started_at is not None]
    ends = [r.ended_at for r in reports if r.ended_at is not None]
    wall_s = (max(ends) if ends else time.time()) - result.submitted_at
    by_key = {s.point.spec.run_key: s for s in result.states}
    first_steps = _first_step_times(
        points[0].spec.tracking, {key: s.run_id for key, s in by_key.items() if s.run_id}, result.submitted_at
    )
    runs = []
    for report in reports:
        spec = by_key[report.run_key].point.spec
        runs.append(
            RunTiming(
                run_key=report.run_key,
                label=f"{spec.model.name} {spec.model.residual.variant} {spec.total_steps()} steps",
                first_step_s=first_steps.get(report.run_key),
                launch_s=_launch_latency(report, reports),
                startup_s=report.startup_s,
                cpu_s=report.cpu_s,
            )
        )

    started = time.perf_counter()
    again = submit(sweep, points, sweep_file=sweep_file, address=address)
    resubmit_s = time.perf_counter() - started
    if again.launched:
        raise RuntimeError(f"resubmitting the finished sweep launched {again.launched} run(s)")
    resubmit_cli_s = _time_cli_resubmit(sweep_file) if cli_resubmit else None
    return OrchestratorBenchmark(
        sweep=sweep.name,
        num_runs=len(points),
        cores=cores,
        ray_start_s=ray_start_s,
        wall_s=wall_s,
        cpu_s=sum(r.cpu_s or 0.0 for r in reports),
        resubmit_s=resubmit_s,
        resubmit_cli_s=resubmit_cli_s,
        runs=runs,
        task_wall_s=sum(r.ended_at - r.started_at for r in reports if r.ended_at is not None),
        machine_busy=None if before is None or after is None else _busy_share(before, after),
    )


def _machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # user..steal; guest time is already in user


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None


def _time_cli_resubmit(sweep_file: Path) -> float:
    """Wall time of ``ladder submit`` of a finished sweep in a fresh interpreter (what a user waits for)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "submit", str(sweep_file)], capture_output=True, text=True,
        env=env,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "launched 0" not in done.stdout:
        raise RuntimeError(f"`ladder submit` of the finished sweep failed ({done.returncode}): "
                           f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def append_csv(result: OrchestratorBenchmark, path: Path) -> None:
    """Append one row per metric (long format) with machine, git SHA and timestamp."""
    context = {
        **record_context(),
        "sweep": result.sweep,
        "runs": result.num_runs,
        "cores": result.cores,
    }
    records = [
        {**context, "metric": metric, "value": "" if value is None else f"{value:.6g}", "unit": unit,
         "target": "" if target is None else str(target),
         "meets_target": "" if target is None or value is None else str(target.met(value))}
        for metric, value, unit, target in result.rows()
    ]
    append_rows(records, path)
