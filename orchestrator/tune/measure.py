"""What a finished run measured, read back from the tracking store: the metrics a trial is judged on.

The store is the one source for trials and the baseline alike, so a trial whose run was already FINISHED (a
retry after the driver died, a baseline trained by a sweep) is judged exactly like one trained just now.

- ``val_loss``: ``final/val_loss``.
- ``ds_error``: the latest ``eval/ds_error_max`` (the final evaluation's worst |row or column sum − 1| of
  H_res).
- ``step_time_s``: the median ``perf/step_time_s`` after the first 10 % of the steps (at least 2: the
  allocator and caches warm up). Steps re-run after a resume are logged twice with similar times; the median
  shrugs.
- ``step_time_overhead``: trial median / baseline median − 1. Both are timed by the same kind of worker with
  the same threads; with several trials in parallel, each run is timed under its neighbours' load, so
  overheads
  below a few percent are noise on a shared CPU. The ``hardware`` tags of both runs must match, else the
  overhead is still computed but flagged (`RunMeasurement.hardware`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from orchestrator.tracking import TrackingConfig, find_run

__all__ = ["RunMeasurement", "measure_run"]

STEP_TIME_METRIC = "perf/step_time_s"
WARMUP_FRACTION = 0.1
MIN_WARMUP_STEPS = 2


@dataclass(frozen=True, slots=True)
class RunMeasurement:
    """A finished run's judged metrics."""

    run_id: str
    val_loss: float | None
    ds_error: float | None
    step_time_s: float | None
    hardware: str | None

    def metrics(self, baseline: RunMeasurement | None) -> dict[str, float]:
        """The metrics by name (`spec.METRICS`); the overhead only with a baseline."""
        values = {"val_loss": self.val_loss, "ds_error": self.ds_error, "step_time_s": self.step_time_s}
        if baseline is not None and self.step_time_s and baseline.step_time_s:
            values["step_time_overhead"] = self.step_time_s / baseline.step_time_s - 1
        return {name: value for name, value in values.items() if value is not None and math.isfinite(value)}


def measure_run(tracking: TrackingConfig, run_key: str, total_steps: int) -> RunMeasurement | None:
    """The measurement of ``run_key``'s run, or None if the store holds no FINISHED run for it."""
    info = find_run(tracking, run_key)
    if info is None or info.status != "FINISHED":
        return None
    from mlflow.tracking import MlflowClient  # find_run imported MLflow and prepared the process already

    history = MlflowClient(tracking_uri=tracking.uri).get_metric_history(info.run_id, STEP_TIME_METRIC)
    warmup = max(MIN_WARMUP_STEPS, int(WARMUP_FRACTION * total_steps))
    times = [m.value for m in history if m.step > warmup] or [m.value for m in history]
    return RunMeasurement(
        run_id=info.run_id,
        val_loss=info.metrics.get("final/val_loss"),
        ds_error=info.metrics.get("eval/ds_error_max"),
        step_time_s=statistics.median(times) if times else None,
        hardware=info.tags.get("hardware"),
    )
