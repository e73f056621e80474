"""Analysis of a finished (or partial) sweep: trade-off tables, Pareto fronts, metrics_grid.png, results.csv.

Reads result files only; never imports the training stack (torch, Ray). The figure and report names load lazily
(PEP 562), so reading an experiment (`kdsweep status`, the driver's progress) does not import matplotlib.
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import FacetError
from .load import Experiment, axis_value, expand_axes, experiment_from_rows, load_experiment
from .markdown import tradeoffs_markdown
from .pareto import fastest, pareto_front
from .stats import mean_std_ci, t_critical
from .tables import (
    Tables,
    latency_runtime,
    latency_runtimes,
    marginal,
    results_frame,
    seed_rows,
    tradeoff_tables,
    variant_kind,
    variant_table,
)

_LAZY = {"facet_axis": "plots", "metrics_grid": "plots", "save_figure": "plots",
         "analyze": "report", "headline_table": "report", "summary_table": "report"}  # these import matplotlib

__all__ = ["Experiment", "FacetError", "Tables", "analyze", "axis_value", "expand_axes", "experiment_from_rows",
           "facet_axis", "fastest", "headline_table", "latency_runtime", "latency_runtimes", "load_experiment",
           "marginal", "mean_std_ci", "metrics_grid", "pareto_front", "results_frame", "save_figure", "seed_rows",
           "summary_table", "t_critical", "tradeoff_tables", "tradeoffs_markdown", "variant_kind", "variant_table"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
