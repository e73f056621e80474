"""Pareto fronts and ties: which variants are worth listing when every cost is measured with noise.

A cost is an interval (a latency ± its measured noise, a size ± a relative tolerance); a variant beats another only
where the intervals do not overlap, so identical networks whose latencies differ by noise are ties, not a ranking.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# the trade-offs: accuracy up against latency down, non-zero size down, and ONNX file bytes down;
# axis -> (cost column, column of its noise half-width or None for exact costs)
PARETO_AXES = {"latency": ("latency_ms_mean", "latency_spread_ms"), "size": ("size_nonzero_mb_mean", None),
               "bytes": ("size_bytes_mean", None)}

def latency_spread(within_ci: float, seed_std: float) -> float:
    """The noise of a latency, for ties: the wider of the median's 95 % CI within a run and the std over seeds.

    The std, not a CI of the mean over seeds: with two seeds Student's t (12.7) would make every latency a tie.
    NaN when neither was measured (one seed of an older experiment): `pareto_front` then uses its relative tolerance.
    """
    return float(np.fmax(within_ci, seed_std))


def pareto_front(table: pd.DataFrame, x: str, y: str = "test_acc_mean", rtol: float = 1e-3,
                 spread: str | None = None) -> pd.DataFrame:
    """The rows no other row beats on both `y` (higher is better) and `x` (lower is better), sorted by `x`.

    Each cost is an interval x ± s: s is the row's `spread` column (e.g. a latency's 95 % CI half-width) where it has
    one, else `rtol` relative. A row is cheaper than another only when the intervals do not overlap; overlapping
    costs are ties. So of several identical networks whose latencies differ by noise none is picked, and a pruned model
    that is four bytes smaller (one weight fewer survived) is not a trade-off worth listing when it is less accurate.
    """
    cand = table.dropna(subset=[x, y])
    if "n" in cand:
        cand = cand[cand["n"] > 0]  # failed / skipped / missing variants are not trade-off points
    xs, ys = cand[x].to_numpy(float), cand[y].to_numpy(float)
    s = np.abs(xs) * rtol
    if spread is not None and spread in cand:
        measured = cand[spread].to_numpy(float)
        s = np.where(np.isnan(measured), s, measured)
    xi, yi, si, xj, yj, sj = xs[:, None], ys[:, None], s[:, None], xs[None, :], ys[None, :], s[None, :]
    no_costlier, cheaper = xj - sj <= xi + si, xj + sj < xi - si
    # j dominates i: no worse on both axes and better on one, cost differences within the noise counting as equal
    dominated = (no_costlier & (yj >= yi) & (cheaper | (yj > yi))).any(axis=1)
    return cand[~dominated].sort_values([x, y], ascending=[True, False], kind="stable")


def fastest(table: pd.DataFrame, x: str = "latency_ms_mean", spread: str = "latency_spread_ms",
            rtol: float = 1e-3) -> pd.DataFrame:
    """The ok rows no other row is faster than beyond the noise (x ± spread, as in `pareto_front`): often several."""
    return pareto_front(table.assign(_flat=0.0), x, "_flat", rtol=rtol, spread=spread).drop(columns="_flat")
