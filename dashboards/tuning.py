"""The tuning panel: an Optuna study's trials against the Sinkhorn iteration count, its Pareto front marked.

    figure = tuning_figure(trials_frame(storage, study))    # orchestrator/tune/results.py's frame

Takes the Polars frame ``trials_frame`` returns (``TRIALS_SCHEMA``; only `TUNING_COLUMNS` are read), so
dashboards/ never imports Optuna. Four panels share the iteration axis: final validation loss, step-time
overhead over the baseline, and the doubly-stochastic error of H_res for the COMPLETE trials (the Pareto
front's trials ringed in every panel: with three objectives the front is a set of trials, not a line), and
every trial's outcome (complete, pruned, diverged, error, duplicate, running) as its own row, so trials that
have no final metrics still show where they were tried. Values are drawn as the frame holds them: the
overhead is a fraction shown on a percent axis.
"""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from dashboards.figures import TEMPLATE, message_figure

__all__ = ["OUTCOME_ORDER", "TUNING_COLUMNS", "tuning_figure"]

TUNING_COLUMNS = (
    "number",
    "state",
    "outcome",
    "sinkhorn_iters",
    "val_loss",
    "step_time_overhead",
    "ds_error",
    "pareto",
)
"""Columns `tuning_figure` reads from a trials frame (orchestrator/tune/results.py ``TRIALS_SCHEMA``)."""
OUTCOME_ORDER = ("complete", "pruned", "diverged", "error", "duplicate", "running", "waiting", "fail")
"""Rows of the outcome panel, top to bottom: a trial's ``outcome``, else its state (lower case)."""
_PANELS = (
    ("val_loss", "final validation loss", "linear", None),
    ("step_time_overhead", "step-time overhead vs baseline", "linear", ".0%"),
    ("ds_error", "doubly-stochastic error of H_res", "log", None),
)
_OUTCOME_STYLE = {  # colour, symbol
    "complete": ("#4c72b0", "circle"),
    "pruned": ("#ccb974", "triangle-down"),
    "diverged": ("#c44e52", "x"),
    "error": ("#c44e52", "x-thin-open"),
    "duplicate": ("#8c8c8c", "square-open"),
}
_FRONT_COLOR = "#c44e52"


def tuning_figure(trials: pl.DataFrame) -> go.Figure:
    """The study's trials against Sinkhorn iterations (module doc); a message where there is nothing to draw."""
    missing = [c for c in TUNING_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"tuning_figure: trials frame lacks columns {missing} (has {trials.columns})")
    title = "Sinkhorn tuning: Optuna trials"
    if trials.is_empty():
        return message_figure(title, "The study has no trials yet.")
    if trials.get_column("sinkhorn_iters").null_count() == trials.height:
        return message_figure(title, "This study does not search the Sinkhorn iteration count.")
    trials = trials.with_columns(pl.coalesce("outcome", pl.col("state").str.to_lowercase()).alias("_outcome")).sort(
        "number"
    )
    complete = trials.filter(pl.col("state") == "COMPLETE")
    front = complete.filter(pl.col("pareto"))
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[label for _, label, _, _ in _PANELS] + ["trial outcomes"],
        horizontal_spacing=0.1,
        vertical_spacing=0.16,
    )
    for index, (metric, label, axis_type, tick_format) in enumerate(_PANELS):
        row, col = divmod(index, 2)
        shown = complete.filter(pl.col(metric).is_not_null())
        for part, name, marker in (
            (shown, "complete", {"color": _OUTCOME_STYLE["complete"][0], "size": 8}),
            (
                front.filter(pl.col(metric).is_not_null()),
                "Pareto front",
                {"color": _FRONT_COLOR, "size": 15, "symbol": "diamond-open", "line": {"width": 2}},
            ),
        ):
            fig.add_trace(
                go.Scatter(
                    x=part.get_column("sinkhorn_iters"),
                    y=part.get_column(metric),
                    mode="markers",
                    marker=marker,
                    name=name,
                    legendgroup=name,
                    showlegend=index == 0,
                    customdata=part.select("number").rows(),
                    hovertemplate=f"trial %{{customdata[0]}}<br>%{{x}} iterations<br>{label} %{{y}}<extra></extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.update_yaxes(title=label, type=axis_type, tickformat=tick_format, row=row + 1, col=col + 1)
    present = trials.get_column("_outcome").unique().to_list()
    order = [o for o in OUTCOME_ORDER if o in present] + sorted(set(present) - set(OUTCOME_ORDER))
    for outcome in order:
        part = trials.filter(pl.col("_outcome") == outcome)
        color, symbol = _OUTCOME_STYLE.get(outcome, ("#937860", "circle-open"))
        fig.add_trace(
            go.Scatter(
                x=part.get_column("sinkhorn_iters"),
                y=part.get_column("_outcome"),
                mode="markers",
                marker={"color": color, "symbol": symbol, "size": 10},
                name=outcome,
                showlegend=outcome != "complete",
                customdata=part.select("number").rows(),
                hovertemplate="trial %{customdata[0]}<br>%{x} iterations<br>%{y}<extra></extra>",
            ),
            row=2,
            col=2,
        )
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], row=2, col=2)
    fig.update_xaxes(title="Sinkhorn iterations")
    fig.update_layout(template=TEMPLATE, title=title, height=760, legend={"orientation": "h", "y": -0.1})
    return fig
