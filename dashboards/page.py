"""The static HTML dashboard: an index page with the headline numbers and a page per topic, readable offline.

    index = build_dashboard(analyze(uri, "quickstart"), "dashboards/quickstart")

Layout of `out_dir`: ``index.html``, ``scaling.html``, ``comparison.html``, ``training.html``, ``amax.html``,
``overhead.html``, ``stability.html`` (and ``tuning.html`` when the results carry Optuna trials), one
``plotly.min.js`` beside them (Plotly's ``include_plotlyjs="directory"`` layout: written once, not per page,
not from a CDN, so the pages work with no network), and ``data/`` with the results as parquet/JSON.

Each figure is embedded as its Plotly JSON in a ``<script type="application/json" data-figure=...>`` element
and drawn by a few lines of JavaScript at the end of the page: the data a page shows can be read back from the
HTML by anything that parses JSON (tests/dashboards/test_dashboard.py does). Numbers in the text come from
`Results.headline` and the other result frames, formatted, never recomputed.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
import polars as pl
from plotly.offline import get_plotlyjs

from dashboards import figures
from dashboards.tuning import tuning_figure

if TYPE_CHECKING:
    from analysis.report import AnalysisConfig, Results

__all__ = ["PLOTLY_JS", "build_dashboard", "build_experiment_dashboard", "figure_payloads"]

logger = logging.getLogger(__name__)

PLOTLY_JS = "plotly.min.js"
"""The one copy of plotly.js, beside the pages."""

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222;
       background: #fafafa; }
header { background: #24324a; color: #fff; padding: 0.8em 1.5em; }
header a { color: #cfe0ff; margin-right: 1.2em; text-decoration: none; }
header a.current { color: #fff; font-weight: 600; text-decoration: underline; }
main { padding: 1em 1.5em 3em; max-width: 1400px; }
h1 { font-size: 1.5em; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.2em; margin-top: 1.6em; }
.figure { background: #fff; border: 1px solid #ddd; margin: 1em 0; }
.headline { background: #fff; border-left: 4px solid #55a868; padding: 0.6em 1em; margin: 0.8em 0; }
.headline.baseline { border-left-color: #4c72b0; }
.notes li { margin: 0.2em 0; }
table.data { border-collapse: collapse; background: #fff; font-size: 0.9em; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
table.data th { background: #e8ecf4; }
table.data td.text { text-align: left; }
.scroll { overflow-x: auto; max-width: 100%; }
.meta { color: #555; font-size: 0.9em; }
"""

_LOADER = """
for (const element of document.querySelectorAll('script[type="application/json"][data-figure]')) {
  const figure = JSON.parse(element.textContent);
  Plotly.newPlot(element.dataset.figure, figure.data, figure.layout, {responsive: true, displaylogo: false});
}
"""


@dataclass(frozen=True, slots=True)
class _Page:
    name: str
    title: str
    build: Callable[[Results], list[str]]


def build_dashboard(results: Results, out_dir: str | os.PathLike, *, write_data: bool = True) -> Path:
    """Write the dashboard of `results` to `out_dir` (module doc) and return the index page's path.

    Args:
        results: `analysis.report.analyze(...)`'s result (or `Results.read(directory)`).
        out_dir: the dashboard directory (created; existing pages are overwritten).
        write_data: also write the results as parquet/JSON under ``out_dir/data``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
    if write_data:
        results.write(out / "data")
    pages = _pages(results)
    for page in pages:
        body = page.build(results)
        (out / f"{page.name}.html").write_text(_document(results, pages, page, body), encoding="utf-8")
    index = out / "index.html"
    logger.info("dashboard for %s written to %s", results.experiment, index)
    return index


def build_experiment_dashboard(
    tracking_uri: str,
    experiment: str,
    out_dir: str | os.PathLike,
    *,
    config: AnalysisConfig | None = None,
    trials: pl.DataFrame | None = None,
) -> Path:
    """Analyse `experiment` in the MLflow store at `tracking_uri` and write its dashboard (with the results
    under ``out_dir/data``) to `out_dir`; returns the index page's path. What ``ladder dashboard`` runs."""
    from analysis.report import analyze

    results = analyze(tracking_uri, experiment, config=config, trials=trials)
    return build_dashboard(results, out_dir)


def _pages(results: Results) -> list[_Page]:
    pages = [
        _Page("index", "Summary", _index_body),
        _Page("scaling", "Scaling laws", _scaling_body),
        _Page("comparison", "Loss gap & multiplier", _comparison_body),
        _Page("training", "Training curves", _training_body),
        _Page("amax", "Amax", _amax_body),
        _Page("overhead", "Overhead", _overhead_body),
        _Page("stability", "Stability", _stability_body),
    ]
    if results.trials is not None:
        pages.append(_Page("tuning", "Tuning", _tuning_body))
    return pages


