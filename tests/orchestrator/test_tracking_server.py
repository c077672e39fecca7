"""Tracking through a real ``mlflow server`` on 127.0.0.1 that is stopped and restarted mid-run.

One server per module (SQLite backend and proxied artifacts under a temp dir, a free port, light settings);
each start takes several seconds, so the tests share it, stop it and restart it on the same port and store
(in file order: UI check, outage and restart, then an outage that outlasts `finish`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking import (
    RunTracker,
    TrackingConfig,
    TrackingError,
    TrackingServer,
    find_run,
    start_server,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RestartableServer:
    """One store and port; `stop` and `start` simulate an outage of the tracking server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backend_uri = f"sqlite:///{root / 'server.db'}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.current: TrackingServer | None = None

    def start(self) -> None:
        self.current = start_server(
            self.backend_uri,
            port=self.port,
            artifacts_destination=str(self.root / "artifacts"),
            log_path=self.root / "server.log",
            ready_timeout_s=90,
        )

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def ensure_running(self) -> None:
        if self.current is None or not self.current.running:
            self.start()


class RecordingClient(MlflowClient):
    """A real client that records the thread of every metric-carrying ``log_batch``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metric_threads: list[threading.Thread] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=True):
        if metrics:
            self.metric_threads.append(threading.current_thread())
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    handle = RestartableServer(tmp_path_factory.mktemp("mlflow-server"))
    handle.start()
    yield handle
    handle.stop()


def server_config(server: RestartableServer, tmp_path: Path, experiment: str, **overrides) -> TrackingConfig:
    fields = dict(
        uri=server.url,
        experiment=experiment,
        spill_dir=str(tmp_path / "spill"),
        flush_interval_s=0.2,
        retry_initial_s=0.2,
        retry_max_s=1.0,
        request_timeout_s=5,
    )
    return TrackingConfig(**{**fields, **overrides})


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(point.step, point.value) for point in MlflowClient(uri).get_metric_history(run_id, key)]


def test_the_server_serves_the_ui_over_the_same_sqlite_store(server, tmp_path):
    server.ensure_running()
    config = server_config(server, tmp_path, "ui")
    with RunTracker.open(config, "key-ui", "ui", tags={}, params={}) as tracker:
        tracker.log_metrics({"loss": 1.0}, 0)
    with urllib.request.urlopen(server.url, timeout=10) as response:
        page = response.read().decode()
    assert response.status == 200 and "mlflow" in page.lower()
    direct = TrackingConfig(uri=server.backend_uri, experiment="ui")  # the file the server fronts
    assert find_run(direct, "key-ui").run_id == tracker.run_id


def test_a_server_outage_mid_run_loses_no_point_and_never_blocks_the_caller(server, tmp_path):
    server.ensure_running()
    config = server_config(server, tmp_path, "outage", max_buffered_points=100)
    client = RecordingClient(config.uri)
    tracker = RunTracker.open(
        config, "key-outage", "outage", tags={"variant": "mhc"}, params={"lr": 1e-3}, client=client
    )
    for step in range(100):
        tracker.log_metrics({"train/loss": 1 / (step + 1), "train/lr": step * 1e-3}, step)
    assert tracker.flush(timeout_s=30)

    server.stop()
    for step in range(100, 300):  # the caller keeps training: nothing raises, nothing waits on the network
        tracker.log_metrics({"train/loss": 1 / (step + 1), "train/lr": step * 1e-3}, step)
    tracker.log_dict_artifact({"amax": [1.0, 2.0]}, "diagnostics/during_outage.json")
    wait_until(lambda: tracker.stats.failed_calls >= 2, timeout_s=30)  # the flusher tried, failed, backs off
    stats = tracker.stats
    assert stats.pending == 401  # 200 steps × 2 metrics + 1 artifact, all kept
    assert stats.spilled > 0  # beyond max_buffered_points they went to disk

    server.start()
    tracker.finish("FINISHED", timeout_s=60)

    assert MlflowClient(config.uri).get_run(tracker.run_id).info.status == "FINISHED"
    assert history(config.uri, tracker.run_id, "train/loss") == [(s, 1 / (s + 1)) for s in range(300)]
    assert history(config.uri, tracker.run_id, "train/lr") == [(s, s * 1e-3) for s in range(300)]
    local = MlflowClient(config.uri).download_artifacts(
        tracker.run_id, "diagnostics", str(tmp_path / "download")
    )
    assert json.loads((Path(local) / "during_outage.json").read_text()) == {"amax": [1.0, 2.0]}
    assert client.metric_threads and all(
        thread is not threading.current_thread() for thread in client.metric_threads
    )
    assert not tracker.spill_path.exists()


def test_finish_with_the_server_down_raises_keeps_the_points_and_the_next_attempt_sends_them(
    server, tmp_path
):
    server.ensure_running()
    config = server_config(server, tmp_path, "down-at-finish")
    tags, params = {"variant": "hc"}, {"lr": 2e-3}
    tracker = RunTracker.open(config, "key-down", "down", tags=tags, params=params)
    for step in range(50):
        tracker.log_metrics({"loss": float(step)}, step)
    assert tracker.flush(timeout_s=30)

    server.stop()
    for step in range(50, 150):
        tracker.log_metrics({"loss": float(step)}, step)
    with pytest.raises(TrackingError, match=r"did not take 100 operation\(s\) \(100 metric points\)"):
        tracker.finish("FINISHED", timeout_s=2)
    spilled = [json.loads(line) for line in tracker.spill_path.read_text().splitlines()]
    assert [(op[0], op[1], op[3], op[2]) for op in spilled] == [
        ("m", "loss", s, float(s)) for s in range(50, 150)
    ]

    # The next attempt, here straight on the SQLite file behind the server (saving a third server start):
    direct = config.model_copy(update={"uri": server.backend_uri})
    assert find_run(direct, "key-down").status == "RUNNING"  # not FINISHED: the scheduler will resume it
    resumed = RunTracker.open(direct, "key-down", "down", tags=tags, params=params)
    assert (resumed.run_id, resumed.attempt) == (tracker.run_id, 2)
    resumed.finish("FINISHED", timeout_s=60)
    assert history(direct.uri, tracker.run_id, "loss") == [(s, float(s)) for s in range(150)]
    assert find_run(direct, "key-down").status == "FINISHED"
    assert not tracker.spill_path.exists()
