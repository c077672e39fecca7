"""Malformed tuning specs: each fails naming file, line and field, exits non-zero, creates no trial."""

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.tune import TuningError, TuningSpec, load_tuning
from orchestrator.tune.study import make_storage, open_study

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]

VALID = """\
name: bad
data: {source: pd-literary, vocab_size: 2048}
base:
  model: {preset: nano, residual: {variant: mhc, n: 2}}
  training: {budget: {steps: 20}, batch_size: 8, seq_len: 64, eval_every: 10}
search:
  sinkhorn_iters: {low: 0, high: 30}
budget: {n_trials: 4, parallelism: 2}
"""
SINGLE = VALID + "objectives: [val_loss]\n"  # line 9

# (description, spec text, line, text the message must contain)
CASES = [
    ("yaml syntax error", "name: bad\nsearch: {sinkhorn_iters: [0\n", 3, "not valid YAML"),
    ("top level is a list", "- name: bad\n", 1, "top level must be a mapping"),
    ("unknown top-level key", VALID + "trials: 3\n", 9, "tune.trials is not a known field"),
    (
        "missing search",
        VALID.replace("search:\n  sinkhorn_iters: {low: 0, high: 30}\n", ""),
        1,
        "tune.search is required",
    ),
    (
        "empty search",
        VALID.replace("search:\n  sinkhorn_iters: {low: 0, high: 30}\n", "search: {}\n"),
        6,
        "at least one knob must be searched",
    ),
    (
        "unknown knob",
        VALID.replace("sinkhorn_iters: {low: 0, high: 30}", "depth: {low: 1, high: 3}"),
        7,
        "tune.search.depth is not a known field",
    ),
    (
        "range low above high",
        VALID.replace("{low: 0, high: 30}", "{low: 30, high: 0}"),
        7,
        "tune.search.sinkhorn_iters.low (30) must be <= high (0)",
    ),
    (
        "range not a multiple of step",
        VALID.replace("{low: 0, high: 30}", "{low: 0, high: 30, step: 7}"),
        7,
        "tune.search.sinkhorn_iters.high (30) must be low (0) plus a multiple of step (7)",
    ),
    (
        "fractional iterations",
        VALID.replace("{low: 0, high: 30}", "{low: 0.5, high: 30}"),
        7,
        "tune.search.sinkhorn_iters.low (0.5)",
    ),
    (
        "log range from zero",
        VALID.replace("sinkhorn_iters: {low: 0, high: 30}", "lr: {low: 0, high: 0.1, log: true}"),
        7,
        "tune.search.lr.low (0.0) must be > 0 on a log scale",
    ),
    (
        "range reaches an invalid model",
        VALID.replace("sinkhorn_iters: {low: 0, high: 30}", "n: {low: 2, high: 9}"),
        7,
        "tune.search.n.high reaches an invalid run at n=9: model.residual.n (9)",
    ),
    (
        "unknown convention",
        VALID.replace("\nbudget:", "\n  convention: [paper, sinkhorn-v2]\nbudget:"),
        8,
        "tune.search.convention.1 ('sinkhorn-v2')",
    ),
    (
        "deepseek-v4 from zero iterations",
        VALID.replace("\nbudget:", "\n  convention: [paper, deepseek-v4]\nbudget:"),
        7,
        "tune.search.sinkhorn_iters.low (0) must be >= 1 when the convention can be deepseek-v4",
    ),
    (
        "sinkhorn search without mhc",
        VALID.replace("variant: mhc, n: 2", "variant: hc, n: 2"),
        7,
        "tune.search.sinkhorn_iters needs base.model.residual.variant mhc (it is hc)",
    ),
    (
        "base is the plain residual",
        VALID.replace("{variant: mhc, n: 2}", "{variant: residual}").replace(
            "sinkhorn_iters: {low: 0, high: 30}", "lr: {low: 1.0e-3, high: 1.0e-2}"
        ),
        4,
        "tune.base.model.residual.variant (residual) must be hc, mhc or mhc-lite",
    ),
    (
        "unknown preset",
        VALID.replace("preset: nano", "preset: p5"),
        4,
        "tune.base.model.preset (p5) must be one of",
    ),
    (
        "unknown training field",
        VALID.replace("eval_every: 10}", "eval_every: 10, epochs: 3}"),
        5,
        "tune.base.training.epochs is not a known field",
    ),
    ("unknown objective", VALID + "objectives: [val_loss, accuracy]\n", 9, "tune.objectives.1 ('accuracy')"),
    ("repeated objective", VALID + "objectives: [val_loss, val_loss]\n", 9, "must not repeat a metric"),
    (
        "pruner with several objectives",
        VALID + "pruner: {kind: median}\n",
        9,
        "tune.pruner.kind (median) needs a single objective; these are 3",
    ),
    (
        "pruner without intermediate evaluations",
        SINGLE.replace("eval_every: 10", "eval_every: 20"),
        5,
        "tune.base.training.eval_every (20) must be < the steps per trial (20)",
    ),
    (
        "objectives and weights",
        SINGLE + "weights: {val_loss: 1.0}\n",
        10,
        "cannot be combined with objectives",
    ),
    ("negative weight", VALID + "weights: {val_loss: 1.0, ds_error: -2}\n", 9, "tune.weights"),
    ("weight of an unknown metric", VALID + "weights: {perplexity: 1.0}\n", 9, "tune.weights.perplexity"),
    ("zero trials", VALID.replace("n_trials: 4", "n_trials: 0"), 8, "tune.budget.n_trials (0)"),
    ("negative trials", VALID.replace("n_trials: 4", "n_trials: -3"), 8, "tune.budget.n_trials (-3)"),
    ("missing n_trials", VALID.replace("n_trials: 4, ", ""), 8, "tune.budget.n_trials is required"),
    ("zero parallelism", VALID.replace("parallelism: 2", "parallelism: 0"), 8, "tune.budget.parallelism (0)"),
    (
        "negative timeout",
        VALID.replace("parallelism: 2}", "parallelism: 2, timeout_s: -5}"),
        8,
        "tune.budget.timeout_s (-5)",
    ),
    (
        "grace within one heartbeat",
        VALID + "heartbeat: {interval_s: 10, grace_s: 5}\n",
        9,
        "tune.heartbeat.grace_s (5) must be > interval_s (10)",
    ),
    (
        "journal storage",
        VALID + "study: {storage: optuna.log}\n",
        9,
        "tune.study.storage (optuna.log) must be an RDB",
    ),
    ("in-memory storage", VALID + "study: {storage: 'sqlite:///:memory:'}\n", 9, "in-memory database"),
    (
        "population size for tpe",
        VALID + "sampler: {kind: tpe, population_size: 8}\n",
        9,
        "tune.sampler.population_size (8) applies to nsga2 only",
    ),
    ("unknown sampler", VALID + "sampler: {kind: cmaes}\n", 9, "tune.sampler.kind ('cmaes')"),
    (
        "enqueued point outside the range",
        VALID + "enqueue: [{sinkhorn_iters: 50}]\n",
        9,
        "tune.enqueue.0.sinkhorn_iters (50) is outside search.sinkhorn_iters",
    ),
    (
        "enqueued unknown knob",
        VALID + "enqueue: [{lr: 0.01}]\n",
        9,
        "tune.enqueue.0 (lr) is not a searched knob",
    ),
    (
        "more enqueued points than trials",
        VALID.replace("n_trials: 4", "n_trials: 1") + "enqueue: [{sinkhorn_iters: 1}, {sinkhorn_iters: 2}]\n",
        9,
        "must not exceed budget.n_trials (1)",
    ),
]


