"""The HTML dashboard: every page written, plotly.js once beside them, nothing fetched from the network, and
the numbers drawn are the analysis' numbers.

Figures are read back out of the pages (the Plotly JSON each page embeds) and compared with the frames of the
`Results` they were built from (as the dashboard wrote them to ``data/``), so a figure that recomputed,
rounded or mis-assigned a number fails here. The dashboard is `build_experiment_dashboard` (what ``ladder
dashboard`` runs) on the planted MLflow store of tests/analysis/test_runs_compare.py (shared with it, built
once per session). Two pages are also loaded in headless Chromium (Debian's ``chromium`` package), as a person
sees them: every embedded figure must be drawn, and a screenshot must show a plot, not a blank page.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pytest
from plotly.offline import get_plotlyjs

from analysis.report import AnalysisConfig, Results, analyze_frames
from dashboards import PLOTLY_JS, build_dashboard, build_experiment_dashboard, figure_payloads
from orchestrator.tune import trials_frame

HARDWARE = "Intel Xeon Platinum 8480C (2 cores)"  # the planted sweep's (tests/analysis/test_runs_compare.py)
PAGES = ("index", "scaling", "comparison", "training", "amax", "overhead", "stability", "tuning")

if TYPE_CHECKING:  # the fixture's type (conftest modules are not imported by tests)
    from tests.dashboards.conftest import TuningStudy


def _store_helpers() -> Any:
    """tests/analysis/test_runs_compare.py, for its planted store (tests are no package to import from)."""
    path = Path(__file__).resolve().parents[1] / "analysis" / "test_runs_compare.py"
    spec = importlib.util.spec_from_file_location("_planted_mlflow_store", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trials(tuning_study: TuningStudy) -> pl.DataFrame:
    """The trials of the real Optuna study of tests/dashboards/conftest.py."""
    return trials_frame(tuning_study.storage, tuning_study.name)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, trials: pl.DataFrame) -> Path:
    """What ``ladder dashboard`` writes for the planted store (with a tuning study's trials)."""
    store = _store_helpers().synthetic_store(tmp_path_factory)
    config = AnalysisConfig(num_bootstrap=200, chinchilla=False)
    out = tmp_path_factory.mktemp("dashboard")
    index = build_experiment_dashboard(store.uri, store.experiment, out, config=config, trials=trials)
    assert index == out / "index.html"
    return out


@pytest.fixture(scope="module")
def results(dashboard: Path) -> Results:
    """The results the dashboard was built from, as it wrote them beside the pages."""
    return Results.read(dashboard / "data")


def page(dashboard: Path, name: str) -> str:
    return (dashboard / f"{name}.html").read_text(encoding="utf-8")


def values(encoded: Any) -> np.ndarray:
    """A Plotly JSON array: a plain list, or a typed array {"dtype": ..., "bdata": base64}."""
    if isinstance(encoded, dict) and "bdata" in encoded:
        return np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=np.dtype(encoded["dtype"]))
    return np.asarray(encoded, dtype=float)


def trace(figure: dict, name: str, xaxis: str = "x") -> dict:
    found = [t for t in figure["data"] if t.get("name") == name and t.get("xaxis", "x") == xaxis]
    assert len(found) == 1, [t.get("name") for t in figure["data"]]
    return found[0]


# ------------------------------------------------------------------------------------------------------------


def test_every_page_is_written_with_one_plotly_js_beside_them(dashboard: Path) -> None:
    assert sorted(p.stem for p in dashboard.glob("*.html")) == sorted(PAGES)
    scripts = list(dashboard.rglob("*.js"))
    assert scripts == [dashboard / PLOTLY_JS]
    assert scripts[0].read_text(encoding="utf-8") == get_plotlyjs()
    for name in PAGES:
        text = page(dashboard, name)
        assert text.count(f'<script src="{PLOTLY_JS}"') == 1
        assert len(text) < 500_000  # plotly.js is not inlined


def test_pages_load_nothing_from_the_network(dashboard: Path) -> None:
    for name in PAGES:
        for url in re.findall(r'(?:src|href)="([^"]*)"', page(dashboard, name)):
            assert "://" not in url and not url.startswith("//"), (name, url)
            assert (dashboard / url).exists(), (name, url)


