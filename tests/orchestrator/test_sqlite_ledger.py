"""The read-only SQLite ledger reader agrees with MLflow's own client on a real store, and never writes."""

from pathlib import Path

from mlflow.tracking import MlflowClient

from orchestrator.tracking import TrackingConfig
from orchestrator.tracking.runs import RunInfo, _search_all, find_runs
from orchestrator.tracking.sqlite_ledger import read_runs


def _populate(uri: str) -> None:
    client = MlflowClient(uri)
    ours = client.create_experiment("ledger")
    other = client.create_experiment("elsewhere")
    for index, (status, reason) in enumerate(
        [("FINISHED", None), ("FAILED", "node_died"), ("KILLED", "cancelled"), ("RUNNING", None)]
    ):
        run = client.create_run(ours, tags={"run_key": f"key{index}", "attempt": str(index + 1)})
        for step in range(1, 4):
            client.log_metric(run.info.run_id, "train/loss", 5.0 - step - index / 10, step=step)
        client.log_metric(run.info.run_id, "val/loss", 4.5 + index, step=3)
        if reason:
            client.set_tag(run.info.run_id, "failure_reason", reason)
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
    # A duplicate of key1 that finished (FINISHED wins), a deleted run, a run without a key, another experiment.
    duplicate = client.create_run(ours, tags={"run_key": "key1", "attempt": "1"})
    client.set_terminated(duplicate.info.run_id, "FINISHED")
    deleted = client.create_run(ours, tags={"run_key": "key9"})
    client.delete_run(deleted.info.run_id)
    client.create_run(ours, tags={"note": "no key"})
    client.create_run(other, tags={"run_key": "key0"})


def test_the_sqlite_reader_returns_what_mlflow_returns(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    _populate(uri)
    config = TrackingConfig(uri=uri, experiment="ledger")

    direct = sorted(read_runs(config, RunInfo.from_record), key=lambda run: run.run_id)
    through_mlflow = sorted(_search_all(MlflowClient(uri), config), key=lambda run: run.run_id)
    assert direct == through_mlflow
    assert len(direct) == 6  # 4 keyed + duplicate + keyless; deleted and other experiment's runs excluded

    by_key = find_runs(config)
    assert set(by_key) == {"key0", "key1", "key2", "key3"}
    assert by_key["key1"].status == "FINISHED"  # the finished duplicate is preferred over the FAILED one
    assert (by_key["key2"].status, by_key["key2"].failure_reason, by_key["key2"].attempt) == ("KILLED", "cancelled", 3)
    assert by_key["key0"].metrics == {"train/loss": 2.0, "val/loss": 4.5}  # the last step's values


def test_a_missing_store_or_experiment_is_empty_and_nothing_is_created(tmp_path):
    missing = tmp_path / "absent.db"
    assert read_runs(TrackingConfig(uri=f"sqlite:///{missing}", experiment="x"), RunInfo.from_record) == []
    assert not missing.exists()

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    _populate(uri)
    before = (tmp_path / "mlruns.db").stat().st_mtime_ns
    assert find_runs(TrackingConfig(uri=uri, experiment="never-created")) == {}
    assert (tmp_path / "mlruns.db").stat().st_mtime_ns == before


def test_stores_it_cannot_read_fall_back_to_mlflow(tmp_path):
    assert read_runs(TrackingConfig(uri="http://127.0.0.1:1", experiment="x"), RunInfo.from_record) is None
    not_mlflow = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(not_mlflow) as db:
        db.execute("CREATE TABLE experiments (id INTEGER)")
    assert read_runs(TrackingConfig(uri=f"sqlite:///{not_mlflow}", experiment="x"), RunInfo.from_record) is None
    assert Path(not_mlflow).exists()
