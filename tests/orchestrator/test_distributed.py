"""Multi-worker training on a real Ray Train worker group (2 CPU workers, gloo) against one process.

Starting a worker group costs tens of seconds on a 2-core machine, so the 2-worker runs share launches: one
group (module fixture) trains a run whose worker is killed mid-run (the group restarts once), every residual
variant with FSDP, mHC with DDP (2 accumulated micro-batches), HSDP and mHC-aware recomputation, and mHC
resumed from a one-process checkpoint; one more group runs through the sweep scheduler.

Tolerance: 2 FSDP workers and one process do the same arithmetic except the order of two fp32 reductions (the
gradient average over ranks after each rank's mean over its half of the batch, versus one mean over the whole
batch; and the sharded gradient norm). Those differ in the last bits (≈ 1e-7 relative was seen), which AdamW's
normalised update carries into the next steps; 1e-5 relative over 6 steps leaves room for that growth, while
a real difference (another batch slice, another router bias and so other experts) moves the loss by orders of
magnitude more. A restart on the same 2 workers repeats the same reductions, hence its tighter 1e-6.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch
from mlflow.tracking import MlflowClient

from models import build_model
from models.errors import ConfigError
from orchestrator.checkpoint import latest_complete, list_checkpoints
from orchestrator.distributed import (
    Parallel,
    check_cluster_fits,
    check_parallel,
    load_train_state,
    read_model_state,
    save_train_state,
    train_on_workers,
)
from orchestrator.resources import Resources
from orchestrator.runspec import RunSpec
from orchestrator.scheduler import connect, plan, submit
from orchestrator.sweep import load_sweep
from orchestrator.train import StepReport, run

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_ADDRESS": "local",
}
VARIANTS = [("residual", 1), ("hc", 2), ("mhc", 2), ("mhc-lite", 2)]
STEPS = 6
RTOL = 1e-5  # fp32 reduction order only (module docstring)

# The kill callback below runs inside the Ray Train workers, which cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _spec(
    root: Path, data_config, experiment: str, *, variant: str = "mhc", n: int = 2, grad_accum: int = 1, **resources
) -> RunSpec:
    return RunSpec(
        model={"preset": "nano", "residual": {"variant": variant, "n": n}},
        training={
            "budget": {"steps": STEPS},
            "batch_size": 8,
            "seq_len": 32,
            "lr": 3e-3,
            "eval_every": STEPS,
            "eval_windows": 8,
            "checkpoint_every": 2,
            "grad_accum": grad_accum,
        },
        data=data_config.model_dump(),
        tracking={"uri": f"sqlite:///{root / 'mlruns.db'}", "experiment": experiment},
        storage=str(root / experiment),
        resources=resources,
    )


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module; RAY_ADDRESS=local keeps it off any cluster started on this machine."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_ENV.items():
            patch.setenv(key, value)
        connect(None)
        yield
        import ray

        ray.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def one_process(root, pd_literary_config) -> dict[str, tuple]:
    """Every variant trained in this process: the reference."""
    specs = {variant: _spec(root, pd_literary_config, "one", variant=variant, n=n) for variant, n in VARIANTS}
    return {variant: (spec, run(spec)) for variant, spec in specs.items()}


def _kill_rank_one_once(marker: Path, at_step: int):
    """An on_step that SIGKILLs rank 1's worker process at ``at_step``, the first time only."""

    def on_step(report: StepReport) -> None:
        import ray.train

        if report.step == at_step and ray.train.get_context().get_world_rank() == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


@pytest.fixture(scope="module")
def two_workers(root, pd_literary_config, local_ray, one_process) -> dict[str, tuple]:
    """One worker group (max_failures=1) trains, in order: mHC with a worker killed at step 3 (the group restarts
    and resumes it), every variant with FSDP, mHC with DDP, with 2-way replicated HSDP, with FSDP and mHC-aware
    recomputation, and mHC resumed with FSDP from the one-process run's step-4 checkpoint."""
    from_one = _spec(root, pd_literary_config, "from-one", workers=2)
    single_dir = one_process["mhc"][0].run_dir
    shutil.copytree(single_dir / "step-00000004", from_one.run_dir / "step-00000004")
    specs = {
        "killed": _spec(root, pd_literary_config, "killed", workers=2),
        **{
            variant: _spec(root, pd_literary_config, "fsdp", variant=variant, n=n, workers=2) for variant, n in VARIANTS
        },
        "ddp": _spec(root, pd_literary_config, "ddp", workers=2, sharding="ddp", grad_accum=2),
        "hsdp": _spec(root, pd_literary_config, "hsdp", workers=2, sharding="hsdp", replicate=2),
        "recompute": _spec(root, pd_literary_config, "recompute", workers=2, recompute="mhc"),
        "from-one": from_one,
    }
    kill = _kill_rank_one_once(root / "killed-once", at_step=3)
    results = train_on_workers(list(specs.values()), on_step=kill, max_failures=1)
    assert (root / "killed-once").exists()
    return {name: (spec, result) for (name, spec), result in zip(specs.items(), results, strict=True)}