def test_scaling_page_draws_the_fitted_curves_and_bands_of_the_results(dashboard: Path, results: Results) -> None:
    figure = figure_payloads(page(dashboard, "scaling"))["scaling"]
    for arm in ("residual", "mhc"):
        curve = results.curves.filter(pl.col("arm") == arm).sort("flops")
        fitted = curve.filter(~pl.col("extrapolated"))
        line = trace(figure, f"{arm} L(C) fit")
        np.testing.assert_array_equal(values(line["x"]), fitted.get_column("flops").to_numpy())
        np.testing.assert_array_equal(values(line["y"]), fitted.get_column("estimate").to_numpy())
        np.testing.assert_array_equal(
            values(trace(figure, f"{arm} band lower")["y"]), curve.get_column("lower").to_numpy()
        )
        np.testing.assert_array_equal(
            values(trace(figure, f"{arm} band upper")["y"]), curve.get_column("upper").to_numpy()
        )
        points = trace(figure, arm)
        finished = results.runs.filter(pl.col("arm") == arm, pl.col("status") == "FINISHED")
        assert sorted(values(points["y"])) == sorted(finished.get_column("final_val_loss").to_list())


def test_gap_page_draws_the_frontier_gaps_with_their_intervals(dashboard: Path, results: Results) -> None:
    figure = figure_payloads(page(dashboard, "comparison"))["gap"]
    gaps = results.frontier_gaps.filter(pl.col("arm") == "mhc").sort("budget")
    gap = trace(figure, "mhc: frontier", xaxis="x")
    np.testing.assert_array_equal(values(gap["x"]), gaps.get_column("budget").to_numpy())
    np.testing.assert_array_equal(values(gap["y"]), gaps.get_column("gap").to_numpy())
    np.testing.assert_allclose(values(gap["error_y"]["array"]), (gaps["gap_upper"] - gaps["gap"]).to_numpy())
    ratio = trace(figure, "mhc: frontier", xaxis="x2")
    np.testing.assert_array_equal(values(ratio["y"]), gaps.get_column("ratio").to_numpy())
    per_size = results.gaps.filter(pl.col("arm") == "mhc", pl.col("size") == "p4").sort("budget")
    np.testing.assert_array_equal(values(trace(figure, "mhc: size p4")["y"]), per_size.get_column("gap").to_numpy())
    multiplier = trace(figure_payloads(page(dashboard, "comparison"))["multiplier"], "mhc")
    np.testing.assert_array_equal(values(multiplier["y"]), results.multipliers.sort("budget")["multiplier"].to_numpy())


def test_overhead_bars_are_the_overhead_frame_and_flagged_cells_are_marked(dashboard: Path, results: Results) -> None:
    figure = figure_payloads(page(dashboard, "overhead"))["overhead"]
    bars = trace(figure, "mhc", xaxis="x")  # step time
    drawn = results.overhead.filter(pl.col("quantity") == "step_time", pl.col("change_pct").is_not_null())
    order = {size: i for i, size in enumerate(results.sizes.get_column("size"))}
    drawn = drawn.sort(pl.col("size").replace_strict(order))
    np.testing.assert_array_equal(values(bars["y"]), drawn.get_column("change_pct").to_numpy())
    flagged = trace(figure, "mhc: not compared (no baseline run in this cell)", xaxis="x")
    assert flagged["x"] == ["p1 · hw2"]
    assert flagged["customdata"] == [[f"the baseline ran at this size only on {HARDWARE}"]]
    assert "hw2 = NVIDIA H100 80GB HBM3" in figure["layout"]["title"]["subtitle"]["text"]


def test_amax_page_draws_the_profile_means_over_depth(dashboard: Path, results: Results) -> None:
    figure = figure_payloads(page(dashboard, "amax"))["amax-depth-p16"]
    summary = results.amax_summary.filter(
        pl.col("arm") == "mhc", pl.col("size") == "p16", pl.col("quantity") == "composite_forward"
    ).sort("layer")
    line = trace(figure, "mhc composite", xaxis="x")
    np.testing.assert_array_equal(values(line["y"]), summary.get_column("mean").to_numpy())
    assert figure["layout"]["yaxis"]["type"] == "log"


def test_training_page_draws_every_run_of_an_arm_as_one_segment_and_has_a_menu_per_arm(
    dashboard: Path, results: Results
) -> None:
    figure = figure_payloads(page(dashboard, "training"))["train-loss"]
    history = results.history.filter(pl.col("metric") == "train/loss").join(
        results.runs.select("run_key", "arm", "status"), on="run_key"
    )
    for arm in ("residual", "mhc"):
        mine = history.filter(pl.col("arm") == arm, pl.col("status") == "FINISHED").sort("run_key", "step")
        line = trace(figure, arm)
        y = values(line["y"])
        assert np.isnan(y).sum() == mine.get_column("run_key").n_unique()  # one gap after each run
        np.testing.assert_array_equal(y[~np.isnan(y)], mine.get_column("value").to_numpy())
    unfinished = trace(figure, "mhc (not finished)")  # the diverged run, dotted
    assert unfinished["line"]["dash"] == "dot"
    labels = [b["label"] for b in figure["layout"]["updatemenus"][0]["buttons"]]
    assert labels == ["all arms", "mhc", "residual"]