# ----------------------------------------------------------------------------------------------------------
# HTML pieces.


def _document(results: Results, pages: Sequence[_Page], page: _Page, body: list[str]) -> str:
    nav = " ".join(
        f'<a href="{p.name}.html"{" class=current" if p is page else ""}>{html.escape(p.title)}</a>' for p in pages
    )
    title = f"{results.experiment} · {page.title}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<style>{_STYLE}</style>",
            f'<script src="{PLOTLY_JS}" charset="utf-8"></script>',
            "</head><body>",
            f"<header><strong>mhc-ladder · {html.escape(results.experiment)}</strong>&nbsp;&nbsp; {nav}</header>",
            "<main>",
            f"<h1>{html.escape(page.title)}</h1>",
            *body,
            "</main>",
            f"<script>{_LOADER}</script>",
            "</body></html>",
        ]
    )


def _figure(fig: go.Figure, name: str) -> str:
    """A figure's div and its JSON (``<`` escaped, so no string in the data can close the script element)."""
    payload = fig.to_json().replace("<", "\\u003c")
    return (
        f'<div class="figure" id="{name}"></div>\n'
        f'<script type="application/json" data-figure="{name}">{payload}</script>'
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}".replace("e+", "e").replace("-", "−")
    return str(value)


def _signed(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+.{digits}f}{suffix}".replace("-", "−")


def _interval(lower: float | None, upper: float | None, digits: int = 3, suffix: str = "") -> str:
    if lower is None or upper is None:
        return "no interval: one seed or run"
    return f"{_signed(lower, digits, suffix)} to {_signed(upper, digits, suffix)}"


def _range(lower: float | None, upper: float | None, digits: int, suffix: str = "") -> str:
    if lower is None or upper is None:
        return "no interval: one seed or run"
    return f"{_fmt(lower, digits)}{suffix} to {_fmt(upper, digits)}{suffix}"