@pytest.mark.parametrize(("variant", "n"), VARIANTS)
def test_two_fsdp_workers_train_like_one_process(one_process, two_workers, variant, n):
    _, single = one_process[variant]
    _, sharded = two_workers[variant]
    assert sharded.status == single.status == "FINISHED"
    assert len(sharded.losses) == STEPS
    assert sharded.losses == pytest.approx(single.losses, rel=RTOL)
    assert sharded.final_val_loss == pytest.approx(single.final_val_loss, rel=RTOL)


def test_ddp_and_hsdp_train_like_fsdp(two_workers):
    fsdp = two_workers["mhc"][1]
    for name in ("ddp", "hsdp"):
        spec, result = two_workers[name]
        assert result.losses == pytest.approx(fsdp.losses, rel=RTOL), name
        tags = MlflowClient(spec.tracking.uri).get_run(result.run_id).data.tags
        assert tags["resources.sharding"] == name and f"× 2 workers ({name})" in tags["hardware"]


def test_mhc_recomputation_under_fsdp_changes_no_loss(two_workers):
    spec, result = two_workers["recompute"]
    assert result.losses == pytest.approx(two_workers["mhc"][1].losses, rel=RTOL)
    assert MlflowClient(spec.tracking.uri).get_run(result.run_id).data.tags["resources.recompute"] == "mhc"


def test_a_one_process_checkpoint_resumes_on_two_workers(one_process, two_workers):
    single = one_process["mhc"][1]
    _, resumed = two_workers["from-one"]
    assert resumed.status == "FINISHED" and resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(single.losses[4:], rel=RTOL)


