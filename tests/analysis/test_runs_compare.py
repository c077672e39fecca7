"""Runs and histories from a real MLflow store; loss gaps, compute multiplier, overhead and stability on them.

The store is a SQLite MLflow store filled with `MlflowClient` exactly as the trainer fills it (tags, flattened
params, per-step metrics, ``final/*`` metrics, ``diagnostics/step_*.json`` artifacts, a sweep parent run): a
sweep of residual and mhc over 3 sizes × 4 budgets × 2 seeds drawn from a planted truth --

- the baseline's compute-optimal frontier follows L(C) = E + A·C^(−α); off the frontier a size pays
  κ·(distance in size steps)², an isoFLOP parabola;
- mhc reaches at budget C the loss the baseline reaches at `MULTIPLIER`·C, so its loss gap and compute
  multiplier are known exactly, and it costs `STEP_TIME_OVERHEAD` in step time and `MEMORY_OVERHEAD` in
  memory;

-- plus what goes wrong: a diverged run, an OOM, a run resumed with a re-logged step, two mhc runs on hardware
where the baseline never ran, a loss spike and a gradient-norm spike. Metrics are logged at 24 points of each
run (the analysis must not assume one point per optimizer step). The trainer's ``config/resolved.json``
artifact is left out: nothing here reads it, and each artifact call costs ~25 ms.

`synthetic_store` builds the store once per session (under a lock, shared by pytest-xdist workers);
tests/dashboards/test_dashboard.py uses it too. Building it takes ~18 s on one core (MLflow creating its
SQLite schema is ~8 s of that); the analysis ~2 s.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from analysis.compare import fit_laws, loss_gaps
from analysis.report import AnalysisConfig, Results, analyze_frames
from analysis.runs import (
    HISTORY_SCHEMA,
    load_amax_profiles,
    load_experiment,
    load_history,
    load_runs,
)
from analysis.stability import SpikeRule, find_spikes

EXPERIMENT = "synthetic-ladder"
SWEEP = "synthetic-ladder"
SIZES = {"p1": 1.0e6, "p4": 4.0e6, "p16": 16.0e6}  # activated non-embedding parameters
DEPTH = {"p1": 4, "p4": 6, "p16": 8}  # blocks; two residual sublayers each
BUDGETS = (1.0e13, 1.0e14, 1.0e15, 1.0e16)
SEEDS = (0, 1)
E, A, ALPHA = 2.0, 2.0 * 1.0e13**0.15, 0.15  # baseline L(C) on its frontier: 4.0 at 1e13, 2.71 at 1e16
KAPPA = 0.05  # isoFLOP penalty per squared size step off the frontier
FRONTIER_SIZE = (0, 1, 2, 2)  # index into SIZES of the compute-optimal size at each budget
MULTIPLIER = 1.5  # mhc's loss at C = the baseline law at 1.5·C
FLOP_OVERHEAD = 0.03  # mhc's extra FLOPs per token
STEP_TIME_OVERHEAD = 0.07
MEMORY_OVERHEAD = 0.12
LOSS_NOISE = 0.002  # sd of a run's final loss
HARDWARE = "Intel Xeon Platinum 8480C (2 cores)"
OTHER_HARDWARE = "NVIDIA H100 80GB HBM3"
TOKENS_PER_STEP = 16 * 256  # batch 16 × sequence 256
NUM_LOGGED = 24  # metric points per run
AMAX_MHC_FWD, AMAX_MHC_BWD = 0.05, 0.04  # composite Amax grows by this per sublayer (forward / backward)
# The planted events.
SPIKED = ("mhc", "p4", 1.0e14, 1)  # (arm, size, budget, seed): loss ×1.5 at logged point SPIKE_AT
GRAD_SPIKED = ("residual", "p16", 1.0e15, 0)  # grad norm ×8 at logged point SPIKE_AT
SPIKE_AT = 15
RESUMED = ("residual", "p1", 1.0e13, 0)  # re-logs logged point 10's step with RELOGGED_LOSS
RELOGGED_LOSS = 5.0  # near the curve there (~5.0): a re-logged value, not a spike


def baseline_law(C: float | np.ndarray) -> float | np.ndarray:
    return E + A * np.asarray(C) ** -ALPHA


def planted_loss(arm: str, size_index: int, budget_index: int) -> float:
    """The noise-free final loss of a grid point."""
    effective = BUDGETS[budget_index] * (MULTIPLIER if arm == "mhc" else 1.0)
    return float(baseline_law(effective) + KAPPA * (size_index - FRONTIER_SIZE[budget_index]) ** 2)


def planted_gap(size_index: int, budget_index: int) -> float:
    return planted_loss("mhc", size_index, budget_index) - planted_loss("residual", size_index, budget_index)


@dataclass(frozen=True)
class Store:
    uri: str
    experiment: str


# ------------------------------------------------------------------------------------------------------------
# Writing the store the way the trainer does.


def _log_run(
    client,
    experiment_id: str,
    parent_id: str,
    tmp: Path,
    rng: np.random.Generator,
    *,
    arm: str,
    size: str,
    budget: float,
    seed: int,
    hardware: str = HARDWARE,
    loss: float | None = None,
    failure: str | None = None,
) -> str:
    from mlflow.entities import Metric, Param

    size_index = list(SIZES).index(size)
    N = SIZES[size]
    flops_per_token = 6.0 * N * (1.0 + FLOP_OVERHEAD if arm == "mhc" else 1.0)
    total_steps = max(NUM_LOGGED, round(budget / (6.0 * N) / TOKENS_PER_STEP))
    run_key = f"{arm}-{size}-{budget:.0e}-s{seed}-{hardware[:5].replace(' ', '')}"
    tags = {
        "mlflow.parentRunId": parent_id,
        "mlflow.runName": run_key,
        "run_key": run_key,
        "size": size,
        "variant": arm,
        "n": "4" if arm == "mhc" else "1",
        "sinkhorn_iters": "20",
        "seed": str(seed),
        "sweep": SWEEP,
        "budget": repr(budget),
        "params_total": str(int(3 * N)),
        "params_activated": str(int(1.5 * N)),
        "params_activated_non_embedding": str(int(N)),
        "total_steps": str(total_steps),
        "device": "cuda" if hardware == OTHER_HARDWARE else "cpu",
        "hardware": hardware,
        "unigram_entropy": "7.123456",
        "attempt": "1",
    }
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    params = {
        "model.name": size,
        "model.dim": 64 * DEPTH[size],
        "model.num_layers": DEPTH[size],
        "model.residual.variant": arm,
        "model.residual.n": tags["n"],
        "model.residual.sinkhorn_iters": 20,
        "training.lr": 3e-3,
        "training.seq_len": 256,
        "training.batch_size": 16,
        "training.seed": seed,
        "training.budget.flops": budget,
        "training.compile": False,
        "training.betas": "[0.9, 0.95]",
        "training.device": "auto",
    }

    steps = np.unique(np.linspace(1, total_steps, NUM_LOGGED).round().astype(int))
    last = len(steps) if failure is None else SPIKE_AT + 5
    final = planted_loss(arm, size_index, BUDGETS.index(budget)) if loss is None else loss
    final += rng.normal(0.0, LOSS_NOISE)
    progress = steps / total_steps
    train_loss = final * (1.0 + 0.6 * (1.0 - progress) ** 2) * np.exp(rng.normal(0.0, 0.01, steps.size))
    grad_norm = 1.0 * np.exp(rng.normal(0.0, 0.15, steps.size))
    key = (arm, size, budget, seed)
    if key == SPIKED:
        train_loss[SPIKE_AT] *= 1.5
    if key == GRAD_SPIKED:
        grad_norm[SPIKE_AT] *= 8.0
    if failure == "diverged":
        train_loss[last - 1] = float("nan")
    base_time = 0.05 * (N / 1e6) ** 0.8 * (1.0 + STEP_TIME_OVERHEAD if arm == "mhc" else 1.0)
    base_time *= 0.5 if hardware == OTHER_HARDWARE else 1.0
    step_time = base_time * np.exp(rng.normal(0.0, 0.01) + rng.normal(0.0, 0.03, steps.size))
    step_time[0] *= 10.0  # warm-up
    depth = 2 * DEPTH[size]
    metrics, timestamp = [], 1_700_000_000_000

    def log(name: str, value: float, step: int) -> None:
        metrics.append(Metric(name, float(value), timestamp + step, int(step)))

    for i in range(last):
        step = int(steps[i])
        tokens = step * TOKENS_PER_STEP
        for name, value in (
            ("train/loss", train_loss[i]),
            ("train/lr", 3e-3),
            ("train/grad_norm", grad_norm[i]),
            ("train/tokens", tokens),
            ("train/epochs", tokens / 5e9),
            ("train/flops", tokens * flops_per_token),
            ("train/flops_6n", tokens * 6.0 * N),
            ("perf/step_time_s", step_time[i]),
            ("perf/tokens_per_s", TOKENS_PER_STEP / step_time[i]),
            ("perf/flops_per_s", TOKENS_PER_STEP * flops_per_token / step_time[i]),
        ):
            log(name, value, step)
    profiles = {}
    for i in (9, 19, last - 1) if failure is None else (9, 19):
        step = int(steps[i])
        eval_loss = final if i == last - 1 else float(train_loss[i])
        growth_f, growth_b = (AMAX_MHC_FWD, AMAX_MHC_BWD) if arm == "mhc" else (0.0, 0.0)
        scale = (i + 1) / len(steps)  # composite gains grow over training
        profile = {
            "layer_forward": [1.0 + growth_f * scale * 0.2] * depth,
            "layer_backward": [1.0 + growth_b * scale * 0.2] * depth,
            "composite_forward": [1.0 + growth_f * scale * layer for layer in range(depth)],
            "composite_backward": [1.0 + growth_b * scale * (depth - 1 - layer) for layer in range(depth)],
            "ds_error": [1e-4 if arm == "mhc" else 0.0] * depth,
            "expert_load": [{"max_violation": 0.2, "cv": 0.1, "dead_experts": 0}] * DEPTH[size],
        }
        profiles[step] = profile
        for name, value in (
            ("eval/loss", eval_loss),
            ("eval/amax_fwd_composite_max", max(profile["composite_forward"])),
            ("eval/amax_bwd_composite_max", max(profile["composite_backward"])),
            ("eval/amax_fwd_layer_max", max(profile["layer_forward"])),
            ("eval/amax_bwd_layer_max", max(profile["layer_backward"])),
            ("eval/ds_error_max", max(profile["ds_error"])),
            ("eval/expert_max_violation", 0.2),
            ("eval/expert_cv", 0.1),
            ("eval/dead_experts", 0.0),
        ):
            log(name, value, step)
    if failure is None:
        for name, value in (
            ("final/val_loss", final),
            ("final/wall_time_s", float(step_time.sum())),
            (
                "final/peak_memory_mb",
                500.0
                * (N / 1e6) ** 0.5
                * (1.0 + MEMORY_OVERHEAD if arm == "mhc" else 1.0)
                * np.exp(rng.normal(0.0, 0.005)),
            ),
            ("final/flops", total_steps * TOKENS_PER_STEP * flops_per_token),
            ("final/tokens", total_steps * TOKENS_PER_STEP),
        ):
            log(name, value, total_steps)
    param_list = [Param(k, str(v)) for k, v in params.items()]
    for lo in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[lo : lo + 1000], params=param_list if lo == 0 else [])
    if key == RESUMED:  # a resumed run re-logs a step; the later value wins
        client.log_batch(
            run_id, metrics=[Metric("train/loss", RELOGGED_LOSS, timestamp + 10**9, int(steps[10]))]
        )
    folder = tmp / run_id
    folder.mkdir()
    for step, profile in profiles.items():
        (folder / f"step_{step:08d}.json").write_text(json.dumps(profile))
    client.log_artifacts(run_id, str(folder), "diagnostics")
    if failure is not None:
        tags = {"failure_reason": failure} | (
            {"diverged_step": str(int(steps[last - 1]))} if failure == "diverged" else {}
        )
        for name, value in tags.items():
            client.set_tag(run_id, name, value)
    client.set_terminated(run_id, "FINISHED" if failure is None else "FAILED")
    return run_id


def build_synthetic_store(root: Path) -> Store:
    """Fill a fresh SQLite MLflow store under `root` with the planted sweep (module doc)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"mlflow.runName": SWEEP, "sweep_parent": "true"})
    parent_id = parent.info.run_id
    rng = np.random.default_rng(20240601)
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {
            "client": client,
            "experiment_id": experiment_id,
            "parent_id": parent_id,
            "tmp": Path(tmp),
            "rng": rng,
        }
        for arm in ("residual", "mhc"):
            for size in SIZES:
                for budget in BUDGETS:
                    for seed in SEEDS:
                        _log_run(**kwargs, arm=arm, size=size, budget=budget, seed=seed)
        _log_run(**kwargs, arm="mhc", size="p1", budget=BUDGETS[0], seed=2, failure="diverged")
        _log_run(**kwargs, arm="residual", size="p16", budget=BUDGETS[0], seed=2, failure="oom")
        for seed in (10, 11):
            _log_run(**kwargs, arm="mhc", size="p1", budget=BUDGETS[0], seed=seed, hardware=OTHER_HARDWARE)
    client.set_terminated(parent_id, "FINISHED")
    return Store(uri=uri, experiment=EXPERIMENT)


