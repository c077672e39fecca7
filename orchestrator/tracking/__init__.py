"""MLflow tracking for training runs: buffered, retrying, resumable; identity by ``run_key``.

- `TrackingConfig`: store URI (SQLite file by default, paths made absolute), experiment, flush/retry settings.
- `RunTracker`: the only object the trainer talks to (open / log_metrics / log_dict_artifact / log_artifact /
  set_tags / finish; a context manager).
- `find_run` / `find_runs`: the ledger queries the scheduler uses (FINISHED ⇒ skip).
- `serve_ui` / `start_server`: ``mlflow server`` on 127.0.0.1 with light settings.

Importing this package does not import MLflow (seconds); opening or querying a run does.
"""

from orchestrator.tracking.config import TrackingConfig
from orchestrator.tracking.errors import ParamConflictError, RunFinishedError, TrackingError
from orchestrator.tracking.runs import RUN_KEY_TAG, RunInfo, find_run, find_runs, flatten_params
from orchestrator.tracking.server import TrackingServer, serve_ui, start_server
from orchestrator.tracking.tracker import RunStatus, RunTracker, TrackerStats

__all__ = [
    "RUN_KEY_TAG",
    "ParamConflictError",
    "RunFinishedError",
    "RunInfo",
    "RunStatus",
    "RunTracker",
    "TrackerStats",
    "TrackingConfig",
    "TrackingError",
    "TrackingServer",
    "find_run",
    "find_runs",
    "flatten_params",
    "serve_ui",
    "start_server",
]
