"""`orchestrator.bench_train`: the full-step benchmark measures all three figures and records them."""

import csv
import math

from orchestrator.bench_train import append_csv, run_train_step_benchmark


def test_train_benchmark_reports_model_full_and_data_tracking_times_and_appends_csv(tmp_path, pd_literary_config):
    variants = [{"variant": "residual", "n": 1}, {"variant": "mhc", "n": 2}]
    rows = run_train_step_benchmark("nano", variants, data=pd_literary_config, steps=5, batch_size=2, seq_len=16)
    assert [(row.variant, row.n) for row in rows] == [("residual", 1), ("mhc", 2)]
    for row in rows:
        assert row.tokens_per_step == 32
        assert min(row.data_tracking_ms, row.model_step_ms, row.full_step_ms) > 0
        assert math.isclose(row.full_tokens_per_s, 32 / (row.full_step_ms / 1e3))
        assert math.isclose(row.data_tracking_share, row.data_tracking_ms / row.model_step_ms)
    path = tmp_path / "train.csv"
    append_csv(rows, path)
    append_csv(rows[:1], path)
    records = list(csv.DictReader(path.open()))
    assert [r["variant"] for r in records] == ["residual", "mhc", "residual"]
    assert float(records[1]["data_tracking_share"]) == rows[1].data_tracking_share
    assert {"git_sha", "timestamp", "machine", "full_overhead"} <= records[0].keys()
