"""The `ladder` CLI: every command has help; model info prints the accounting; bad input exits with the rule."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models import count_parameters, get_preset
from orchestrator.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["model"],
        ["model", "info"],
        ["model", "smoke"],
        ["bench"],
        ["bench", "step"],
        ["bench", "kernels"],
        ["train"],
        ["submit"],
        ["status"],
        ["ui"],
    ],
)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_model_info_prints_exact_counts_for_the_paper_preset():
    result = runner.invoke(
        app, ["model", "info", "paper-3b", "--residual", "mhc", "--n", "4"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    counts = count_parameters(get_preset("paper-3b").with_residual(variant="mhc", n=4))
    assert f"{counts.total:,}" in result.output
    assert f"{counts.activated:,}" in result.output
    assert "FLOPs/token: 6N" in result.output


def test_model_info_rejects_bad_input_naming_the_field():
    result = runner.invoke(
        app, ["model", "info", "nano", "--residual", "mhc-lite", "--n", "7"], terminal_width=200
    )
    assert result.exit_code == 2
    assert "model.residual.n (7) must be <= 6" in result.output
    unknown = runner.invoke(app, ["model", "info", "paper-1t"], terminal_width=200)
    assert unknown.exit_code == 2 and "model.preset" in unknown.output


def test_model_smoke_trains_nano_and_reports_learning():
    result = runner.invoke(app, ["model", "smoke", "nano", "--residual", "mhc-lite", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "learning" in result.output and "not learning" not in result.output


def test_bench_step_prints_ratios_and_appends_csv(tmp_path):
    csv_path = tmp_path / "step.csv"
    args = ["bench", "step", "--preset", "nano", "--variant", "mhc", "--threads", "1", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--seq-len", "16", "--repeats", "2", "--csv", str(csv_path)])
    assert result.exit_code == 0, result.output
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 3  # header + residual + mhc
    assert "ratio_to_residual" in lines[0]
    assert lines[1].split(",")[-1] == "1.0"  # residual against itself


@pytest.mark.parametrize("launcher", [["ladder"], [sys.executable, "-m", "orchestrator"]])
def test_installed_console_script_and_module_run_the_cli(launcher):
    if launcher == ["ladder"]:
        launcher = [str(Path(sys.executable).parent / "ladder")]
    result = subprocess.run([*launcher, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "model" in result.stdout and "bench" in result.stdout


def test_bench_kernels_without_a_gpu_says_so_and_exits_cleanly():
    result = runner.invoke(app, ["bench", "kernels", "--widths", "64", "--csv", "-"])
    assert result.exit_code == 0
    assert "GPU" in result.output


def test_bench_kernels_dry_run_lists_the_bytes_per_op():
    result = runner.invoke(app, ["bench", "kernels", "--dry-run", "--widths", "1280"])
    assert result.exit_code == 0, result.output
    assert "1280" in result.output and "backends triton, torch, compiled" in result.output


def test_bench_kernels_on_cpu_times_the_cpp_kernels_against_eager(tmp_path):
    csv_path = tmp_path / "kernels.csv"
    args = ["bench", "kernels", "--device", "cpu", "--widths", "24", "--tokens", "67", "--repeats", "2"]
    result = runner.invoke(app, [*args, "--csv", str(csv_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["op"], r["mode"], r["backend"]) for r in rows} == {
        (op, mode, backend)
        for op in ("coefficients", "sinkhorn", "pre_mix", "post_res_mix", "mhc_layer")
        for mode in ("fwd", "fwd+bwd")
        for backend in ("cpp", "torch")
    }
    assert all(float(r["max_rel_error"]) < 1e-5 and float(r["median_ms"]) > 0 for r in rows)
