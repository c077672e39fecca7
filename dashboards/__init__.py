"""Dashboards: Plotly figures and self-contained HTML pages built from analysis results."""