@pytest.mark.parametrize(("text", "line", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_tuning_spec_fails_naming_line_and_field_and_creates_no_trial(
    tmp_path, monkeypatch, text, line, expected
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["tune", str(path)], terminal_width=400)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"{path}:{line}:" in output, output
    assert " ".join(expected.split()) in output, output
    optuna_db = tmp_path / "optuna.db"  # the default storage, beside the MLflow store
    if optuna_db.exists():
        with sqlite3.connect(optuna_db) as db:
            assert db.execute("select count(*) from trials").fetchone()[0] == 0
    assert not (tmp_path / "mlruns.db").exists()
    assert not (tmp_path / "runs").exists()


def test_there_are_at_least_thirty_malformed_cases():
    assert len(CASES) >= 30


def test_the_valid_spec_resolves_storage_beside_mlflow_and_a_dry_run_prints_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}")
    path = tmp_path / "good.yaml"
    path.write_text(VALID)
    spec = load_tuning(path)
    assert spec.storage_url == f"sqlite:///{tmp_path / 'store' / 'optuna.db'}"
    assert spec.multi_objective and spec.sampler_kind == "nsga2" and spec.pruner_kind == "none"
    assert spec.needs_baseline and spec.baseline_spec().model.residual.variant == "residual"
    trial = spec.trial_spec({"sinkhorn_iters": 7}, number=3)
    assert trial.model.residual.sinkhorn_iters == 7 and trial.tags["optuna_trial"] == "3"
    assert (
        trial.run_key == spec.trial_spec({"sinkhorn_iters": 7}, number=9).run_key
    )  # the number is not identity
    assert trial.run_key != spec.trial_spec({"sinkhorn_iters": 8}, number=3).run_key
    result = runner.invoke(app, ["tune", str(path), "--dry-run"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert f"optuna-dashboard sqlite:///{tmp_path / 'store' / 'optuna.db'} --host 127.0.0.1" in result.output
    assert not (tmp_path / "store").exists()  # a dry run touches no store


def test_weights_make_one_objective_that_tpe_minimises_and_median_prunes(tmp_path):
    spec = TuningSpec(**{**_valid_data(tmp_path), "weights": {"val_loss": 1.0, "step_time_overhead": 0.5}})
    assert spec.directions == ["minimize"] and spec.sampler_kind == "tpe" and spec.pruner_kind == "median"
    assert spec.objective_values({"val_loss": 4.0, "step_time_overhead": 0.2, "ds_error": 9.0}) == [4.1]


def test_the_shipped_sinkhorn_tuning_spec_is_valid():
    spec = load_tuning(REPO / "sweeps" / "sinkhorn_tuning.yaml")
    assert "sinkhorn_iters" in spec.search.knobs() and spec.budget.parallelism == 2
    assert spec.multi_objective and spec.budget.timeout_s is not None and spec.budget.timeout_s <= 15 * 60


def _valid_data(tmp_path: Path) -> dict:
    import yaml

    return {**yaml.safe_load(VALID), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns.db'}"}}


def test_resuming_a_study_with_another_search_space_is_refused_before_any_trial(tmp_path):
    first = TuningSpec(**_valid_data(tmp_path))
    open_study(first, make_storage(first.storage_url, first.heartbeat, retry=True))
    changed = TuningSpec(**{**_valid_data(tmp_path), "search": {"sinkhorn_iters": {"low": 0, "high": 10}}})
    with pytest.raises(TuningError, match="was created with another search"):
        open_study(changed, make_storage(changed.storage_url, changed.heartbeat, retry=True))
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 0
