"""Plotly figures of analysis results: scaling curves, loss gap and ratio, compute multiplier, training
curves, Amax over depth and over training, overhead bars and the stability table (the tuning panel: tuning.py).

Each function takes the Polars frames of `analysis.report.Results` it draws and only draws them: every number
on a figure is a value of one of those frames (selected, sorted, never recomputed), so what a page shows is
what the parquet results hold. Where a frame has nothing to draw, the figure says so in words instead of
showing empty axes. Arms keep one colour across figures (`arm_colors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

__all__ = [
    "amax_depth_figure",
    "amax_evolution_figure",
    "arm_colors",
    "gap_figure",
    "loss_curves_figure",
    "message_figure",
    "multiplier_figure",
    "overhead_figure",
    "scaling_figure",
    "stability_table",
]

TEMPLATE = "plotly_white"
_KNOWN_COLORS = {"residual": "#4c72b0", "hc": "#dd8452", "mhc": "#55a868", "mhc-lite": "#8172b3"}
_EXTRA_COLORS = ("#c44e52", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    """A fixed colour per known variant, the rest from a palette in sorted order."""
    extra = iter(_EXTRA_COLORS * (1 + len(arms) // len(_EXTRA_COLORS)))
    return {arm: _KNOWN_COLORS.get(arm) or next(extra) for arm in sorted(arms)}


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def message_figure(title: str, text: str) -> go.Figure:
    """A figure that states why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 15})
    fig.update_layout(template=TEMPLATE, title=title, height=260, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _arms(*frames: pl.DataFrame) -> list[str]:
    return sorted({arm for frame in frames if "arm" in frame.columns for arm in frame.get_column("arm").unique()})


def _error(frame: pl.DataFrame, value: str, lower: str, upper: str) -> dict:
    """Asymmetric error bars from interval columns (nulls draw no bar)."""
    return {
        "type": "data",
        "symmetric": False,
        "array": (frame.get_column(upper) - frame.get_column(value)).to_numpy(),
        "arrayminus": (frame.get_column(value) - frame.get_column(lower)).to_numpy(),
    }


# ----------------------------------------------------------------------------------------------------------
# Scaling.


def scaling_figure(runs: pl.DataFrame, frontier: pl.DataFrame, curves: pl.DataFrame) -> go.Figure:
    """Final loss against training FLOPs per arm: every finished run (filled: on the arm's compute-optimal
    frontier; ×: repeated data), the fitted L(C) with its bootstrap band, dashed where it extrapolates."""
    title = "Scaling: final validation loss vs training compute"
    finished = runs.filter(
        pl.col("status") == "FINISHED", pl.col("final_val_loss").is_not_null(), pl.col("budget").is_not_null()
    )
    if finished.is_empty():
        return message_figure(title, "No finished runs with a budget yet: nothing to fit.")
    on_frontier = frontier.select("arm", "budget", "size").with_columns(pl.lit(True).alias("on_frontier"))
    points = finished.join(on_frontier, on=["arm", "budget", "size"], how="left").with_columns(
        pl.col("on_frontier").fill_null(False)
    )
    colors = arm_colors(_arms(points, curves))
    fig = go.Figure()
    for arm in sorted(colors):
        color = colors[arm]
        curve = curves.filter(pl.col("arm") == arm).sort("flops")
        fitted = not curve.is_empty()
        if fitted:
            fig.add_trace(
                go.Scatter(
                    x=curve.get_column("flops"),
                    y=curve.get_column("upper"),
                    mode="lines",
                    line={"width": 0},
                    legendgroup=arm,
                    showlegend=False,
                    hoverinfo="skip",
                    name=f"{arm} band upper",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=curve.get_column("flops"),
                    y=curve.get_column("lower"),
                    mode="lines",
                    line={"width": 0},
                    fill="tonexty",
                    fillcolor=_rgba(color, 0.18),
                    legendgroup=arm,
                    showlegend=False,
                    hoverinfo="skip",
                    name=f"{arm} band lower",
                )
            )
            for extrapolated, dash in ((False, "solid"), (True, "dash")):
                part = curve.filter(pl.col("extrapolated") == extrapolated)
                if extrapolated and not curve.filter(~pl.col("extrapolated")).is_empty():
                    part = pl.concat([curve.filter(~pl.col("extrapolated")).tail(1), part])  # no gap in the line
                fig.add_trace(
                    go.Scatter(
                        x=part.get_column("flops"),
                        y=part.get_column("estimate"),
                        mode="lines",
                        line={"color": color, "dash": dash, "width": 2},
                        legendgroup=arm,
                        showlegend=False,
                        name=f"{arm} L(C) fit" + (" (extrapolated)" if extrapolated else ""),
                        hovertemplate="C=%{x:.3g}<br>L̂=%{y:.4f}<extra>" + arm + "</extra>",
                    )
                )
        mine = points.filter(pl.col("arm") == arm).sort("final_flops")
        symbols = [
            "x" if rep else ("circle" if front else "circle-open")
            for rep, front in zip(mine.get_column("repeated_data"), mine.get_column("on_frontier"), strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                x=mine.get_column("final_flops"),
                y=mine.get_column("final_val_loss"),
                mode="markers",
                marker={"color": color, "symbol": symbols, "size": 8},
                legendgroup=arm,
                name=arm if fitted else f"{arm} (no fit: too little data)",
                customdata=mine.select("size", "seed", "budget", "run_key").rows(),
                hovertemplate="size %{customdata[0]}, seed %{customdata[1]}<br>budget %{customdata[2]:.3g}"
                "<br>C=%{x:.3g} FLOPs<br>loss %{y:.4f}<br>%{customdata[3]}<extra>" + arm + "</extra>",
            )
        )
    fig.update_xaxes(type="log", title="training FLOPs (the run's own, variant overhead included)")
    fig.update_yaxes(type="log", title="final validation loss")
    fig.update_layout(template=TEMPLATE, title=title, height=520, legend={"title": "arm"})
    return fig


# ----------------------------------------------------------------------------------------------------------
# Comparisons.


def gap_figure(gaps: pl.DataFrame, frontier_gaps: pl.DataFrame) -> go.Figure:
    """The paper's Fig. 6: loss gap (left) and relative loss ratio (right) of each arm against the baseline vs
    budget; solid with t-interval bars: compute-optimal frontier against frontier, paired by seed; dotted: at
    matching size."""
    title = "Loss gap and loss ratio vs the baseline"
    if gaps.is_empty() and frontier_gaps.is_empty():
        return message_figure(title, "No variant run has a baseline run at the same (size, budget, seed) yet.")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss gap  L − L_baseline", "loss ratio  L / L_baseline"))
    colors = arm_colors(_arms(gaps, frontier_gaps))
    for arm, color in colors.items():
        for col, (value, lower, upper) in enumerate(
            (("gap", "gap_lower", "gap_upper"), ("ratio", "ratio_lower", "ratio_upper")), start=1
        ):
            front = frontier_gaps.filter(pl.col("arm") == arm).sort("budget")
            if not front.is_empty():
                fig.add_trace(
                    go.Scatter(
                        x=front.get_column("budget"),
                        y=front.get_column(value),
                        mode="lines+markers",
                        error_y=_error(front, value, lower, upper),
                        line={"color": color, "width": 2.5},
                        name=f"{arm}: frontier",
                        legendgroup=arm,
                        showlegend=col == 1,
                        customdata=front.select("size", "baseline_size", "num_seeds").rows(),
                        hovertemplate="budget %{x:.3g}<br>" + value + " %{y:.4f}<br>sizes %{customdata[0]} vs "
                        "%{customdata[1]}, %{customdata[2]} seeds<extra>" + arm + "</extra>",
                    ),
                    row=1,
                    col=col,
                )
            for size, cell in gaps.filter(pl.col("arm") == arm).sort("budget").group_by("size", maintain_order=True):
                fig.add_trace(
                    go.Scatter(
                        x=cell.get_column("budget"),
                        y=cell.get_column(value),
                        mode="lines+markers",
                        line={"color": color, "dash": "dot", "width": 1},
                        marker={"size": 5},
                        opacity=0.6,
                        name=f"{arm}: size {size[0]}",
                        legendgroup=arm,
                        showlegend=col == 1,
                        hovertemplate="budget %{x:.3g}<br>" + value + " %{y:.4f}<extra>" + f"{arm} {size[0]}</extra>",
                    ),
                    row=1,
                    col=col,
                )
    fig.add_hline(y=0.0, line={"color": "gray", "width": 1}, row=1, col=1)
    fig.add_hline(y=1.0, line={"color": "gray", "width": 1}, row=1, col=2)
    fig.update_xaxes(type="log", title="compute budget (FLOPs)")
    fig.update_layout(template=TEMPLATE, title=title, height=460)
    return fig


def multiplier_figure(multipliers: pl.DataFrame) -> go.Figure:
    """Compute multiplier per arm vs budget with bootstrap intervals (open markers: C* extrapolated)."""
    title = "Compute multiplier: baseline compute reaching the arm's loss, over the budget"
    if multipliers.is_empty():
        return message_figure(title, "No compute multiplier: the baseline has no L(C) fit (too little data).")
    fig = go.Figure()
    for arm, color in arm_colors(_arms(multipliers)).items():
        mine = multipliers.filter(pl.col("arm") == arm).sort("budget")
        fig.add_trace(
            go.Scatter(
                x=mine.get_column("budget"),
                y=mine.get_column("multiplier"),
                mode="lines+markers",
                error_y=_error(mine, "multiplier", "multiplier_lower", "multiplier_upper"),
                marker={
                    "color": color,
                    "size": 9,
                    "symbol": ["circle-open" if e else "circle" for e in mine.get_column("extrapolated")],
                },
                line={"color": color},
                name=arm,
                customdata=mine.select("multiplier_net", "size", "num_seeds").rows(),
                hovertemplate="budget %{x:.3g}<br>multiplier %{y:.3f}×<br>"
                "net of FLOP overhead %{customdata[0]:.3f}×"
                "<br>size %{customdata[1]}, %{customdata[2]} seeds<extra>" + arm + "</extra>",
            )
        )
    fig.add_hline(y=1.0, line={"color": "gray", "width": 1})
    fig.update_xaxes(type="log", title="compute budget (FLOPs)")
    fig.update_yaxes(type="log", title="compute multiplier (×)")
    fig.update_layout(template=TEMPLATE, title=title, height=420)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Training curves.


def loss_curves_figure(
    history: pl.DataFrame, runs: pl.DataFrame, *, metric: str = "train/loss", max_points: int = 150
) -> go.Figure:
    """`metric` against tokens for every run, coloured by arm (dotted: runs that did not finish); the menu
    shows one arm or all.

    All runs of an arm are one trace, separated by gaps (NaN), so a 1,000-run sweep is a handful of traces
    rather than 1,000 for Plotly to build and the browser to draw; hovering names the run. Curves with more
    than `max_points` logged values are thinned to every k-th value (the last is kept).
    """
    title = f"{metric} vs tokens"
    info = runs.select("run_key", "arm", "size", "budget", "seed", "status")
    # Short (it is repeated at every point of a curve) and formatted once per run.
    labels = [
        f"{size} · budget {budget:.3g} · seed {seed}" if budget is not None else f"{size} · seed {seed}"
        for size, budget, seed in info.select("size", "budget", "seed").iter_rows()
    ]
    series = history.filter(pl.col("metric") == metric).join(
        info.with_columns(pl.Series("label", labels, dtype=pl.String)), on="run_key", how="inner"
    )
    thinned = (
        series.sort("run_key", "step")
        .with_columns(pl.int_range(pl.len()).over("run_key").alias("_i"), pl.len().over("run_key").alias("_n"))
        .filter((pl.col("_i") % (pl.col("_n") // max_points + 1) == 0) | (pl.col("_i") == pl.col("_n") - 1))
        .with_columns(
            (pl.col("status") == "FINISHED").alias("finished"),
        )
    )
    # One gap row after each run's last point.
    gaps = thinned.group_by("run_key").agg(
        pl.col("arm").first(), pl.col("finished").first(), (pl.col("step").max() + 1).alias("step")
    )
    rows = pl.concat([thinned.select(*gaps.columns, "tokens", "value", "label"), gaps], how="diagonal")
    rows = rows.sort("run_key", "step")
    colors = arm_colors(_arms(thinned))
    fig = go.Figure()
    trace_arms: list[str] = []
    for arm in sorted(colors):
        for finished in (True, False):
            part = rows.filter(pl.col("arm") == arm, pl.col("finished") == finished)
            if part.is_empty():
                continue
            fig.add_trace(
                go.Scatter(
                    x=part.get_column("tokens").fill_null(float("nan")),
                    y=part.get_column("value").fill_null(float("nan")),
                    customdata=part.get_column("label").fill_null(""),
                    mode="lines",
                    connectgaps=False,
                    line={"color": colors[arm], "width": 1.2, "dash": "solid" if finished else "dot"},
                    name=arm if finished else f"{arm} (not finished)",
                    legendgroup=arm,
                    opacity=0.8,
                    hovertemplate="%{customdata}<br>tokens %{x:.3g}<br>" + metric + " %{y:.4f}<extra></extra>",
                )
            )
            trace_arms.append(arm)
    buttons = [{"label": "all arms", "method": "restyle", "args": [{"visible": [True] * len(trace_arms)}]}]
    buttons += [
        {"label": arm, "method": "restyle", "args": [{"visible": [a == arm for a in trace_arms]}]}
        for arm in sorted(colors)
    ]
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        height=520,
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.12}],
    )
    fig.update_xaxes(type="log", title="tokens")
    fig.update_yaxes(type="log", title=metric)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Amax.


def _pick_size(frame: pl.DataFrame, sizes: pl.DataFrame, size: str | None) -> str | None:
    present = set(frame.get_column("size").unique()) if "size" in frame.columns else set()
    if size is not None:
        return size if size in present else None
    ordered = [s for s in sizes.get_column("size").to_list() if s in present]
    return ordered[-1] if ordered else None


def amax_depth_figure(amax_summary: pl.DataFrame, sizes: pl.DataFrame, *, size: str | None = None) -> go.Figure:
    """Amax gain over depth at the last evaluation, forward (left) and backward (right), per arm at one size
    (default: the largest with profiles): composite solid, per-layer dotted, log axis; means over runs."""
    title = "Amax gain over depth (last evaluation)"
    chosen = _pick_size(amax_summary, sizes, size)
    if chosen is None:
        return message_figure(title, "No diagnostics artifacts (diagnostics/step_*.json) found for these runs.")
    at = amax_summary.filter(pl.col("size") == chosen)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward", "backward"), shared_yaxes=True)
    for arm, color in arm_colors(_arms(at)).items():
        for col, direction in enumerate(("forward", "backward"), start=1):
            for kind, dash in (("composite", "solid"), ("layer", "dot")):
                line = at.filter(pl.col("arm") == arm, pl.col("quantity") == f"{kind}_{direction}").sort("layer")
                if line.is_empty():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=line.get_column("layer"),
                        y=line.get_column("mean"),
                        mode="lines+markers",
                        line={"color": color, "dash": dash},
                        marker={"size": 4},
                        legendgroup=arm,
                        name=f"{arm} {kind}",
                        showlegend=col == 1,
                        customdata=line.select("min", "max", "num_runs").rows(),
                        hovertemplate="sublayer %{x}<br>mean %{y:.4g} (min %{customdata[0]:.4g}, max "
                        "%{customdata[1]:.4g}, %{customdata[2]} runs)<extra>" + f"{arm} {kind}</extra>",
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title="sublayer (residual connection) index")
    fig.update_yaxes(type="log")  # both panels: a shared axis must have one type
    fig.update_yaxes(title="Amax gain", col=1)
    fig.update_layout(template=TEMPLATE, title=f"{title}, size {chosen}", height=440)
    return fig


