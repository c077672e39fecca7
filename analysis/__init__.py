"""Analysis: runs and histories as Polars frames, scaling-law fits, overhead and stability summaries."""
