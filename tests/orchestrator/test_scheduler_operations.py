"""Operating a sweep on real Ray with a real MLflow store: a worker node dies, `ladder submit` runs as a Ray
job, `ladder cancel` stops a running sweep. Every grid point still ends FINISHED exactly once.

Each test gets its own Ray temp folder (the `ray_tmpdir` fixture, `conftest.RayTemp`): teardown ends exactly
the processes whose environment names that folder.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.checkpoint import list_checkpoints
from orchestrator.scheduler import plan, submit
from orchestrator.sweep import load_sweep

SWEEP = """\
name: {name}
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {cache}}}
tracking: {{uri: "sqlite:///{db}"}}
storage: {storage}
base:
  model: {{preset: nano, residual: {{variant: residual}}}}
  training: {{batch_size: 8, seq_len: 64, eval_every: 50, eval_windows: 8, checkpoint_every: 10}}
grid:
{grid}
"""


def _write_sweep(tmp_path: Path, data_cache_dir: Path, name: str, grid: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    text = SWEEP.format(name=name, cache=data_cache_dir, db=tmp_path / "mlruns.db", storage=tmp_path / "runs",
                        grid=grid)
    path.write_text(text + extra)
    return path


def _runs_by_key(db: Path, experiment: str) -> dict[str, list]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(experiment)
    by_key: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        if run.data.tags.get("sweep_parent") != "true":
            by_key.setdefault(run.data.tags["run_key"], []).append(run)
    return by_key


def _assert_each_point_finished_exactly_once(db: Path, experiment: str, points) -> dict[str, list]:
    by_key = _runs_by_key(db, experiment)
    assert set(by_key) == {p.spec.run_key for p in points}
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in by_key.values()), {
        key: [r.info.status for r in runs] for key, runs in by_key.items()
    }
    return by_key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mid_training(point) -> bool:
    """Whether the point's run has a checkpoint but not its final one."""
    checkpoints = list_checkpoints(point.spec.run_dir)
    return bool(checkpoints) and int(checkpoints[0].name.removeprefix("step-")) < point.spec.total_steps()


