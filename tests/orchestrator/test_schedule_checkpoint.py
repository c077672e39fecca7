"""Learning-rate schedules and atomic, verified checkpoints."""

import pytest
import torch

from orchestrator.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from orchestrator.runspec import TrainingConfig
from orchestrator.schedule import lr_multiplier


def test_paper_step_schedule_decays_at_80_and_90_percent():
    training = TrainingConfig(warmup_fraction=0.1, schedule="step")
    values = [lr_multiplier(step, 100, training) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert values[79] == 1.0 and values[80] == 0.316 and values[89] == 0.316 and values[90] == 0.1


def test_cosine_and_wsd_end_at_the_floor():
    cosine = TrainingConfig(schedule="cosine", warmup_fraction=0.0, min_lr_ratio=0.1)
    assert lr_multiplier(0, 1000, cosine) == pytest.approx(1.0)
    assert lr_multiplier(500, 1000, cosine) == pytest.approx(0.55)
    assert lr_multiplier(1000, 1000, cosine) == pytest.approx(0.1)
    wsd = TrainingConfig(schedule="wsd", warmup_fraction=0.0, min_lr_ratio=0.0, decay_fraction=0.2)
    assert lr_multiplier(799, 1000, wsd) == 1.0
    assert lr_multiplier(900, 1000, wsd) == pytest.approx(0.5)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value)}


def test_latest_checkpoint_round_trips_and_keeps_only_the_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000002"]
    step, state = latest_checkpoint(tmp_path)
    assert step == 3 and torch.equal(state["model"]["w"], torch.full((3,), 3.0))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    save_checkpoint(tmp_path, 1, _state(1))
    newest = save_checkpoint(tmp_path, 2, _state(2))
    with (newest / "state.pt").open("r+b") as handle:
        handle.seek(40)
        handle.write(b"\x00garbage\x00")
    step, state = latest_checkpoint(tmp_path)
    assert step == 1 and state["step"] == 1


def test_partial_checkpoints_are_ignored(tmp_path):
    save_checkpoint(tmp_path, 4, _state(4))
    (tmp_path / ".staging-00000005-123").mkdir()  # a writer killed mid-write
    incomplete = tmp_path / "step-00000006"
    incomplete.mkdir()
    torch.save(_state(6), incomplete / "state.pt")  # no COMPLETE marker
    assert latest_checkpoint(tmp_path)[0] == 4
    assert latest_checkpoint(tmp_path / "missing") is None
