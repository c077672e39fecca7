"""Loading, analysis and dashboard benchmark on 1,000 runs × 1,000 logged steps (issue 5's targets).

    python -m analysis.benchmark                      # build (minutes, once) or reuse the store; time; table
    python -m analysis.benchmark --dry-run            # what the store holds and what would be timed
    python -m analysis.benchmark --runs 200 --steps 500 --repeats 1 --no-baseline

The store is a SQLite MLflow store filled the way the trainer fills one (analysis/bench_store.py), cached
under /tmp. Stages, each timed `repeats` times after one untimed warm-up (the first read also warms the
operating system's file cache), median reported:

- **runs frame**: `load_runs` (runs, tags, params, latest metrics, and the eval-loss and step-time histories
  its best-loss and step-time columns summarise);
- **history frame**: `load_experiment` with the analysis' metrics (`HISTORY_METRICS`): issue 5's "loading"
  target, ≤ 20 s;
- **history frame via the MLflow API** (the baseline, timed once, no warm-up: it takes minutes):
  `load_experiment(reader="api")`, i.e. `MlflowClient.search_runs` and a `get_metric_history` call per run and
  metric, what the loader did for every store before it read SQL stores by SQL; ratios are its time over
  each SQL stage's;
- **Amax profiles**: `load_amax_profiles` (each run's last ``diagnostics/step_*.json``);
- **analysis**: `analyze_frames` with the default `AnalysisConfig` (fits, 1,000-sample bootstraps, the
  Chinchilla surface, stability);
- **dashboard pages**: `build_dashboard` on those results (pages, plotly.js, parquet);
- **ladder dashboard**: the command in a new process (interpreter start and imports included: what a user
  waits for), everything above from the store to the pages, with the default `AnalysisConfig`.

Rows (machine, load average, git SHA, timestamp, stage, seconds, ratio, target) are appended to
``benchmarks/results/analysis.csv`` in long format. The machine is shared: the load average is printed with
the table (a run is only comparable to one under similar load).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.bench_store import BenchStore, StoreInfo, build_store
from analysis.report import AnalysisConfig, analyze_frames
from analysis.runs import HISTORY_METRICS, load_amax_profiles, load_experiment, load_runs
from models.benchlog import append_rows, git_sha, timestamp

__all__ = ["DEFAULT_CSV", "StageTiming", "append_csv", "describe", "run_benchmark"]

logger = logging.getLogger(__name__)

DEFAULT_CSV = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "analysis.csv"
TARGETS_S = {"history frame": 20.0, "ladder dashboard": 20.0}
"""Issue 5: loading (and rendering a dashboard for) 1,000 runs × 1,000 logged steps ≤ 20 s."""


@dataclass(frozen=True, slots=True)
class StageTiming:
    stage: str
    reader: str
    seconds: list[float]
    values: int | None = None
    """Metric values in the frame the stage produced (loading stages)."""

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def _timed(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[list[float], Any]:
    result = None
    for _ in range(warmup):
        result = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def run_benchmark(
    config: BenchStore, *, repeats: int = 3, baseline: bool = True, analysis: AnalysisConfig | None = None
) -> tuple[StoreInfo, list[StageTiming]]:
    """Build or reuse the store of `config`, then time every stage (module doc)."""
    store = build_store(config)
    uri, name = store.uri, store.experiment
    timings: list[StageTiming] = []
    logger.info("timing the runs frame")
    seconds, runs = _timed(lambda: load_runs(uri, name), repeats, 1)
    timings.append(StageTiming("runs frame", "sql", seconds))
    logger.info("timing the history frame")
    seconds, (runs, history) = _timed(lambda: load_experiment(uri, name, HISTORY_METRICS), repeats, 1)
    timings.append(StageTiming("history frame", "sql", seconds, history.height))
    if baseline:
        logger.info("timing the history frame through the MLflow API (the baseline; minutes)")
        seconds, (_, api_history) = _timed(lambda: load_experiment(uri, name, HISTORY_METRICS, reader="api"), 1, 0)
        timings.append(StageTiming("history frame", "api", seconds, api_history.height))
    logger.info("timing the Amax profiles")
    seconds, profiles = _timed(lambda: load_amax_profiles(uri, name, runs=runs), repeats, 1)
    timings.append(StageTiming("Amax profiles", "files", seconds))
    settings = analysis or AnalysisConfig()
    logger.info("timing the analysis")
    seconds, results = _timed(
        lambda: analyze_frames(runs, history, profiles, config=settings, experiment=name, tracking_uri=uri),
        repeats,
        0,
    )
    timings.append(StageTiming("analysis", "-", seconds))
    from dashboards import build_dashboard

    with tempfile.TemporaryDirectory(prefix="mhc-ladder-bench-dashboard-") as out:
        logger.info("timing the dashboard pages")
        seconds, _ = _timed(lambda: build_dashboard(results, Path(out) / "pages"), repeats, 0)
        timings.append(StageTiming("dashboard pages", "-", seconds))
        logger.info("timing ladder dashboard in a new process")
        command = [sys.executable, "-m", "orchestrator", "dashboard", "--experiment", name, "--tracking-uri", uri]
        command += ["--out", str(Path(out) / "cli")]
        seconds, _ = _timed(lambda: subprocess.run(command, check=True, capture_output=True), repeats, 0)
        timings.append(StageTiming("ladder dashboard", "sql", seconds))
    return store, timings


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _environment() -> dict[str, str]:
    return {
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "load_average": _load_average(),
        "git_sha": git_sha(),
        "timestamp": timestamp(),
    }


def _baseline_s(timings: list[StageTiming]) -> float | None:
    return next((t.median_s for t in timings if t.reader == "api"), None)


def csv_rows(config: BenchStore, timings: list[StageTiming]) -> list[dict[str, Any]]:
    """Long-format rows: one per stage, with the machine, load, git SHA and the store's size."""
    environment = _environment()
    baseline = _baseline_s(timings)
    return [
        {
            **environment,
            "runs": config.num_runs,
            "steps": config.num_steps,
            "stage": t.stage,
            "reader": t.reader,
            "median_s": round(t.median_s, 3),
            "min_s": round(min(t.seconds), 3),
            "repeats": len(t.seconds),
            "values": t.values,
            "speedup_vs_api": round(baseline / t.median_s, 2) if baseline and t.reader == "sql" else None,
            "target_s": TARGETS_S.get(t.stage) if t.reader == "sql" else None,
        }
        for t in timings
    ]