def amax_evolution_figure(amax_evolution: pl.DataFrame, sizes: pl.DataFrame, *, size: str | None = None) -> go.Figure:
    """Largest composite Amax over training, forward (left) and backward (right), one line per (arm, budget)
    at one size (default: the largest), mean over seeds, log axes."""
    title = "Largest composite Amax over training"
    chosen = _pick_size(amax_evolution, sizes, size)
    if chosen is None:
        return message_figure(title, "No eval/amax_* metrics logged yet.")
    at = amax_evolution.filter(pl.col("size") == chosen)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward", "backward"), shared_yaxes=True)
    for arm, color in arm_colors(_arms(at)).items():
        mine = at.filter(pl.col("arm") == arm)
        budgets = sorted(b for b in mine.get_column("budget").unique().to_list() if b is not None)
        for rank, budget in enumerate(budgets):
            for col, metric in enumerate(("eval/amax_fwd_composite_max", "eval/amax_bwd_composite_max"), start=1):
                line = mine.filter(pl.col("budget") == budget, pl.col("metric") == metric).sort("step")
                if line.is_empty():
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=line.get_column("tokens"),
                        y=line.get_column("mean"),
                        mode="lines+markers",
                        line={"color": color, "width": 1 + 1.5 * rank / max(1, len(budgets) - 1)},
                        marker={"size": 5},
                        name=f"{arm} budget {budget:.3g}",
                        legendgroup=arm,
                        showlegend=col == 1,
                        customdata=line.select("step", "max", "num_runs").rows(),
                        hovertemplate="step %{customdata[0]}, tokens %{x:.3g}<br>"
                        "mean %{y:.4g} (max %{customdata[1]:.4g},"
                        " %{customdata[2]} runs)<extra>" + f"{arm} {budget:.3g}</extra>",
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(type="log", title="tokens")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title="largest composite Amax gain", col=1)
    fig.update_layout(template=TEMPLATE, title=f"{title}, size {chosen} (thicker: larger budget)", height=420)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Overhead and stability.

