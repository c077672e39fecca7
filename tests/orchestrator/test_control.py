"""Sweep control without Ray: the submit lock, cancel markers, what the scheduler refuses before launching."""

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.control import DEFAULT_STORAGE, SweepControl, read_sweep_identity
from orchestrator.scheduler import SweepBusyError, submit
from orchestrator.sweep import SweepSpec, load_sweep

runner = CliRunner()

HOLD_LOCK = """\
import sys, time
from orchestrator.control import SweepControl
with SweepControl.for_sweep("held", sys.argv[1]).submitting() as token:
    print(token, flush=True)
    time.sleep(600)
"""


def test_default_storage_is_the_sweep_specs():
    assert SweepSpec.model_fields["storage"].default == DEFAULT_STORAGE


def test_cancel_with_no_submission_running_writes_no_marker(tmp_path):
    control = SweepControl.for_sweep("idle", tmp_path)
    assert control.running_submission() is None
    assert control.request_cancel() is None
    assert not control.cancel_path.exists()


def test_a_marker_is_honoured_only_by_the_submission_it_names(tmp_path):
    control = SweepControl.for_sweep("s", tmp_path)
    with control.submitting() as token:
        assert token and control.running_submission() == token
        assert not control.cancel_requested(token)
        assert control.request_cancel() == token
        assert control.cancel_requested(token) and not control.cancel_requested("someone-else")
        control.clear_cancel(token)
        assert not control.cancel_path.exists()
        control.request_cancel()  # a cancel racing with the end of this submission ...
    with control.submitting() as later:  # ... is stale for the next one, which removes it
        assert not control.cancel_requested(later) and not control.cancel_path.exists()
    assert control.running_submission() is None


def test_the_lock_dies_with_its_holder_and_refuses_a_second_submitter_meanwhile(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        token = holder.stdout.readline().strip()
        control = SweepControl.for_sweep("held", tmp_path)
        assert control.running_submission() == token
        with control.submitting() as second:
            assert second is None
    finally:
        holder.kill()
        holder.wait()
    assert control.wait_until_stopped(timeout_s=5)
    with control.submitting() as third:
        assert third is not None


def test_read_sweep_identity_needs_only_name_and_storage(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: quick\ngrid: {size: [nano]}\nstorage: /data/runs\n")
    assert read_sweep_identity(path) == ("quick", "/data/runs")
    path.write_text("name: quick\n")
    assert read_sweep_identity(path) == ("quick", DEFAULT_STORAGE)
    path.write_text("grid: [\n")
    with pytest.raises(ValueError, match="not YAML"):
        read_sweep_identity(path)


def test_ladder_cancel_without_a_running_submit_exits_1_fast(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: idle\nstorage: {tmp_path / 'runs'}\ngrid: {{size: [nano]}}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "orchestrator", "cancel", str(path)], capture_output=True,
                          text=True)
    assert done.returncode == 1 and "no submission" in done.stdout
    assert time.monotonic() - started < 10  # no torch, MLflow or Ray import


def _sweep(tmp_path, data_cache_dir, extra: str = ""):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"name: refused\ndata: {{source: pd-literary, vocab_size: 2048, cache_dir: {data_cache_dir}}}\n"
        f'tracking: {{uri: "sqlite:///{tmp_path / "mlruns.db"}"}}\nstorage: {tmp_path / "runs"}\n'
        "base: {training: {batch_size: 8, seq_len: 64}}\ngrid: {size: [nano], budget: [1.0e+10]}\n" + extra
    )
    return path


def test_a_sweep_already_being_submitted_is_refused(tmp_path, data_cache_dir):
    path = _sweep(tmp_path, data_cache_dir)
    sweep, points = load_sweep(path)
    with SweepControl.for_sweep(sweep.name, sweep.storage).submitting() as token:
        assert token
        with pytest.raises(SweepBusyError, match="already being submitted"):
            submit(sweep, points, sweep_file=path)


def test_ladder_cancel_has_help():
    result = runner.invoke(app, ["cancel", "--help"])
    assert result.exit_code == 0 and "resumes" in result.output