def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The planted store, built once per test session and shared by pytest-xdist workers (under a lock)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "synthetic-mlflow-store-v1"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "done").exists():
            # What a build that failed part-way left behind.
            (root / "mlflow.db").unlink(missing_ok=True)
            shutil.rmtree(root / "artifacts", ignore_errors=True)
            build_synthetic_store(root)
            (root / "done").touch()
    return Store(uri=f"sqlite:///{root / 'mlflow.db'}", experiment=EXPERIMENT)


# ------------------------------------------------------------------------------------------------------------
# Fixtures.

NUM_GRID_RUNS = 2 * len(SIZES) * len(BUDGETS) * len(SEEDS)
NUM_RUNS = NUM_GRID_RUNS + 4  # diverged, oom, two on other hardware (the sweep parent is not a run)
CONFIG = AnalysisConfig(num_bootstrap=300, chinchilla=False)  # the surface: its own test, with few starts


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return synthetic_store(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(store: Store) -> tuple[pl.DataFrame, pl.DataFrame]:
    return load_experiment(store.uri, store.experiment)


@pytest.fixture(scope="module")
def runs(loaded: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    return loaded[0]


@pytest.fixture(scope="module")
def results(store: Store, loaded: tuple[pl.DataFrame, pl.DataFrame]) -> Results:
    runs, history = loaded
    profiles = load_amax_profiles(store.uri, store.experiment, runs=runs)
    return analyze_frames(
        runs, history, profiles, config=CONFIG, experiment=store.experiment, tracking_uri=store.uri
    )


def run_row(runs: pl.DataFrame, arm: str, size: str, budget: float, seed: int) -> dict:
    match = runs.filter(
        pl.col("arm") == arm,
        pl.col("size") == size,
        pl.col("budget") == budget,
        pl.col("seed") == seed,
        pl.col("hardware") == HARDWARE,
    )
    assert match.height == 1
    return match.row(0, named=True)


# ------------------------------------------------------------------------------------------------------------
# Loading.


def test_load_runs_gives_one_typed_row_per_run_without_the_sweep_parent(store: Store) -> None:
    runs = load_runs(store.uri, store.experiment)
    assert runs.height == NUM_RUNS
    assert runs.get_column("run_key").n_unique() == NUM_RUNS
    assert runs.schema["budget"] == pl.Float64 and runs.schema["seed"] == pl.Int64
    assert runs.schema["params_activated_non_embedding"] == pl.Int64
    assert runs.schema["final_val_loss"] == pl.Float64 and runs.schema["repeated_data"] == pl.Boolean
    # params come typed under their dotted names
    assert runs.schema["model.dim"] == pl.Int64 and runs.schema["training.lr"] == pl.Float64
    assert runs.schema["training.compile"] == pl.Boolean and runs.schema["training.betas"] == pl.String
    assert runs.schema["training.device"] == pl.String
    row = run_row(runs, "mhc", "p4", 1.0e15, 1)
    assert row["status"] == "FINISHED" and row["failure_reason"] is None
    assert row["tokens_per_step"] == TOKENS_PER_STEP
    assert row["final_flops"] == pytest.approx(row["final_tokens"] * 6.0 * SIZES["p4"] * (1 + FLOP_OVERHEAD))
    assert row["best_val_loss"] == pytest.approx(row["final_val_loss"])
    assert set(runs.get_column("arm").unique()) == {"residual", "mhc"}


def test_failed_runs_are_carried_with_their_failure_reason(runs: pl.DataFrame) -> None:
    failed = runs.filter(pl.col("status") == "FAILED").sort("failure_reason")
    assert failed.get_column("failure_reason").to_list() == ["diverged", "oom"]
    diverged = failed.row(0, named=True)
    assert diverged["arm"] == "mhc" and diverged["diverged_step"] is not None
    assert diverged["final_val_loss"] is None and math_isnan(diverged["last_train_loss"])


def math_isnan(value: float | None) -> bool:
    return value is not None and value != value


def test_load_history_is_long_format_with_tokens_and_flops_at_each_step(
    store: Store, runs: pl.DataFrame
) -> None:
    history = load_history(store.uri, store.experiment, ["train/loss", "perf/step_time_s"])
    assert history.schema == pl.Schema(HISTORY_SCHEMA)
    assert set(history.get_column("metric").unique()) == {"train/loss", "perf/step_time_s"}
    assert history.get_column("run_key").n_unique() == NUM_RUNS  # failed runs logged steps before failing too
    row = run_row(runs, "mhc", "p16", 1.0e16, 0)
    mine = history.filter(pl.col("run_key") == row["run_key"], pl.col("metric") == "train/loss")
    assert mine.height == NUM_LOGGED
    last = mine.row(-1, named=True)
    assert last["step"] == row["total_steps"]
    assert last["tokens"] == pytest.approx(row["final_tokens"])
    assert last["flops"] == pytest.approx(row["final_flops"])


def test_a_relogged_step_appears_once_with_the_value_logged_last(
    loaded: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    runs, history = loaded
    row = run_row(runs, *RESUMED)
    mine = history.filter(pl.col("run_key") == row["run_key"], pl.col("metric") == "train/loss")
    assert mine.height == mine.get_column("step").n_unique() == NUM_LOGGED
    assert mine.get_column("value")[10] == RELOGGED_LOSS
    assert history.select("run_key", "metric", "step").is_duplicated().sum() == 0


def test_the_sql_and_mlflow_api_readers_give_identical_frames(
    store: Store, loaded: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    """The SQL reader (what "auto" picks for this SQLite store) against `MlflowClient` (what a tracking server
    gets): same runs, same history, NaN/inf and the re-logged step included."""
    runs, history = loaded
    api_runs, api_history = load_experiment(store.uri, store.experiment, reader="api")
    assert_frame_equal(api_runs, runs)
    assert_frame_equal(api_history, history)


def test_nonfinite_losses_come_back_non_finite(loaded: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    runs, history = loaded
    key = runs.filter(pl.col("failure_reason") == "diverged").get_column("run_key")[0]
    values = history.filter(pl.col("run_key") == key, pl.col("metric") == "train/loss").get_column("value")
    assert values.is_nan().sum() == 1 and values[-1] != values[-1]


def test_step_time_statistics_skip_the_warm_up_step(
    runs: pl.DataFrame, loaded: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    history = loaded[1]
    row = run_row(runs, "residual", "p4", 1.0e14, 0)
    times = history.filter(pl.col("run_key") == row["run_key"], pl.col("metric") == "perf/step_time_s")
    assert times.get_column("value")[0] > 5 * row["step_time_s"]  # the warm-up step is slow ...
    assert row["num_timed_steps"] < times.height  # ... and left out
    assert row["step_time_s"] == pytest.approx(times.get_column("value")[3:].median(), rel=0.05)
    assert row["tokens_per_s"] == pytest.approx(TOKENS_PER_STEP / row["step_time_s"])


def test_amax_profiles_are_read_from_the_last_diagnostics_artifact(store: Store, runs: pl.DataFrame) -> None:
    profiles = load_amax_profiles(store.uri, store.experiment, runs=runs)
    row = run_row(runs, "mhc", "p16", 1.0e16, 0)
    mine = profiles.filter(pl.col("run_key") == row["run_key"])
    assert mine.get_column("step").unique().to_list() == [row["total_steps"]]
    forward = mine.filter(pl.col("quantity") == "composite_forward").sort("layer").get_column("value")
    depth = 2 * DEPTH["p16"]
    assert forward.len() == depth
    assert forward[-1] == pytest.approx(1.0 + AMAX_MHC_FWD * (depth - 1))
    assert mine.filter(pl.col("quantity") == "dead_experts").height == DEPTH["p16"]


# ------------------------------------------------------------------------------------------------------------
# Comparisons.


def test_loss_gap_and_ratio_recover_the_planted_ones_within_their_intervals(runs: pl.DataFrame) -> None:
    gaps = loss_gaps(runs)
    assert gaps.height == len(SIZES) * len(BUDGETS)  # the other-hardware runs have no baseline seed to pair
    assert (gaps.get_column("num_seeds") == len(SEEDS)).all()
    for row in gaps.iter_rows(named=True):
        size_index, budget_index = list(SIZES).index(row["size"]), BUDGETS.index(row["budget"])
        truth = planted_gap(size_index, budget_index)
        assert row["gap_lower"] <= truth <= row["gap_upper"]
        assert row["gap"] == pytest.approx(truth, abs=4 * LOSS_NOISE)
        truth_ratio = planted_loss("mhc", size_index, budget_index) / planted_loss(
            "residual", size_index, budget_index
        )
        assert row["ratio_lower"] <= truth_ratio <= row["ratio_upper"]


def test_frontier_picks_the_planted_compute_optimal_sizes(results: Results) -> None:
    for arm in ("residual", "mhc"):
        sizes = results.frontier.filter(pl.col("arm") == arm).sort("budget").get_column("size").to_list()
        assert sizes == [list(SIZES)[i] for i in FRONTIER_SIZE]


def test_compute_multiplier_recovers_the_planted_one(results: Results) -> None:
    mult = results.multipliers.sort("budget")
    assert mult.height == len(BUDGETS)
    for row in mult.iter_rows(named=True):
        assert row["multiplier"] == pytest.approx(MULTIPLIER, rel=0.03)
        assert row["multiplier_lower"] < row["multiplier"] < row["multiplier_upper"]
        assert row["multiplier_net"] == pytest.approx(row["multiplier"] * row["budget"] / row["flops"])
    top = mult.row(-1, named=True)
    assert top["multiplier_lower"] <= MULTIPLIER <= top["multiplier_upper"]
    assert top["extrapolated"]  # 1.5 × the largest budget is beyond the baseline's fitted range


def test_baseline_law_recovers_the_planted_exponent_with_an_interval_covering_it(results: Results) -> None:
    alpha = results.law_params.filter(
        pl.col("arm") == "residual", pl.col("law") == "compute", pl.col("param") == "alpha"
    )
    row = alpha.row(0, named=True)
    assert row["lower"] <= ALPHA <= row["upper"]
    assert row["estimate"] == pytest.approx(ALPHA, abs=0.03)
    quality = results.law_quality.filter(pl.col("arm") == "residual", pl.col("law") == "compute").row(
        0, named=True
    )
    assert quality["converged"] and quality["rollout_error"] < 0.01 and quality["num_points"] == 8


def test_too_little_data_for_a_law_is_a_note_not_a_fit(runs: pl.DataFrame) -> None:
    laws = fit_laws(runs.filter(pl.col("budget") <= BUDGETS[1]), num_bootstrap=10, chinchilla=False)
    assert laws.params.is_empty() and laws.curves.is_empty() and not laws.bootstraps
    needs = "(needs >= 3 budgets and >= 4 runs)"
    assert sorted(laws.notes) == [
        f"mhc: too little data for L(C): 6 frontier runs over 2 budgets {needs}",
        f"residual: too little data for L(C): 4 frontier runs over 2 budgets {needs}",
    ]


def test_the_chinchilla_surface_is_fitted_per_arm_with_intervals(runs: pl.DataFrame) -> None:
    # A few starts around the planted region instead of Chinchilla's 4,500 (10 s per arm).
    starts = np.array([[a, b, e, 0.3, 0.3] for a in (2.0, 5.0) for b in (2.0, 5.0) for e in (0.0, 0.7)])
    laws = fit_laws(runs, num_bootstrap=10, num_bootstrap_surface=20, surface_starts=starts)
    surface = laws.params.filter(pl.col("law") == "chinchilla")
    assert surface.height == 2 * 5 and surface.get_column("lower").is_not_null().all()
    quality = laws.quality.filter(pl.col("law") == "chinchilla")
    assert quality.get_column("num_sizes").to_list() == [3, 3] and (quality.get_column("r2_log") > 0.95).all()
    assert any("no Chinchilla rollout" in note for note in laws.notes)  # 3 sizes: holding one out leaves 2


# ------------------------------------------------------------------------------------------------------------
# Overhead.


def test_overhead_recovers_the_planted_step_time_and_memory_cost(results: Results) -> None:
    ok = results.overhead.filter(pl.col("hardware") == HARDWARE, pl.col("status") == "ok")
    assert ok.get_column("size").n_unique() == len(SIZES)
    for quantity, planted in (
        ("step_time", STEP_TIME_OVERHEAD),
        ("peak_memory", MEMORY_OVERHEAD),
        ("tokens_per_s", 1 / (1 + STEP_TIME_OVERHEAD) - 1),
    ):
        for row in ok.filter(pl.col("quantity") == quantity).iter_rows(named=True):
            assert row["lower_pct"] <= 100 * planted <= row["upper_pct"], (quantity, row)
            assert row["change_pct"] == pytest.approx(100 * planted, abs=1.5)


def test_overhead_on_hardware_without_a_baseline_is_flagged_not_mixed(results: Results) -> None:
    other = results.overhead.filter(pl.col("hardware") == OTHER_HARDWARE)
    assert other.height == 3  # step time, tokens/s, memory: mhc at p1
    assert (other.get_column("status") == "no_baseline_on_this_hardware").all()
    assert other.get_column("change_pct").is_null().all()
    assert (other.get_column("baseline_hardware") == HARDWARE).all()
    p1 = results.overhead.filter(
        pl.col("size") == "p1", pl.col("hardware") == HARDWARE, pl.col("quantity") == "step_time"
    )
    assert p1.row(0, named=True)["num_runs"] == len(BUDGETS) * len(SEEDS)  # the fast runs stayed out
    assert p1.row(0, named=True)["size_on_several_hardware"]
    assert any(OTHER_HARDWARE in note for note in results.notes)


# ------------------------------------------------------------------------------------------------------------
# Stability.


def test_the_planted_loss_and_grad_norm_spikes_are_found_and_nothing_else(
    results: Results, runs: pl.DataFrame
) -> None:
    spiked, grad_spiked = run_row(runs, *SPIKED), run_row(runs, *GRAD_SPIKED)
    loss = results.spikes.filter(pl.col("metric") == "train/loss")
    assert loss.get_column("run_key").to_list() == [spiked["run_key"]]
    assert loss.row(0, named=True)["peak_ratio"] > 1.2
    grad = results.spikes.filter(pl.col("metric") == "train/grad_norm")
    assert grad.get_column("run_key").to_list() == [grad_spiked["run_key"]]
    by_arm = {row["arm"]: row for row in results.stability_arms.iter_rows(named=True)}
    assert by_arm["mhc"]["loss_spikes"] == 1 and by_arm["residual"]["loss_spikes"] == 0
    assert by_arm["residual"]["grad_norm_spikes"] == 1


def test_a_divergence_and_an_oom_are_counted_per_arm(results: Results) -> None:
    by_arm = {row["arm"]: row for row in results.stability_arms.iter_rows(named=True)}
    assert by_arm["mhc"]["diverged"] == 1 and by_arm["residual"]["diverged"] == 0
    assert by_arm["residual"]["failed_oom"] == 1 and by_arm["mhc"]["failed_oom"] == 0
    assert by_arm["mhc"]["divergence_rate"] == pytest.approx(1 / (len(SIZES) * len(BUDGETS) * len(SEEDS) + 3))


def test_a_spike_needs_history_and_a_non_finite_value_is_not_a_spike() -> None:
    values = [5.0, 9.0, 4.0, 3.9, 9.0, 3.7, 3.6, float("inf"), 3.5, 20.0, 21.0, 3.4]
    history = pl.DataFrame(
        {
            "run_key": "r",
            "run_id": "r",
            "step": list(range(1, 13)),
            "tokens": 0.0,
            "flops": 0.0,
            "metric": "train/loss",
            "value": values,
        }
    )
    events = find_spikes(history, SpikeRule(metric="train/loss", factor=1.2, window=4, min_history=3))
    # step 5 (9.0 over a median of 4.5) and steps 10-11 as one event peaking at 10 (20.0 over 3.65); step 2
    # (9.0 over 5.0) has too little history; inf is not a spike
    assert events.select("start_step", "end_step", "peak_step").rows() == [(5, 5, 5), (10, 11, 10)]


def test_amax_summary_gives_the_planted_profile_maximum_per_arm(results: Results) -> None:
    head = {row["arm"]: row for row in results.headline.iter_rows(named=True)}
    assert head["mhc"]["max_amax_fwd"] == pytest.approx(1.0 + AMAX_MHC_FWD * (2 * DEPTH["p16"] - 1))
    assert head["mhc"]["max_amax_bwd"] == pytest.approx(1.0 + AMAX_MHC_BWD * (2 * DEPTH["p16"] - 1))
    assert head["residual"]["max_amax_fwd"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------------
# Headline and round trip.


def test_headline_reports_the_largest_budget_gap_multiplier_and_overhead(results: Results) -> None:
    row = results.headline.filter(pl.col("arm") == "mhc").row(0, named=True)
    assert row["budget"] == BUDGETS[-1] and row["size"] == "p16"
    assert row["gap_lower"] <= planted_gap(2, 3) <= row["gap_upper"]
    assert row["multiplier_lower"] <= MULTIPLIER <= row["multiplier_upper"]
    assert row["step_time_size"] == "p16" and row["step_time_hardware"] == HARDWARE
    assert row["step_time_overhead_pct"] == pytest.approx(100 * STEP_TIME_OVERHEAD, abs=1.5)


def test_results_written_to_disk_read_back_equal(results: Results, tmp_path: Path) -> None:
    written = results.write(tmp_path)
    assert (tmp_path / "gaps.parquet").exists() and written["results"].name == "results.json"
    back = Results.read(tmp_path)
    assert back.config == results.config and back.notes == results.notes
    assert back.gaps.equals(results.gaps) and back.headline.equals(results.headline)
    assert back.runs.equals(results.runs)
