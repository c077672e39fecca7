"""Where a run is tracked and how its buffered logger flushes: `TrackingConfig`.

Paths are resolved when the config is built, not when it is used: a relative ``sqlite:///mlruns.db`` becomes
``sqlite:////abs/cwd/mlruns.db`` and the artifact and spill folders become absolute, so a Ray worker that
starts in another working directory (or receives the config pickled) writes to the same store as the driver.

Defaults: the URI is ``$MLFLOW_TRACKING_URI`` if set, else ``./mlruns.db``; for a SQLite store, artifacts go
to ``mlartifacts/`` and spill files to ``mlspill/`` beside the database file; for a server, artifacts go where
the server says and spill files to ``./mlspill`` (resolved to absolute).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from models.config import ConfigModel, rule_violation

__all__ = ["DEFAULT_DB_NAME", "TrackingConfig", "default_tracking_uri", "is_http_uri", "sqlite_db_path"]

DEFAULT_DB_NAME = "mlruns.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
SPILL_DIR_NAME = "mlspill"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SQLITE_PREFIX = "sqlite:///"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"{_SQLITE_PREFIX}{DEFAULT_DB_NAME}"


def is_http_uri(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (as opposed to a database the client opens itself)."""
    return uri.startswith(("http://", "https://"))


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (query string dropped), or None for other stores."""
    if not uri.startswith(_SQLITE_PREFIX):
        return None
    path = uri[len(_SQLITE_PREFIX) :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _absolute_sqlite_uri(uri: str) -> str:
    """``sqlite:///rel.db`` → ``sqlite:////cwd/rel.db`` (``~`` expanded); other URIs unchanged."""
    path = sqlite_db_path(uri)
    if path is None:
        return uri
    _, sep, query = uri.partition("?")
    return f"{_SQLITE_PREFIX}{path.expanduser().absolute()}{sep}{query}"


def _absolute_location(location: str) -> str:
    """A local folder made absolute; a URI (s3://, file://, mlflow-artifacts:) unchanged."""
    if _SCHEME.match(location) and not re.match(r"^[A-Za-z]:[\\/]", location):  # not a Windows drive
        return location
    return str(Path(location).expanduser().absolute())


class TrackingConfig(ConfigModel):
    """The MLflow store and experiment of a run, and the buffered logger's flush and retry settings."""

    config_path: ClassVar[str] = "tracking"

    uri: str = Field(
        default_factory=default_tracking_uri,
        description="Tracking URI: sqlite:///file.db (relative paths resolved now), http://host:port, ...; "
        "default $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the working directory.",
    )
    experiment: str = Field(
        default="mhc-ladder",
        min_length=1,
        max_length=500,
        description="MLflow experiment name (one per sweep).",
    )
    artifact_location: str | None = Field(
        default=None,
        description="Artifact root of experiments this config creates; default mlartifacts/ beside a SQLite "
        "file, the server's choice for a tracking server. Existing experiments keep theirs.",
    )
    spill_dir: str | None = Field(
        default=None,
        description="Folder for spill files (points the store has not taken yet) and staged artifacts; "
        "default mlspill/ beside a SQLite file, else ./mlspill.",
    )
    flush_interval_s: float = Field(
        default=2.0, gt=0, description="Seconds between background flushes (a full batch flushes at once)."
    )
    max_buffered_points: int = Field(
        default=100_000,
        ge=1,
        description="Unsent operations kept in memory; beyond it they go to the spill file.",
    )
    retry_initial_s: float = Field(default=0.5, gt=0, description="First back-off after a failed store call.")
    retry_max_s: float = Field(default=30.0, gt=0, description="Cap of the exponential back-off.")
    request_timeout_s: int = Field(
        default=10,
        ge=1,
        description="HTTP timeout of one call to a tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT).",
    )
    open_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long opening a run or querying the ledger retries an unreachable store.",
    )
    finish_timeout_s: float = Field(
        default=120.0, gt=0, description="Default time `finish` keeps retrying before it spills and raises."
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_paths(cls, values: Any) -> Any:
        """Fill the URI-dependent defaults and make every local path absolute (see the module doc)."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        uri = values.get("uri")
        if uri is None:
            uri = default_tracking_uri()
        if not isinstance(uri, str):
            return values  # the field's own type check reports it
        uri = _absolute_sqlite_uri(uri.strip())
        values["uri"] = uri
        db_path = sqlite_db_path(uri)
        if values.get("artifact_location") is None:
            if db_path is not None:
                values["artifact_location"] = str(db_path.parent / ARTIFACTS_DIR_NAME)
        elif isinstance(values["artifact_location"], str):
            values["artifact_location"] = _absolute_location(values["artifact_location"])
        if values.get("spill_dir") is None:
            base = db_path.parent if db_path is not None else Path.cwd()
            values["spill_dir"] = str(base / SPILL_DIR_NAME)
        elif isinstance(values["spill_dir"], str):
            values["spill_dir"] = str(Path(values["spill_dir"]).expanduser().absolute())
        return values

    @model_validator(mode="after")
    def _rules(self) -> TrackingConfig:
        uri = self.uri
        if uri == "sqlite://" or uri.startswith("sqlite:///:memory:"):
            raise rule_violation(
                "uri",
                uri,
                "must name a SQLite file: an in-memory database is not shared with other processes",
            )
        if not (_SCHEME.match(uri) or uri == "databricks"):
            raise rule_violation(
                "uri", uri, "must be a URI such as sqlite:///mlruns.db or http://127.0.0.1:5000"
            )
        if self.retry_max_s < self.retry_initial_s:
            raise rule_violation(
                "retry_max_s", self.retry_max_s, f"must be >= retry_initial_s ({self.retry_initial_s})"
            )
        return self

    @property
    def is_http(self) -> bool:
        """Whether the store is a tracking server reached over HTTP."""
        return is_http_uri(self.uri)

    @property
    def db_path(self) -> Path | None:
        """The SQLite database file, for SQLite stores."""
        return sqlite_db_path(self.uri)