_QUANTITY_TITLES = {"step_time": "step time", "tokens_per_s": "tokens/s", "peak_memory": "peak memory"}


def overhead_figure(overhead: pl.DataFrame, sizes: pl.DataFrame) -> go.Figure:
    """Change over the baseline in % with Welch intervals, per (size, hardware) and arm; cells where the
    baseline never ran on that hardware are marked, not drawn."""
    title = "Cost over the baseline (same size, same hardware)"
    if overhead.is_empty():
        return message_figure(title, "No finished runs of a variant and the baseline at the same size yet.")
    order = {s: i for i, s in enumerate(sizes.get_column("size").to_list())}
    hardware = sorted(overhead.get_column("hardware").unique().to_list())
    codes = {name: f"hw{i}" for i, name in enumerate(hardware, start=1)}
    label = (
        pl.col("size") if len(hardware) == 1 else pl.format("{} · {}", "size", pl.col("hardware").replace_strict(codes))
    )
    cells = (
        overhead.with_columns(pl.col("size").replace_strict(order, default=len(order)).alias("_order"))
        .sort("_order", "hardware", "arm")
        .with_columns(label.alias("cell"))
    )
    legend = "; ".join(f"{code} = {name}" for name, code in codes.items()) if len(hardware) > 1 else hardware[0]
    quantities = [q for q in _QUANTITY_TITLES if q in set(cells.get_column("quantity"))]
    fig = make_subplots(
        rows=1, cols=len(quantities), subplot_titles=[f"{_QUANTITY_TITLES[q]} change (%)" for q in quantities]
    )
    colors = arm_colors(_arms(cells))
    for col, quantity in enumerate(quantities, start=1):
        for arm, color in colors.items():
            mine = cells.filter(pl.col("quantity") == quantity, pl.col("arm") == arm)
            drawn = mine.filter(pl.col("change_pct").is_not_null())
            if not drawn.is_empty():
                fig.add_trace(
                    go.Bar(
                        x=drawn.get_column("cell"),
                        y=drawn.get_column("change_pct"),
                        marker_color=color,
                        name=arm,
                        legendgroup=arm,
                        showlegend=col == 1,
                        error_y=_error(drawn, "change_pct", "lower_pct", "upper_pct"),
                        customdata=drawn.select("num_runs", "num_baseline_runs", "status").rows(),
                        hovertemplate="%{x}<br>%{y:+.2f}%<br>"
                        "%{customdata[0]} runs vs %{customdata[1]} baseline runs"
                        " (%{customdata[2]})<extra>" + arm + "</extra>",
                    ),
                    row=1,
                    col=col,
                )
            flagged = mine.filter(pl.col("change_pct").is_null())
            if not flagged.is_empty():
                fig.add_trace(
                    go.Scatter(
                        x=flagged.get_column("cell"),
                        y=[0.0] * flagged.height,
                        mode="markers",
                        marker={"symbol": "x", "color": color, "size": 11, "line": {"width": 1}},
                        name=f"{arm}: not compared (no baseline run in this cell)",
                        legendgroup=arm,
                        showlegend=col == 1,
                        customdata=flagged.select("reason").rows(),
                        hovertemplate="%{x}<br>not compared: %{customdata[0]}<extra>" + arm + "</extra>",
                    ),
                    row=1,
                    col=col,
                )
        fig.add_hline(y=0.0, line={"color": "gray", "width": 1}, row=1, col=col)
    fig.update_xaxes(tickangle=0)
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "subtitle": {"text": f"hardware: {legend}"}},
        height=480,
        barmode="group",
        legend={"orientation": "h", "y": -0.22},
    )
    return fig


