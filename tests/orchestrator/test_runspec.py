"""RunSpec: run keys identify results, budgets convert at the baseline, YAML errors point at file and line."""

import pytest

from models import ConfigError, flops_per_token, get_preset
from orchestrator.runspec import RunSpec
from orchestrator.yamlio import ConfigFileError, load_config_file


def _spec(**training):
    return RunSpec(model={"preset": "nano", "residual": {"variant": "mhc", "n": 4}}, training=training)


def test_run_key_ignores_key_order_spelled_out_defaults_and_resources():
    short = RunSpec(model={"residual": {"n": 4, "variant": "mhc"}, "preset": "nano"}, training={"lr": 0.01})
    spelled = RunSpec(
        model={
            **get_preset("nano").model_dump(),
            "residual": {"variant": "mhc", "n": 4, "sinkhorn_iters": 20},
        },
        training={"lr": 0.01, "betas": [0.9, 0.95], "threads": 2, "device": "cpu", "checkpoint_every": 7},
        data={"cache_dir": "/elsewhere"},
        storage="other-runs",
        tracking={"uri": "sqlite:///other.db", "experiment": "x"},
    )
    assert short.run_key == spelled.run_key


@pytest.mark.parametrize(
    "change",
    [{"training": {"lr": 0.02}}, {"training": {"seed": 1}}, {"model": {"residual": {"sinkhorn_iters": 10}}}],
)
def test_run_key_changes_with_anything_that_changes_the_result(change):
    base = {"model": {"preset": "nano", "residual": {"variant": "mhc", "n": 4}}, "training": {"lr": 0.01}}
    changed = {
        "model": {**base["model"], **change.get("model", {})},
        "training": {**base["training"], **change.get("training", {})},
    }
    if "residual" in change.get("model", {}):
        changed["model"]["residual"] = {**base["model"]["residual"], **change["model"]["residual"]}
    assert RunSpec(**base).run_key != RunSpec(**changed).run_key


def test_model_vocabulary_follows_the_data():
    spec = RunSpec(model={"preset": "nano"}, data={"vocab_size": 2048})
    assert spec.model.vocab_size == 2048


def test_compute_budget_buys_the_same_steps_for_every_variant():
    steps = set()
    for variant, n in [("residual", 1), ("hc", 4), ("mhc", 4), ("mhc-lite", 4)]:
        spec = RunSpec(
            model={"preset": "nano", "residual": {"variant": variant, "n": n}},
            training={"budget": {"flops": 1e13}, "batch_size": 8, "seq_len": 64},
        )
        steps.add(spec.total_steps())
    baseline = RunSpec(model={"preset": "nano"}, training={"batch_size": 8, "seq_len": 64}).model
    expected = int(1e13 // flops_per_token(baseline, 64).total) // (8 * 64)
    assert steps == {expected}


def test_budget_needs_exactly_one_quantity():
    with pytest.raises(
        ConfigError, match=r"training\.budget\.flops\|tokens\|steps \(flops, steps\) exactly one"
    ):
        _spec(budget={"flops": 1e12, "steps": 3})


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ConfigError, match=r"training\.grad_accum \(3\) must divide batch_size \(16\)"):
        _spec(grad_accum=3)


def test_yaml_errors_name_file_line_field_and_rule(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: nano\n  moe:\n    top_k: 12\ntraining:\n  lr: -1\n  bogus: 3\n")
    with pytest.raises(ConfigFileError) as error:
        load_config_file(path, RunSpec, root="run")
    message = str(error.value)
    assert f"{path}:4: run.model.moe.top_k (12) must be <= num_routed_experts (8)" in message
    assert f"{path}:6: run.training.lr (-1)" in message
    assert f"{path}:7: run.training.bogus is not a known field" in message


def test_yaml_unknown_preset_and_syntax_errors_point_at_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: p5\n")
    with pytest.raises(ConfigFileError, match=rf"{path}:2: run\.model\.preset \(p5\) must be one of"):
        load_config_file(path, RunSpec, root="run")
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigFileError, match=rf"{path}:2: not valid YAML"):
        load_config_file(path, RunSpec, root="run")


def test_yaml_refuses_python_objects(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(ConfigFileError, match="not valid YAML"):
        load_config_file(path, RunSpec, root="run")
