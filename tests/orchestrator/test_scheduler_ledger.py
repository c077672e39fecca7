"""The ledger rules without Ray or training: which recorded ends rerun, with how many retries, and why.

`plan` reads each point's state from the tracking store; here `_state` is fed the `RunInfo` the store would
return, and `_failure_reason` the errors Ray raises when a task dies past its retries.
"""

import pytest
import ray.exceptions

from orchestrator.scheduler import _failure_reason, _state
from orchestrator.sweep import load_sweep
from orchestrator.tracking import RunInfo

SWEEP = """\
name: ledger
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {root}/cache}}
tracking: {{uri: "sqlite:///{root}/mlruns.db"}}
storage: {root}/runs
base: {{training: {{batch_size: 8, seq_len: 64}}}}
grid: {{size: [nano], budget: [1.0e+10]}}
retry: {{max_retries: 2}}
"""


@pytest.fixture
def sweep_and_point(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP.format(root=tmp_path))
    sweep, points = load_sweep(path)
    return sweep, points[0]


def _info(status: str, reason: str | None = None, attempt: int = 1) -> RunInfo:
    return RunInfo(run_id="r", run_key="k", experiment_id="1", status=status, attempt=attempt,
                   failure_reason=reason, start_time_ms=None, end_time_ms=None)


@pytest.mark.parametrize(
    ("status", "reason", "attempt", "state", "retries_left"),
    [
        ("FINISHED", None, 1, "finished", 0),
        ("RUNNING", None, 1, "pending", 2),  # interrupted (no live lock holder): resumes, full budget
        ("KILLED", "cancelled", 5, "pending", 2),  # a cancel is not a failure, however often it happened
        ("KILLED", "killed", 1, "pending", 2),
        ("KILLED", "pruned", 1, "failed", 0),  # stopped on purpose by a tuner: final
        ("FAILED", "node_died", 1, "pending", 1),  # one attempt spent of 1 + max_retries
        ("FAILED", "node_died", 2, "pending", 0),  # the last allowed attempt: no Ray-level retries left
        ("FAILED", "node_died", 3, "failed", 0),  # out of retries
        ("FAILED", "oom", 1, "pending", 1),
        ("FAILED", "diverged", 1, "failed", 0),  # never retried
    ],
)
def test_each_recorded_end_maps_to_a_state_and_a_retry_budget(sweep_and_point, status, reason, attempt, state,
                                                               retries_left):
    sweep, point = sweep_and_point
    result = _state(sweep, point, _info(status, reason, attempt))
    assert (result.state, result.retries_left) == (state, retries_left)


def test_a_point_never_run_is_pending_with_the_full_budget(sweep_and_point):
    sweep, point = sweep_and_point
    assert _state(sweep, point, None).state == "pending"
    assert _state(sweep, point, None).retries_left == sweep.retry.max_retries


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ray.exceptions.NodeDiedError("node 1 died"), "node_died"),
        (ray.exceptions.OutOfMemoryError("killed by the memory monitor"), "oom"),
        (ray.exceptions.TaskCancelledError(), "cancelled"),
        (ray.exceptions.WorkerCrashedError(), "crashed"),
        (RuntimeError("raised before the trainer opened its run"), "crashed"),
    ],
)
def test_ray_errors_become_ledger_reasons(error, reason):
    assert _failure_reason(error) == reason