def test_killing_a_worker_node_mid_sweep_still_finishes_every_point_exactly_once(
    tmp_path, pd_literary_dataset, data_cache_dir, ray_tmpdir
):
    import ray
    from ray.cluster_utils import Cluster

    grid = ("  budget: [2.0e+10]\n"
            "  residual: [{variant: residual}, {variant: mhc, n: 2}, {variant: hc, n: 2}]\n")
    path = _write_sweep(tmp_path, data_cache_dir, "node-death", grid)
    sweep, points = load_sweep(path)
    loopback = {"node_ip_address": "127.0.0.1"}
    # The head takes no tasks (as on a real cluster); dashboard agent on a free port (52365 may be taken).
    cluster = Cluster(initialize_head=True, head_node_args={
        **loopback, "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": None,
    })
    killed: dict[str, object] = {}
    try:
        workers = [cluster.add_node(**loopback, num_cpus=1) for _ in range(2)]

        def kill_a_worker_once_two_runs_have_checkpoints(states) -> None:
            # Two runs mid-training (a checkpoint, not the final one) occupy both workers: whichever node
            # dies, a run is interrupted. (Not "step 10 exists": it is deleted once two newer ones exist.)
            if not killed and sum(_mid_training(p) for p in points) >= 2:
                killed.update(at=time.time(), node_id=workers[0].node_id)
                cluster.remove_node(workers[0], allow_graceful=False)

        result = submit(sweep, points, sweep_file=path, address=cluster.address,
                        on_update=kill_a_worker_once_two_runs_have_checkpoints, poll_s=0.5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed, "the sweep ended before a node could be killed"
    assert result.complete and not result.cancelled
    by_key = _assert_each_point_finished_exactly_once(tmp_path / "mlruns.db", "node-death", points)
    # The run on the killed node was rerun by Ray on the surviving node and resumed from its checkpoint: the
    # ledger shows a reopened run (attempt ≥ 2) whose curve continues after the kill with no gap.
    resumed = {key: runs[0] for key, runs in by_key.items() if int(runs[0].data.tags["attempt"]) >= 2}
    assert resumed, {key: runs[0].data.tags["attempt"] for key, runs in by_key.items()}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for key, run in resumed.items():
        history = client.get_metric_history(run.info.run_id, "train/loss")
        after_kill = [m.step for m in history if m.timestamp / 1000 >= killed["at"]]
        assert min(after_kill) > 1  # the rerun continued from a checkpoint, it did not start over
        total = next(p for p in points if p.spec.run_key == key).spec.total_steps()
        assert {m.step for m in history} == set(range(1, total + 1))  # and left no gap in the curve
        task = next(t for t in result.tasks if t.run_key == key)
        assert task.node_id != killed["node_id"]  # the surviving node reported it


def test_ladder_submit_runs_as_a_ray_job_entrypoint(tmp_path, pd_literary_dataset, data_cache_dir,
                                                    ray_tmpdir):
    grid = "  budget: [3.0e+9]\n  residual: [{variant: residual}, {variant: mhc, n: 2}]\n"
    path = _write_sweep(tmp_path, data_cache_dir, "as-job", grid)
    _, points = load_sweep(path)
    ray_cli = str(Path(sys.executable).parent / "ray")
    dashboard = _free_port()
    # Every port explicit and free: defaults (6379, 8265, 10001, 52365, ...) may belong to another user's Ray.
    ports = {flag: _free_port() for flag in (
        "--port", "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
        "--ray-client-server-port",
    )}
    start = [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             "--disable-usage-stats",
             *(f"{flag}={port}" for flag, port in ports.items())]
    job = [ray_cli, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
           sys.executable, "-m", "orchestrator", "submit", str(path), "--address", "auto"]
    # Without this, `ray start` advertises the machine's address and its GCS and raylet listen on every
    # interface despite --node-ip-address=127.0.0.1; with it, every Ray service binds 127.0.0.1 (`ss -ltn`).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    try:
        started = subprocess.run(start, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        done = subprocess.run(job, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "succeeded" in done.stdout + done.stderr
    finally:
        ray_tmpdir.end_processes()
    _assert_each_point_finished_exactly_once(tmp_path / "mlruns.db", "as-job", points)


def test_cancel_stops_a_running_submit_and_a_later_submit_resumes_it(
    tmp_path, pd_literary_dataset, data_cache_dir, ray_tmpdir
):
    grid = "  budget: [1.0e+10, 1.0e+11]\n  seed: [0, 1]\n"  # the big runs (325 steps) outlast the cancel
    path = _write_sweep(tmp_path, data_cache_dir, "cancelled", grid, extra="max_concurrent: 2\n")
    sweep, points = load_sweep(path)
    biggest = max(p.budget_flops for p in points)
    big = [p for p in points if p.budget_flops == biggest]
    submitting = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "submit", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and submitting.poll() is None:
            if any(list_checkpoints(p.spec.run_dir) for p in big):
                break
            time.sleep(0.2)
        assert submitting.poll() is None, "the sweep ended before it could be cancelled"
        requested = time.monotonic()
        cancel = subprocess.run([sys.executable, "-m", "orchestrator", "cancel", str(path)],
                                capture_output=True, text=True, timeout=120)
        output, _ = submitting.communicate(timeout=60)
        stopped_s = time.monotonic() - requested
    finally:
        if submitting.poll() is None:
            os.killpg(submitting.pid, signal.SIGKILL)
            submitting.wait()
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert submitting.returncode == 3, output[-3000:]  # cancelled
    assert "cancelled" in output
    assert stopped_s < 45, stopped_s  # one poll interval, the cancels, recording them, Ray's shutdown
    states = {s.point.spec.run_key: s for s in plan(sweep, points)}
    unfinished = [p for p in points if states[p.spec.run_key].state != "finished"]
    assert all(states[p.spec.run_key].state == "pending" for p in unfinished)  # resumable, not failed
    # Runs that had trained were stopped and recorded; a task still starting up left nothing behind. (Any
    # checkpoint: step 10's is deleted once two newer ones exist.)
    interrupted = [p for p in unfinished if list_checkpoints(p.spec.run_dir)]
    assert interrupted
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    for point in interrupted:
        run = client.get_run(states[point.spec.run_key].run_id)
        assert (run.info.status, run.data.tags.get("failure_reason")) == ("KILLED", "cancelled")
    finished_before = {key for key, s in states.items() if s.state == "finished"}

    again = submit(sweep, points, sweep_file=path)
    assert again.complete and again.launched == len(unfinished)
    by_key = _assert_each_point_finished_exactly_once(tmp_path / "mlruns.db", "cancelled", points)
    for point in interrupted:  # continued from its checkpoint in the same MLflow run
        assert int(by_key[point.spec.run_key][0].data.tags["attempt"]) >= 2
        task = next(t for t in again.tasks if t.run_key == point.spec.run_key)
        assert task.first_step is not None and task.first_step > 1
    for key in finished_before:
        assert by_key[key][0].data.tags["attempt"] == "1"