def test_index_states_the_headline_numbers_in_words(dashboard: Path, results: Results) -> None:
    text = page(dashboard, "index")
    row = results.headline.filter(pl.col("arm") == "mhc").row(0, named=True)
    assert f"loss gap is {row['gap']:+.4f}".replace("-", "−") in text
    assert f"Compute multiplier {row['multiplier']:.3g}×" in text
    assert f"Step-time overhead {row['step_time_overhead_pct']:+.1f}%" in text
    assert f"forward {row['max_amax_fwd']:.4g}" in text
    assert "NVIDIA H100 80GB HBM3" in text  # the flagged hardware is a note


def test_too_little_data_is_said_in_words_instead_of_drawn(results: Results, tmp_path: Path) -> None:
    one_budget = results.runs.filter(pl.col("budget") == pl.col("budget").min())
    keys = one_budget.get_column("run_key").to_list()
    thin = analyze_frames(
        one_budget,
        results.history.filter(pl.col("run_key").is_in(keys)),
        results.amax_profiles.filter(pl.col("run_key").is_in(keys)),
        config=results.config,
        experiment="thin",
    )
    out = build_dashboard(thin, tmp_path).parent
    multiplier = figure_payloads(page(out, "comparison"))["multiplier"]
    assert multiplier["data"] == [] and "too little data" in multiplier["layout"]["annotations"][0]["text"]
    scaling = figure_payloads(page(out, "scaling"))["scaling"]
    assert {t["name"] for t in scaling["data"]} == {
        "mhc (no fit: too little data)",
        "residual (no fit: too little data)",
    }
    assert "too little data for L(C)" in page(out, "index") and "No compute multiplier" in page(out, "index")


def test_tuning_page_draws_the_study_trials_and_lists_its_pareto_front(
    dashboard: Path, results: Results, tuning_study: TuningStudy
) -> None:
    assert results.trials is not None
    figure = figure_payloads(page(dashboard, "tuning"))["tuning"]
    complete = results.trials.filter(pl.col("state") == "COMPLETE").sort("number")
    points = trace(figure, "complete", "x")
    np.testing.assert_array_equal(values(points["y"]), complete.get_column("val_loss").to_numpy())
    front = trace(figure, "Pareto front", "x2")
    assert {row[0] for row in front["customdata"]} == tuning_study.best_numbers
    table = page(dashboard, "tuning").split("<h2>Pareto front</h2>")[1].split("<h2>")[0]
    assert table.count("<tr>") == 1 + len(tuning_study.best_numbers)  # header + one row per front trial


def test_a_dashboard_rebuilt_from_the_written_data_is_the_same(dashboard: Path, tmp_path: Path) -> None:
    rebuilt = build_dashboard(Results.read(dashboard / "data"), tmp_path, write_data=False).parent
    for name in PAGES:
        assert figure_payloads(page(rebuilt, name)) == figure_payloads(page(dashboard, name)), name


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")


def chromium(*args: str) -> str:
    """Headless Chromium's stdout; `--virtual-time-budget` lets the page's scripts finish first."""
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@needs_chromium
def test_a_browser_draws_every_figure_of_a_page_and_the_screenshot_is_not_blank(
    dashboard: Path, tmp_path: Path
) -> None:
    from PIL import Image

    pages = ("scaling", "tuning")  # lines and bands; four subplots (two pages: Chromium takes seconds each)
    shot = tmp_path / "tuning.png"
    with ThreadPoolExecutor(3) as pool:
        doms = list(pool.map(lambda name: chromium("--dump-dom", str(dashboard / f"{name}.html")), pages))
        pool.submit(chromium, "--window-size=1200,900", f"--screenshot={shot}", str(dashboard / "tuning.html")).result()
    for name, dom in zip(pages, doms, strict=True):
        embedded = len(figure_payloads(page(dashboard, name)))
        assert embedded > 0 and dom.count("plot-container plotly") == embedded, name  # a script error stops the rest
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    background = (pixels.min(axis=1) > 240).mean()
    front_marker = np.all(np.abs(pixels.astype(int) - (0xC4, 0x4E, 0x52)) < 30, axis=1).sum()
    assert background < 0.95 and front_marker > 100, (background, front_marker)  # the Pareto front's red is drawn