def test_rank_zero_alone_logs_the_one_process_metrics_plus_memory_per_rank(one_process, two_workers):
    spec, result = two_workers["mhc"]
    client = MlflowClient(spec.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("fsdp").experiment_id])
    assert len(runs) == len(VARIANTS)  # one MLflow run per grid point, not one per rank
    logged = client.get_run(result.run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["resources.workers"] == "2"
    history = sorted(client.get_metric_history(result.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert [m.value for m in history] == pytest.approx(result.losses)  # the mean over ranks
    single = client.get_run(one_process["mhc"][1].run_id).data.metrics
    assert set(single) <= set(logged.data.metrics)
    per_rank = [logged.data.metrics[f"final/peak_memory_mb_rank{rank}"] for rank in (0, 1)]
    assert logged.data.metrics["final/peak_memory_mb"] == max(per_rank) > 0


def test_a_two_worker_checkpoint_resumes_in_one_process(root, pd_literary_config, two_workers):
    sharded_spec, sharded = two_workers["mhc"]
    source = sharded_spec.run_dir / "step-00000004"
    assert (source / ".metadata").is_file() and len(list(source.glob("*.distcp"))) == 2  # one shard per rank
    spec = _spec(root, pd_literary_config, "resumed")  # same run key: resources are not part of it
    assert spec.run_key == sharded_spec.run_key
    shutil.copytree(source, spec.run_dir / source.name)
    resumed = run(spec)
    assert resumed.status == "FINISHED" and resumed.resumed_from == 4
    assert resumed.losses == pytest.approx(sharded.losses[4:], rel=RTOL)
    weights = read_model_state(latest_complete(spec.run_dir)[1], build_model(spec.model))
    sharded_weights = read_model_state(latest_complete(sharded_spec.run_dir)[1], build_model(spec.model))
    assert all(torch.allclose(weights[k], sharded_weights[k], rtol=1e-4, atol=1e-6) for k in weights)


def test_a_killed_worker_restarts_the_group_from_the_sharded_checkpoint(two_workers):
    spec, result = two_workers["killed"]
    uninterrupted = two_workers["mhc"][1]
    assert result.status == "FINISHED" and result.resumed_from == 2  # checkpoints every 2 steps; killed at 3
    assert result.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-6)
    assert result.final_val_loss == pytest.approx(uninterrupted.final_val_loss, rel=1e-6)
    client = MlflowClient(spec.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["attempt"] == "2"
    history = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert [history[step] for step in range(1, STEPS + 1)] == pytest.approx(uninterrupted.losses, rel=1e-6)
    assert [p.name for p in list_checkpoints(spec.run_dir)] == ["step-00000006", "step-00000004"]


SWEEP = """\
name: {name}
data: {{source: pd-literary, vocab_size: 2048, cache_dir: {cache}}}
tracking: {{uri: "sqlite:///{db}"}}
storage: {storage}
base:
  training: {{batch_size: 8, seq_len: 32, eval_every: 4, eval_windows: 8, checkpoint_every: 2}}
grid:
  size: [nano]
  budget: [5.0e+9]
  residual: [{{variant: mhc, n: 2}}]
resources:
  default: {resources}
"""


def _write_sweep(tmp_path: Path, cache: Path, name: str, resources: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SWEEP.format(name=name, cache=cache, db=tmp_path / "mlruns.db", storage=tmp_path / "runs", resources=resources)
    )
    return path


def test_the_scheduler_runs_a_two_worker_point_exactly_once(tmp_path, data_cache_dir, pd_literary_dataset, local_ray):
    path = _write_sweep(tmp_path, data_cache_dir, "gang", "{workers: 2, cpus: 1, sharding: fsdp}")
    sweep, points = load_sweep(path)
    first = submit(sweep, points, sweep_file=path)
    assert first.complete and first.launched == 1 and [t.outcome for t in first.tasks] == ["FINISHED"]
    again = submit(sweep, points, sweep_file=path)
    assert again.launched == 0 and again.complete
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name(points[0].spec.tracking.experiment).experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep_parent") != "true"]
    assert [r.info.status for r in children] == ["FINISHED"]
    assert children[0].data.tags["run_key"] == points[0].spec.run_key
    assert children[0].data.tags["resources.workers"] == "2" and "mlflow.parentRunId" in children[0].data.tags


def test_a_gang_larger_than_the_cluster_is_refused_before_anything_runs(tmp_path, data_cache_dir, local_ray):
    path = _write_sweep(tmp_path, data_cache_dir, "too-big", "{workers: 2, cpus: 1, gpus: 1}")
    sweep, points = load_sweep(path)
    with pytest.raises(ConfigError, match=r"resources.gpus \(1\) × resources.workers \(2\) needs 2 GPUs"):
        submit(sweep, points, sweep_file=path)
    assert [state.state for state in plan(sweep, points)] == ["pending"]  # nothing ran, nothing recorded


def test_bad_parallel_configs_name_the_field(tmp_path, pd_literary_config):
    with pytest.raises(ConfigError, match=r"replicate \(2\) must divide workers \(3\)"):
        Resources(workers=3, sharding="hsdp", replicate=2)
    with pytest.raises(ConfigError, match=r"replicate \(2\) needs sharding: hsdp"):
        Resources(workers=2, sharding="fsdp", replicate=2)
    uneven = _spec(tmp_path, pd_literary_config, "bad", workers=3)
    with pytest.raises(ConfigError, match=r"training.batch_size \(8\) must be divisible by resources.workers \(3\)"):
        check_parallel(uneven)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"resources.gpus \(1\) asks for a GPU"):
            run(_spec(tmp_path, pd_literary_config, "bad", gpus=1))
    with pytest.raises(ConfigError, match=r"resources.cpus \(4\) × resources.workers \(2\) needs 8 CPUs"):
        check_cluster_fits(_spec(tmp_path, pd_literary_config, "bad", workers=2, cpus=4), {"CPU": 2.0})


def test_a_damaged_shard_falls_back_to_the_previous_checkpoint(tmp_path):
    model = build_model(RunSpec(model={"preset": "nano"}).model)
    optimizer = torch.optim.AdamW(model.parameters())
    parallel = Parallel.single(Resources(), torch.device("cpu"))
    for step in (2, 4):
        save_train_state(parallel, tmp_path, step, model, optimizer, {"best_loss": float(step)})
    shard = next((tmp_path / "step-00000004").glob("*.distcp"))
    with shard.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00garbage\x00")
    assert latest_complete(tmp_path)[0] == 2
    assert load_train_state(parallel, tmp_path, model, optimizer) == (2, {"best_loss": 2.0})
