"""`analysis.overhead`: a variant is compared only with baseline runs of its own cell, and says why not otherwise."""

import polars as pl
import pytest

from analysis.overhead import overhead

CPU, GPU = "cpu:AMD EPYC (2 cores, 2 threads)", "cuda:NVIDIA H100 80GB HBM3"


def _run(size: str, hardware: str, tokens_per_step: float, arm: str, step_time_s: float) -> dict:
    return {
        "size": size, "hardware": hardware, "tokens_per_step": tokens_per_step, "arm": arm, "status": "FINISHED",
        "step_time_s": step_time_s, "tokens_per_s": tokens_per_step / step_time_s, "peak_memory_mb": 100.0,
    }


def test_each_missing_baseline_cell_gets_the_most_specific_status_and_a_reason():
    runs = pl.DataFrame([
        _run("p1", CPU, 2048, "residual", 0.50),
        _run("p1", CPU, 2048, "residual", 0.52),
        _run("p1", CPU, 2048, "mhc", 0.60),
        _run("p1", CPU, 2048, "mhc", 0.62),
        _run("p1", CPU, 4096, "mhc", 1.20),  # the baseline ran on this CPU at 2048 tokens per step only
        _run("p1", GPU, 2048, "mhc", 0.01),  # ... and never on the GPU
        _run("p4", CPU, 2048, "mhc", 0.90),  # ... and never at p4
    ])
    step = overhead(runs).filter(pl.col("quantity") == "step_time").sort("size", "hardware", "tokens_per_step")
    by_cell = {(r["size"], r["hardware"], r["tokens_per_step"]): r for r in step.iter_rows(named=True)}

    compared = by_cell[("p1", CPU, 2048)]
    assert compared["status"] == "ok" and compared["reason"] is None
    assert compared["change_pct"] == pytest.approx(100 * ((0.60 * 0.62) ** 0.5 / (0.50 * 0.52) ** 0.5 - 1))

    batch = by_cell[("p1", CPU, 4096)]
    assert batch["status"] == "no_baseline_at_this_batch" and batch["change_pct"] is None
    assert batch["reason"] == "the baseline ran at this size on this hardware only at 2,048 tokens per step"
    assert batch["baseline_hardware"] is None

    hardware = by_cell[("p1", GPU, 2048)]
    assert hardware["status"] == "no_baseline_on_this_hardware" and hardware["baseline_hardware"] == CPU
    assert hardware["reason"] == f"the baseline ran at this size only on {CPU}"

    size = by_cell[("p4", CPU, 2048)]
    assert size["status"] == "no_baseline_at_this_size"
    assert size["reason"] == "the baseline has no finished run at this size"
