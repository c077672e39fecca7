"""The MLflow tracking server and UI over a store, on 127.0.0.1 with light settings.

`mlflow server`'s defaults are heavy (≈ 29 s to start, 15 processes, 3.4 GB: shared STACK.md); with
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` and ``--workers 1`` it starts in ≈ 6 s as 2 processes, which is
plenty for one user's UI and for a sweep's workers on one machine. The server runs as ``python -m mlflow`` of
this interpreter, from an argument list (never a shell string), in its own process group so stopping it stops
its worker too.

`serve_ui` is what ``ladder ui`` runs (blocks until Ctrl-C); `start_server` returns a handle, for tests and
for a sweep that wants a server in front of its SQLite file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.tracking.config import TrackingConfig, is_http_uri
from orchestrator.tracking.errors import TrackingError

__all__ = ["TrackingServer", "serve_ui", "server_command", "start_server"]

log = logging.getLogger(__name__)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_command(
    backend_store_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts_destination: str | None = None,
) -> list[str]:
    """The ``mlflow server`` argument list: one worker, artifacts proxied to ``artifacts_destination``."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts_destination is not None:
        command += ["--serve-artifacts", "--artifacts-destination", artifacts_destination]
    return command


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # the heavy default: job workers
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.pop("MLFLOW_RUN_ID", None)
    return env


@dataclass
class TrackingServer:
    """A running ``mlflow server`` process group."""

    process: subprocess.Popen
    url: str
    log_path: Path | None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until_ready(self, timeout_s: float = 60.0) -> None:
        """Poll ``/health`` until it answers; `TrackingError` (with the log's tail) if it dies or is slow."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise TrackingError(
                    f"mlflow server exited with code {self.process.returncode}{self._log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise TrackingError(
            f"mlflow server at {self.url} not ready after {timeout_s:.0f} s{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it has not exited after ``timeout_s``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout_s)
        # The group's worker may outlive the leader by a moment: make sure nothing of it keeps the port.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail)

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    backend_store_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts_destination: str | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 60.0,
) -> TrackingServer:
    """Start ``mlflow server`` over ``backend_store_uri`` and wait until it answers.

    Output goes to ``log_path`` (appended), or to this process's terminal when None. A host other than
    loopback is allowed but warned about: the server has no authentication.
    """
    if host not in _LOOPBACK:
        log.warning("mlflow server will listen on %s: anyone who can reach it can read and write runs", host)
    command = server_command(
        backend_store_uri, host=host, port=port, artifacts_destination=artifacts_destination
    )
    output = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - the child keeps it
    try:
        process = subprocess.Popen(
            command,
            env=_server_env(),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if output is not None:
            output.close()
    url_host = f"[{host}]" if ":" in host else host
    server = TrackingServer(process, f"http://{url_host}:{port}", log_path)
    server.wait_until_ready(ready_timeout_s)
    log.info("mlflow server on %s over %s (pid %d)", server.url, backend_store_uri, process.pid)
    return server


def serve_ui(uri: str, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI over the store ``uri`` until interrupted (what ``ladder ui`` runs).

    For a SQLite store, artifacts of experiments created from the UI go to the same ``mlartifacts/`` folder
    the trackers use. A server URI is refused: it already serves its own UI.
    """
    if is_http_uri(uri):
        raise ValueError(f"{uri} is already a tracking server: open it in a browser")
    config = TrackingConfig(uri=uri)
    server = start_server(config.uri, host=host, port=port, artifacts_destination=config.artifact_location)
    # The server runs in its own session, so a SIGTERM or SIGHUP to this process alone would orphan it:
    # turn them into the same clean stop as Ctrl-C.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        log.info("stopping the MLflow UI")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