def append_csv(rows: list[dict[str, Any]], path: Path = DEFAULT_CSV) -> None:
    """Append rows in long format, writing the header when the file is new."""
    append_rows(rows, path)


def describe(config: BenchStore) -> list[str]:
    """What the store holds and what would be timed (``--dry-run``)."""
    cached = (config.folder / "done").exists()
    return [
        f"store: {config.folder} ({'cached' if cached else 'to build: a few minutes'})",
        f"runs: {config.num_runs} ({config.num_seeds} seeds × 2 arms × {config.num_sizes} sizes × "
        f"{config.num_budgets} budgets), {config.num_steps} logged steps each, an evaluation every "
        f"{config.eval_every}",
        f"metric values in the store: {config.num_values:,}",
        f"history frame reads: {', '.join(HISTORY_METRICS)}",
        "stages: runs frame, history frame (SQL; and once through the MLflow API: the baseline), Amax "
        "profiles, analysis, dashboard pages, ladder dashboard end to end",
    ]


def print_table(store: StoreInfo, config: BenchStore, timings: list[StageTiming]) -> None:
    from rich.console import Console
    from rich.table import Table

    baseline = _baseline_s(timings)
    title = (
        f"analysis benchmark: {config.num_runs} runs × {config.num_steps} steps "
        f"({config.num_values:,} values in the store) · {platform.node()}, {os.cpu_count()} cores, "
        f"load average {_load_average()}"
    )
    table = Table(title=title)
    for column in ("stage", "reader", "values", "median s", "min s", "repeats", "× API", "target"):
        table.add_column(column, justify="left" if column in ("stage", "reader") else "right")
    for t in timings:
        target = TARGETS_S.get(t.stage) if t.reader == "sql" else None
        verdict = "" if target is None else f"≤ {target:g} s {'met' if t.median_s <= target else 'MISSED'}"
        speedup = f"{baseline / t.median_s:.1f}" if baseline and t.reader == "sql" else ""
        table.add_row(
            t.stage,
            t.reader,
            "" if t.values is None else f"{t.values:,}",
            f"{t.median_s:.2f}",
            f"{min(t.seconds):.2f}",
            str(len(t.seconds)),
            speedup,
            verdict,
        )
    console = Console()
    console.print(table)
    if store.build_s is not None:
        console.print(f"(store built in {store.build_s:.0f} s: {store.path})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the MLflow-API baseline (minutes)")
    parser.add_argument("--root", type=Path, default=BenchStore().root, help="where stores are cached")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="where to append rows ('-' to skip)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be built and timed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = BenchStore(num_runs=args.runs, num_steps=args.steps, root=args.root)
    if args.dry_run:
        print("\n".join(describe(config)))
        return 0
    store, timings = run_benchmark(config, repeats=args.repeats, baseline=not args.no_baseline)
    print_table(store, config, timings)
    if str(args.csv) != "-":
        append_csv(csv_rows(config, timings), args.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
