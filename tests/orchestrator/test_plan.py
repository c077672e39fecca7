"""`ladder plan`: every paper grid point fits 80 GB GPUs; a point that cannot fit is named and stops a submit."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from models import ConfigError, count_parameters
from orchestrator.cli import app
from orchestrator.planner import GB, USABLE_FRACTION, check_fits, plan_sweep
from orchestrator.sweep import load_sweep

PAPER = Path(__file__).parents[2] / "sweeps" / "paper.yaml"
runner = CliRunner()


def _too_small_sweep(tmp_path: Path) -> Path:
    """The paper's 27B grid on 8 workers without recomputation: hundreds of GB of activations per GPU."""
    raw = yaml.safe_load(PAPER.read_text())
    raw["resources"]["paper-27b"] = {"gpus": 1, "workers": 8, "sharding": "fsdp", "recompute": "none"}
    path = tmp_path / "too_small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_paper_grid_point_fits_an_80_gb_gpu():
    _, points = load_sweep(PAPER)
    plans = plan_sweep(points)
    assert {plan.point.spec.model.name for plan in plans} == {"paper-3b", "paper-9b", "paper-27b"}
    for plan in plans:
        assert plan.fits, plan.label
        assert plan.capacity_bytes == USABLE_FRACTION * 80 * GB
        assert plan.memory.total <= plan.capacity_bytes
        assert plan.step_seconds is not None and plan.step_seconds > 0


def test_paper_plan_shards_the_state_over_every_worker_in_bf16_mixed_precision():
    _, points = load_sweep(PAPER)
    for plan in plan_sweep(points):
        resources, spec = plan.point.resources, plan.point.spec
        assert plan.shard_degree == resources.workers
        assert plan.precision == "bf16-mixed"
        params = count_parameters(spec.model).total
        assert plan.memory.parameters == pytest.approx(4 * params / resources.workers, rel=1e-6)
        assert plan.micro_batch_sequences * resources.workers * spec.training.grad_accum == spec.training.batch_size


def test_paper_recomputation_is_what_makes_the_larger_sizes_fit():
    _, points = load_sweep(PAPER)
    for plan in plan_sweep(points):
        memory = plan.memory
        without = memory.total - memory.activations.peak + memory.activations_none.peak
        if plan.point.resources.recompute == "none":
            assert without == memory.total
        elif plan.point.spec.model.residual.variant != "residual":
            assert without > plan.capacity_bytes, plan.label  # n = 4 streams need the recomputation


def test_a_grid_point_too_large_for_its_gpus_is_flagged_and_named(tmp_path):
    path = _too_small_sweep(tmp_path)
    _, points = load_sweep(path)
    flagged = [plan for plan in plan_sweep(points) if not plan.fits]
    assert {plan.point.spec.model.name for plan in flagged} == {"paper-27b"}
    with pytest.raises(ConfigError, match="do not fit their GPUs") as error:
        check_fits(points)
    for plan in flagged:
        assert plan.point.spec.run_key in str(error.value)
    assert "resources.gpu_memory_gb (80)" in str(error.value)


def test_ladder_plan_exits_zero_and_prints_every_paper_point():
    result = runner.invoke(app, ["plan", str(PAPER)], terminal_width=240)
    assert result.exit_code == 0, result.output
    _, points = load_sweep(PAPER)
    for point in points:
        assert point.spec.run_key in result.output
    assert "NO" not in result.output


def test_ladder_plan_exits_one_naming_each_point_that_does_not_fit(tmp_path):
    path = _too_small_sweep(tmp_path)
    result = runner.invoke(app, ["plan", str(path)], terminal_width=240)
    assert result.exit_code == 1
    assert "3 grid point(s) do not fit their GPUs" in result.output
    assert result.output.count("(paper-27b,") == 3


def test_ladder_submit_launches_nothing_when_a_point_does_not_fit(tmp_path):
    path = _too_small_sweep(tmp_path)
    result = runner.invoke(app, ["submit", str(path)], terminal_width=240)
    assert result.exit_code == 2
    assert "do not fit their GPUs" in result.output


def test_a_batch_that_does_not_split_over_the_workers_is_an_error_naming_the_fields(tmp_path):
    raw = yaml.safe_load(PAPER.read_text())
    raw["resources"]["paper-3b"]["workers"] = 7
    path = tmp_path / "uneven.yaml"
    path.write_text(yaml.safe_dump(raw))
    _, points = load_sweep(path)
    with pytest.raises(ConfigError, match=r"training.batch_size \(320\) must be divisible by resources.workers \(7\)"):
        plan_sweep(points)
