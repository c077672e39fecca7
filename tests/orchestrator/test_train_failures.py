"""How the trainer records infrastructure failures for the ledger (the scheduler retries them)."""

import pytest
import torch

from orchestrator import train as train_module
from orchestrator.runspec import RunSpec
from orchestrator.tracking import find_run


def test_running_out_of_memory_is_recorded_as_oom_and_still_raised(tmp_path, pd_literary_config, monkeypatch):
    spec = RunSpec(
        model={"preset": "nano"},
        training={"budget": {"steps": 6}, "batch_size": 8, "seq_len": 64, "eval_every": 100,
                  "eval_windows": 4, "checkpoint_every": 2},
        data=pd_literary_config.model_dump(),
        tracking={"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "experiment": "oom"},
        storage=str(tmp_path / "runs"),
    )
    real_loss, calls = train_module._loss, []

    def loss_until_memory_runs_out(*args):
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_loss(*args)

    monkeypatch.setattr(train_module, "_loss", loss_until_memory_runs_out)
    with pytest.raises(torch.OutOfMemoryError):
        train_module.run(spec)
    info = find_run(spec.tracking, spec.run_key)
    assert (info.status, info.failure_reason) == ("FAILED", "oom")
    assert "OutOfMemoryError" in info.tags["failure_detail"]