def _table(frame: pl.DataFrame, columns: dict[str, str] | None = None, *, max_rows: int = 200) -> str:
    """A Polars frame as an HTML table (numbers to 4 significant digits)."""
    if frame.is_empty():
        return "<p class=meta>None.</p>"
    columns = columns or {c: c for c in frame.columns}
    shown = frame.select([c for c in columns if c in frame.columns]).head(max_rows)
    head = "".join(f"<th>{html.escape(columns[c])}</th>" for c in shown.columns)
    rows = []
    for row in shown.iter_rows():
        cells = []
        for value in row:
            css = ' class="text"' if isinstance(value, str) else ""
            cells.append(f"<td{css}>{html.escape(_fmt(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class=meta>First {max_rows} of {frame.height} rows.</p>" if frame.height > max_rows else ""
    return (
        f'<div class="scroll"><table class="data"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody>"
        f"</table></div>{more}"
    )


def _size_sorted(frame: pl.DataFrame, results: Results, *first: str, then: Sequence[str] = ()) -> pl.DataFrame:
    """Rows by `first`, then by size from small to large (not alphabetically: p16 after p4), then `then`."""
    order = {size: i for i, size in enumerate(results.sizes.get_column("size").to_list())}
    if frame.is_empty() or "size" not in frame.columns:
        return frame
    return frame.sort(*first, pl.col("size").replace_strict(order, default=len(order)), *then)


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f'<h2>Notes</h2><ul class="notes">{items}</ul>'


# ----------------------------------------------------------------------------------------------------------
# Pages.


def _headline_text(row: dict[str, Any], baseline: str, confidence: float) -> str:
    """One paragraph per arm from its `Results.headline` row."""
    arm = html.escape(row["arm"])
    level = f"{100 * confidence:g}% CI"
    amax = f"Largest composite Amax: forward {_fmt(row['max_amax_fwd'])}, backward {_fmt(row['max_amax_bwd'])}."
    if row["is_baseline"]:
        text = f"<strong>{arm}</strong> (baseline): {row['runs']} runs. {amax}"
        return f'<div class="headline baseline">{text}</div>'
    parts = [f"<strong>{arm}</strong> vs {html.escape(baseline)}: {row['runs']} runs."]
    if row["gap"] is not None:
        parts.append(
            f"At the largest budget both reached ({_fmt(row['budget'], 3)} FLOPs; compute-optimal sizes "
            f"{html.escape(str(row['size']))} vs {html.escape(str(row['baseline_size']))}; "
            f"{row['num_seeds']} "
            f"seeds) the <strong>loss gap is {_signed(row['gap'], 4)}</strong> ({level} "
            f"{_interval(row['gap_lower'], row['gap_upper'], 4)}) and the loss ratio {_fmt(row['ratio'], 5)} "
            f"({_range(row['ratio_lower'], row['ratio_upper'], 5)})."
        )
    else:
        parts.append("No loss gap yet: no seed has finished runs of both at one budget.")
    if row["multiplier"] is not None:
        where = ", extrapolating the baseline's law" if row["multiplier_extrapolated"] else ""
        parts.append(
            f"<strong>Compute multiplier {_fmt(row['multiplier'], 3)}×</strong> ({level} "
            f"{_range(row['multiplier_lower'], row['multiplier_upper'], 3, '×')}{where})."
        )
    else:
        parts.append("No compute multiplier (the baseline's L(C) could not be fitted).")
    if row["step_time_overhead_pct"] is not None:
        parts.append(
            f"<strong>Step-time overhead {_signed(row['step_time_overhead_pct'], 1, '%')}</strong> "
            f"({_interval(row['step_time_lower_pct'], row['step_time_upper_pct'], 1, '%')}) at size "
            f"{html.escape(str(row['step_time_size']))} on {html.escape(str(row['step_time_hardware']))}"
            + (
                f"; peak memory {_signed(row['peak_memory_overhead_pct'], 1, '%')}"
                if row["peak_memory_overhead_pct"] is not None
                else ""
            )
            + "."
        )
    else:
        parts.append("No overhead: no size has finished runs of both on the same hardware.")
    parts.append(amax)
    return f'<div class="headline">{" ".join(parts)}</div>'


def _index_body(results: Results) -> list[str]:
    counts = results.runs.group_by("status").len().sort("status")
    status = ", ".join(f"{n} {s.lower()}" for s, n in counts.iter_rows()) or "no runs"
    body = [
        f"<p class=meta>Experiment <strong>{html.escape(results.experiment)}</strong> from "
        f"<code>{html.escape(results.tracking_uri)}</code>, analysed {html.escape(results.created)}: "
        f"{results.runs.height} runs ({html.escape(status)}). "
        f"Intervals are {100 * results.config.confidence:g}%: "
        "t-intervals over seeds for loss gaps, bootstrap over runs for fits and multipliers, Welch over runs "
        "for overheads.</p>",
        "<h2>Headline</h2>",
    ]
    rows = results.headline.sort("is_baseline", "arm", descending=[True, False]).iter_rows(named=True)
    body += [_headline_text(row, results.config.baseline, results.config.confidence) for row in rows]
    body.append(_notes(results.notes))
    body.append('<p class=meta>Results as parquet/JSON: <a href="data/results.json">data/</a>.</p>')
    return body


def _scaling_body(results: Results) -> list[str]:
    quality = {
        "arm": "arm",
        "law": "law",
        "num_points": "points",
        "num_budgets": "budgets",
        "num_sizes": "sizes",
        "converged": "converged",
        "r2_log": "R² (log)",
        "num_bootstrap_converged": "resamples used",
        "rollout_error": "rollout |L̂/L − 1|",
        "rollout_split_by": "held out by",
        "rollout_split_at": "fitted up to",
        "rollout_held_out": "held-out runs",
    }
    return [
        "<p>L(C) = E + A·C<sup>−α</sup> fitted per arm on its compute-optimal runs (Huber loss in log space, "
        "L-BFGS-B from a grid of starts); bands: bootstrap over runs; dashed: extrapolation.</p>",
        _figure(figures.scaling_figure(results.runs, results.frontier, results.curves), "scaling"),
        "<h2>Fitted parameters</h2>",
        _table(results.law_params),
        "<h2>Fit quality</h2>",
        "<p>The rollout error fits the law without the largest budget (or size) and predicts it.</p>",
        _table(results.law_quality, quality),
        _notes([n for n in results.notes if "L(C)" in n or "Chinchilla" in n]),
    ]


def _comparison_body(results: Results) -> list[str]:
    return [
        _figure(figures.gap_figure(results.gaps, results.frontier_gaps), "gap"),
        _figure(figures.multiplier_figure(results.multipliers), "multiplier"),
        "<h2>Compute-optimal frontier against the baseline's</h2>",
        _table(results.frontier_gaps),
        "<h2>Compute multipliers</h2>",
        _table(results.multipliers),
        "<h2>At matching size</h2>",
        _table(_size_sorted(results.gaps, results, "arm", then=["budget"])),
    ]


def _training_body(results: Results) -> list[str]:
    body = [
        "<p>One line per run, coloured by arm (dotted: not finished); the menu at the top right shows one arm.</p>",
        _figure(figures.loss_curves_figure(results.history, results.runs, metric="train/loss"), "train-loss"),
    ]
    if not results.history.filter(pl.col("metric") == "eval/loss").is_empty():
        body.append(_figure(figures.loss_curves_figure(results.history, results.runs, metric="eval/loss"), "eval-loss"))
    return body


def _amax_body(results: Results) -> list[str]:
    sizes = [s for s in results.sizes.get_column("size").to_list() if s in set(results.amax_summary.get_column("size"))]
    body = [
        "<p>Amax gain: the largest absolute row sum (forward) or column sum (backward) of the residual "
        "mixing "
        "matrix, per sublayer and composed from the input (forward) or to the output (backward).</p>"
    ]
    if not sizes:
        body.append(_figure(figures.amax_depth_figure(results.amax_summary, results.sizes), "amax-depth"))
    for size in reversed(sizes):
        body.append(
            _figure(
                figures.amax_depth_figure(results.amax_summary, results.sizes, size=size),
                f"amax-depth-{size}",
            )
        )
    body.append(_figure(figures.amax_evolution_figure(results.amax_evolution, results.sizes), "amax-evolution"))
    return body


def _overhead_body(results: Results) -> list[str]:
    columns = {
        "size": "size",
        "hardware": "hardware",
        "arm": "arm",
        "quantity": "quantity",
        "num_runs": "runs",
        "num_baseline_runs": "baseline runs",
        "value": "value",
        "baseline_value": "baseline",
        "change_pct": "change %",
        "lower_pct": "lower %",
        "upper_pct": "upper %",
        "status": "status",
        "baseline_hardware": "baseline ran on",
    }
    return [
        "<p>Per run: median step time after warm-up, tokens/s at that median, peak memory. Across runs: "
        "ratio of geometric means with a Welch interval on the log scale. Runs on different hardware are "
        "never pooled.</p>",
        _figure(figures.overhead_figure(results.overhead, results.sizes), "overhead"),
        _table(_size_sorted(results.overhead, results, "quantity", then=["hardware", "arm"]), columns),
    ]


def _stability_body(results: Results) -> list[str]:
    rules = "; ".join(
        f"{r.metric}: > {r.factor:g}× the median of the previous {r.window} values" for r in results.config.spike_rules
    )
    failed = results.stability_runs.filter(pl.col("diverged") | pl.col("failure_reason").is_not_null())
    return [
        f"<p>A spike: {html.escape(rules)} (at least {results.config.spike_rules[0].min_history} of them "
        "seen). Consecutive spiking steps are one event.</p>"
        if results.config.spike_rules
        else "",
        _figure(figures.stability_table(results.stability_arms), "stability"),
        "<h2>Spike events</h2>",
        _table(results.spikes),
        "<h2>Failed and diverged runs</h2>",
        _table(failed),
    ]


_TRIAL_COLUMNS = {
    "number": "trial",
    "state": "state",
    "outcome": "outcome",
    "sinkhorn_iters": "iterations",
    "alpha_init": "α init",
    "convention": "convention",
    "n": "n",
    "lr": "lr",
    "val_loss": "val loss",
    "step_time_overhead": "step-time overhead",
    "ds_error": "DS error",
    "pareto": "Pareto front",
    "last_step": "last step",
    "run_key": "run",
}


def _tuning_body(results: Results) -> list[str]:
    assert results.trials is not None
    trials = results.trials
    searched = [
        c
        for c in ("alpha_init", "convention", "n", "lr")
        if c in trials.columns and trials[c].null_count() < trials.height
    ]
    columns = {
        k: v for k, v in _TRIAL_COLUMNS.items() if k not in ("alpha_init", "convention", "n", "lr") or k in searched
    }
    front = trials.filter(pl.col("pareto")).sort("number") if "pareto" in trials.columns else trials.clear()
    return [
        _figure(tuning_figure(trials), "tuning"),
        "<h2>Pareto front</h2>",
        "<p class=meta>Trials no other COMPLETE trial beats on every objective (for one objective: the best).</p>",
        _table(front, columns),
        "<h2>Every trial</h2>",
        _table(trials.sort("number"), columns, max_rows=500),
    ]


def figure_payloads(page: str) -> dict[str, dict]:
    """The figures embedded in a page's HTML text, by name (their Plotly JSON, parsed)."""
    start_tag = '<script type="application/json" data-figure="'
    found, position = {}, 0
    while (start := page.find(start_tag, position)) >= 0:
        name_end = page.index('">', start)
        end = page.index("</script>", name_end)
        found[page[start + len(start_tag) : name_end]] = json.loads(page[name_end + 2 : end])
        position = end
    return found
