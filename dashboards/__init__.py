"""Dashboards: Plotly figures and the static, offline HTML dashboard built from analysis results.

    from dashboards import build_experiment_dashboard

    index = build_experiment_dashboard("sqlite:///mlruns.db", "quickstart", "dashboards/quickstart")
    # or, keeping the results object: build_dashboard(analysis.report.analyze(uri, name), out_dir)

- `figures`: one function per figure, each drawing Polars frames of `analysis.report.Results` as they are.
- `tuning`: the Optuna panel, drawn from orchestrator/tune/results.py's trials frame (no Optuna import).
- `page`: the pages (index with the headline numbers, scaling, comparison, training, Amax, overhead,
  stability, tuning), plotly.js written once beside them.
"""

from dashboards.figures import (
    amax_depth_figure,
    amax_evolution_figure,
    arm_colors,
    gap_figure,
    loss_curves_figure,
    message_figure,
    multiplier_figure,
    overhead_figure,
    scaling_figure,
    stability_table,
)
from dashboards.page import PLOTLY_JS, build_dashboard, build_experiment_dashboard, figure_payloads
from dashboards.tuning import TUNING_COLUMNS, tuning_figure

__all__ = [
    "PLOTLY_JS",
    "TUNING_COLUMNS",
    "amax_depth_figure",
    "amax_evolution_figure",
    "arm_colors",
    "build_dashboard",
    "build_experiment_dashboard",
    "figure_payloads",
    "gap_figure",
    "loss_curves_figure",
    "message_figure",
    "multiplier_figure",
    "overhead_figure",
    "scaling_figure",
    "stability_table",
    "tuning_figure",
]
