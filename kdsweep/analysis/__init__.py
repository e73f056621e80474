"""Analysis of a finished (or partial) sweep: trade-off tables, Pareto fronts, metrics_grid.png, results.csv.

Reads result files only; never imports the training stack (torch, Ray).
"""
from __future__ import annotations

from .load import Experiment, axis_value, expand_axes, experiment_from_rows, load_experiment
from .markdown import tradeoffs_markdown
from .plots import FacetError, facet_axis, metrics_grid, save_figure
from .report import analyze, headline_table
from .stats import describe, t_critical
from .tables import (Tables, fastest, latency_runtimes, marginal, pareto_front, results_frame, runtime_label,
                     seed_rows, tradeoff_tables, variant_kind, variant_table)

__all__ = ["Experiment", "FacetError", "Tables", "analyze", "axis_value", "describe", "expand_axes",
           "experiment_from_rows", "facet_axis", "fastest", "headline_table", "latency_runtimes", "load_experiment",
           "marginal", "metrics_grid", "pareto_front", "results_frame", "runtime_label", "save_figure", "seed_rows",
           "t_critical", "tradeoff_tables", "tradeoffs_markdown", "variant_kind", "variant_table"]
