"""The single-run trainer on the real built-in corpus, tracked in a real MLflow SQLite store."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.runspec import RunSpec
from orchestrator.train import run

VARIANTS = [("residual", 1), ("hc", 4), ("mhc", 4), ("mhc-lite", 4)]


def _spec(tmp_path: Path, data_config, *, variant="residual", n=1, steps=40, **training) -> RunSpec:
    return RunSpec(
        model={"preset": "nano", "residual": {"variant": variant, "n": n}},
        training={
            "budget": {"steps": steps},
            "batch_size": 8,
            "seq_len": 64,
            "lr": 3e-3,
            "eval_every": 20,
            "eval_windows": 16,
            "checkpoint_every": 10,
            **training,
        },
        data=data_config.model_dump(),
        tracking={"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "experiment": "tests"},
        storage=str(tmp_path / "runs"),
    )


@pytest.mark.parametrize(("variant", "n"), VARIANTS)
def test_nano_learns_the_corpus_well_below_its_unigram_entropy(
    tmp_path, pd_literary_config, pd_literary_dataset, variant, n
):
    spec = _spec(tmp_path, pd_literary_config, variant=variant, n=n, steps=300, eval_every=100, lr=1e-2)
    result = run(spec)
    unigram = pd_literary_dataset.metadata.unigram_entropy_nats
    assert result.status == "FINISHED"
    assert result.final_val_loss < unigram - 0.5, (result.final_val_loss, unigram)


def test_mlflow_holds_tags_params_histories_and_artifacts(tmp_path, pd_literary_config):
    spec = _spec(tmp_path, pd_literary_config, variant="mhc", n=4, steps=30)
    result = run(spec)
    client = MlflowClient(spec.tracking.uri)
    mlflow_run = client.get_run(result.run_id)
    assert mlflow_run.info.status == "FINISHED"
    tags = mlflow_run.data.tags
    assert tags["run_key"] == spec.run_key and tags["variant"] == "mhc" and tags["n"] == "4"
    assert tags["size"] == "nano" and int(tags["params_total"]) > 0
    # auto resolved to the fused C++ kernels, and the hardware cell says so (overheads never mix backends)
    assert tags["kernel_backend"] == "cpp" and tags["hardware"].endswith("threads, cpp kernels)")
    params = mlflow_run.data.params
    assert params["model.residual.sinkhorn_iters"] == "20" and params["training.lr"] == "0.003"
    losses = client.get_metric_history(result.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 31))
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(result.losses)
    evals = client.get_metric_history(result.run_id, "eval/loss")
    assert sorted(m.step for m in evals) == [20, 30]
    amax = client.get_metric_history(result.run_id, "eval/amax_fwd_layer_max")
    assert all(m.value == pytest.approx(1.0, abs=1e-4) for m in amax)  # mHC rows sum to 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "diagnostics")}
    assert artifacts == {"diagnostics/step_00000020.json", "diagnostics/step_00000030.json"}
    assert {a.path for a in client.list_artifacts(result.run_id, "config")} >= {"config/resolved.json"}


def test_a_finished_run_is_skipped_when_run_again(tmp_path, pd_literary_config):
    spec = _spec(tmp_path, pd_literary_config, steps=5)
    first = run(spec)
    second = run(spec)
    assert second.skipped and second.run_id == first.run_id and second.losses == []


def test_an_absurd_learning_rate_fails_the_run_as_diverged(tmp_path, pd_literary_config):
    spec = _spec(tmp_path, pd_literary_config, steps=60, lr=50.0, warmup_fraction=0.0, grad_clip=1e9)
    result = run(spec)
    assert result.status == "FAILED" and result.failure_reason == "diverged"
    mlflow_run = MlflowClient(spec.tracking.uri).get_run(result.run_id)
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.data.tags["failure_reason"] == "diverged"
    assert int(mlflow_run.data.tags["diverged_step"]) == result.steps


def test_gradient_accumulation_matches_one_big_batch(tmp_path, pd_literary_config):
    one = run(_spec(tmp_path / "a", pd_literary_config, steps=4))
    accumulated = run(_spec(tmp_path / "b", pd_literary_config, steps=4, grad_accum=4))
    assert accumulated.losses == pytest.approx(one.losses, rel=1e-5)


def _final_weights(spec: RunSpec) -> dict[str, torch.Tensor]:
    from models import build_model
    from orchestrator.checkpoint import latest_complete
    from orchestrator.distributed import read_model_state

    step, directory = latest_complete(spec.run_dir)
    assert step == spec.total_steps()
    return read_model_state(directory, build_model(spec.model))


def test_killed_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path, pd_literary_config):
    steps = 60
    reference_spec = _spec(tmp_path / "reference", pd_literary_config, variant="mhc", n=2, steps=steps)
    reference = run(reference_spec)

    spec = _spec(tmp_path / "killed", pd_literary_config, variant="mhc", n=2, steps=steps)
    spec_file = tmp_path / "run.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "train", str(spec_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    target = spec.run_dir / "step-00000030"
    deadline = time.monotonic() + 240
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.exists(), "the subprocess never reached step 30"
    process.send_signal(signal.SIGKILL)  # no polite flag: the process dies mid-step
    process.wait()
    assert not (spec.run_dir / f"step-{steps:08d}").exists()

    resumed = run(spec)
    assert resumed.resumed_from is not None and 30 <= resumed.resumed_from < steps
    assert resumed.losses == reference.losses[resumed.resumed_from :]
    reference_weights, resumed_weights = _final_weights(reference_spec), _final_weights(spec)
    assert reference_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(reference_weights[k], resumed_weights[k]) for k in reference_weights)
    history = MlflowClient(spec.tracking.uri).get_metric_history(resumed.run_id, "train/loss")
    by_step = {m.step: m.value for m in history}  # steps re-run after the checkpoint were logged twice, equal
    assert [by_step[s] for s in range(1, steps + 1)] == pytest.approx(reference.losses)


def test_on_eval_can_stop_a_run_early_as_pruned(tmp_path, pd_literary_config):
    seen = []

    def prune_at_first_eval(step, val_loss):
        seen.append((step, val_loss))
        return True

    spec = _spec(tmp_path, pd_literary_config, steps=60)
    result = run(spec, on_eval=prune_at_first_eval)
    assert result.status == "PRUNED" and result.steps == 20 and len(seen) == 1
    mlflow_run = MlflowClient(spec.tracking.uri).get_run(result.run_id)
    assert mlflow_run.info.status == "KILLED" and mlflow_run.data.tags["failure_reason"] == "pruned"


class _StopTrainingError(Exception):
    """Raised from a step callback: the run stops there as a crash would stop it."""


def test_a_run_resumes_with_other_threads_and_checkpoint_cadence_which_are_tags_not_params(
    tmp_path, pd_literary_config
):
    first_spec = _spec(tmp_path, pd_literary_config, steps=8, checkpoint_every=4, threads=1)

    def stop_at_6(report):
        if report.step == 6:
            raise _StopTrainingError

    with pytest.raises(_StopTrainingError):
        run(first_spec, on_step=stop_at_6)
    resumed_spec = _spec(tmp_path, pd_literary_config, steps=8, checkpoint_every=2, threads=2)
    assert resumed_spec.run_key == first_spec.run_key  # neither field changes the trained weights
    result = run(resumed_spec)
    assert result.status == "FINISHED" and result.resumed_from == 4 and len(result.losses) == 4
    mlflow_run = MlflowClient(first_spec.tracking.uri).get_run(result.run_id)
    assert mlflow_run.data.tags["attempt"] == "2"
    assert mlflow_run.data.tags["training.threads"] == "2"
    assert mlflow_run.data.tags["training.checkpoint_every"] == "2"
    assert mlflow_run.data.tags["data.cache_dir"] == pd_literary_config.cache_dir
    assert mlflow_run.data.tags["resources.cpus"] == str(resumed_spec.resources.cpus)
    params = mlflow_run.data.params
    assert "training.threads" not in params and "training.checkpoint_every" not in params
    assert "data.cache_dir" not in params and "resources.cpus" not in params
    assert params["training.lr"] == str(first_spec.training.lr) and params["model.name"] == "nano"
