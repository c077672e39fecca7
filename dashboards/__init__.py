"""Dashboards: Plotly figures and the static, offline HTML dashboard built from analysis results.

    from dashboards import build_experiment_dashboard

    index = build_experiment_dashboard("sqlite:///mlruns.db", "quickstart", "dashboards/quickstart")
    # or, keeping the results object: build_dashboard(analysis.report.analyze(uri, name), out_dir)

- `figures`: one function per figure, each drawing Polars frames of `analysis.report.Results` as they are.
- `page`: the pages (index with the headline numbers, scaling, comparison, training, Amax, overhead,
  stability, tuning), plotly.js written once beside them.
"""

from dashboards.figures import (
    OPTUNA_COLUMNS,
    amax_depth_figure,
    amax_evolution_figure,
    arm_colors,
    gap_figure,
    loss_curves_figure,
    multiplier_figure,
    optuna_figure,
    overhead_figure,
    scaling_figure,
    stability_table,
)
from dashboards.page import PLOTLY_JS, build_dashboard, build_experiment_dashboard, figure_payloads

__all__ = [
    "OPTUNA_COLUMNS",
    "PLOTLY_JS",
    "amax_depth_figure",
    "amax_evolution_figure",
    "arm_colors",
    "build_dashboard",
    "build_experiment_dashboard",
    "figure_payloads",
    "gap_figure",
    "loss_curves_figure",
    "multiplier_figure",
    "optuna_figure",
    "overhead_figure",
    "scaling_figure",
    "stability_table",
]
