"""The one door to MLflow: lazy import, process environment, client construction, retries, name rules.

MLflow takes seconds to import, so nothing imports it until a run is opened or queried (importing
orchestrator and building a `TrackingConfig` stay cheap). Process-wide settings made here, each once and
only where the user has not set them:

- ``MLFLOW_RUN_ID`` is removed: an inherited value overrides ``parent_run_id`` in fluent MLflow code run by
  the same worker (mlflow issue 15713); this package uses explicit run ids only.
- ``MLFLOW_DISABLE_TELEMETRY=true``.
- ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true``: ending a run on a server would otherwise print its URL to
  stdout (library code does not print; the CLI says where a run is tracked) after one more HTTP call.
- For tracking servers, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` from the
  config: MLflow's own HTTP retries back off for minutes (7 retries × factor 2) inside one call, which would
  overrun `RunTracker.finish`'s timeout; the tracker retries with its own capped back-off instead.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.tracking.config import TrackingConfig
from orchestrator.tracking.errors import TrackingError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
# Metric and param names: MLflow's rule on POSIX systems (validate_param_and_metric_name + path_not_unique).
_VALID_NAME = re.compile(r"^[/\w.\- :]*$")


def mlflow_client_class() -> type[MlflowClient]:
    """`mlflow.tracking.MlflowClient`, importing MLflow on first use with telemetry off."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:  # pragma: no cover - mlflow is a dependency of the project
        raise ImportError(
            "MLflow tracking needs the mlflow package: pip install 'mlflow==3.17.2' (an mhc-ladder dep)"
        ) from error
    return MlflowClient


def prepare_process(config: TrackingConfig) -> None:
    """Process-wide environment for explicit-id, self-retrying tracking (see the module doc)."""
    if inherited := os.environ.pop("MLFLOW_RUN_ID", None):
        log.info("removed inherited MLFLOW_RUN_ID=%s from the environment (mlflow issue 15713)", inherited)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if config.is_http:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(config.request_timeout_s))


def make_client(config: TrackingConfig) -> MlflowClient:
    """A client bound to ``config.uri`` (no global tracking URI is set)."""
    prepare_process(config)
    return mlflow_client_class()(tracking_uri=config.uri)


def is_transient(error: BaseException) -> bool:
    """Whether retrying the same call may succeed: an unreachable or overloaded store, a locked database.

    MLflow reports a refused connection as an INTERNAL_ERROR (HTTP 500); bad input as a 4xx code, which no
    retry fixes.
    """
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        MlflowException = ()  # type: ignore[assignment]
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status in (408, 429)
    if type(error).__name__ == "OperationalError":  # sqlalchemy / sqlite3: database locked, disk I/O
        return True
    return isinstance(error, OSError | TimeoutError) and not isinstance(error, FileNotFoundError)


def backoff_delay(failures: int, config: TrackingConfig) -> float:
    """Capped exponential back-off with ±20 % jitter, so many workers do not retry in lock-step."""
    base = min(config.retry_max_s, config.retry_initial_s * 2 ** max(0, failures - 1))
    return min(config.retry_max_s, base * random.uniform(0.8, 1.2))


def call_with_retry(fn: Callable[[], T], *, what: str, config: TrackingConfig, timeout_s: float) -> T:
    """``fn()``, retrying transient failures with back-off for up to ``timeout_s``; else `TrackingError`."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            return fn()
        except TrackingError:
            raise
        except Exception as error:
            if not is_transient(error):
                raise TrackingError(f"{what} failed on {config.uri}: {error}") from error
            failures += 1
            delay = backoff_delay(failures, config)
            if time.monotonic() + delay > deadline:
                raise TrackingError(
                    f"{what} failed: tracking store {config.uri} unreachable for {timeout_s:.0f} s "
                    f"({failures} attempts; last error: {error})"
                ) from error
            log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
            time.sleep(delay)


def check_name(kind: str, name: Any) -> str:
    """A metric, param or tag key MLflow accepts, else `ValueError` naming it and the rule."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name {name!r} must be a non-empty string")
    if len(name) > MAX_KEY_LENGTH:
        raise ValueError(
            f"{kind} name {name[:60]!r}... ({len(name)} chars) must be at most {MAX_KEY_LENGTH} chars"
        )
    if not _VALID_NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r} may only contain alphanumerics, underscores, dashes, periods, spaces, "
            "colons and slashes"
        )
    normalized = os.path.normpath(name).replace(os.sep, "/")
    if normalized != name or name.startswith(("/", "..")):
        raise ValueError(
            f"{kind} name {name!r} must not resolve to another path (it would as {normalized!r})"
        )
    return name