_STABILITY_COLUMNS = {
    "arm": "arm",
    "runs": "runs",
    "finished": "finished",
    "diverged": "diverged",
    "divergence_rate": "divergence rate",
    "failed_oom": "OOM",
    "failed_crashed": "crashed",
    "failed_killed": "killed",
    "failed_node_died": "node died",
    "failed_other": "other failures",
    "loss_spikes": "loss spikes",
    "runs_with_loss_spikes": "runs with loss spikes",
    "grad_norm_spikes": "grad-norm spikes",
    "runs_with_grad_norm_spikes": "runs with grad-norm spikes",
    "median_diverged_step": "median diverged step",
    "amax_fwd_composite_max": "max Amax fwd",
    "amax_bwd_composite_max": "max Amax bwd",
    "ds_error_max": "max DS error",
}


def stability_table(stability_arms: pl.DataFrame) -> go.Figure:
    """Per arm: runs, divergences and other failures, spikes, largest composite Amax and DS error."""
    title = "Stability per arm"
    if stability_arms.is_empty():
        return message_figure(title, "No runs.")
    columns = [c for c in _STABILITY_COLUMNS if c in stability_arms.columns]
    cells = []
    for c in columns:
        values = stability_arms.get_column(c)
        if values.dtype.is_float():
            cells.append(["–" if v is None else float(f"{v:.4g}") for v in values.to_list()])
        else:
            cells.append(["–" if v is None else v for v in values.to_list()])
    fig = go.Figure(
        go.Table(
            header={
                "values": [f"<b>{_STABILITY_COLUMNS[c]}</b>" for c in columns],
                "fill_color": "#e8ecf4",
                "align": "left",
                "height": 44,
            },
            cells={"values": cells, "align": "left", "height": 28},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        height=150 + 28 * stability_arms.height,
        margin={"t": 50, "b": 10, "l": 10, "r": 10},
    )
    return fig
