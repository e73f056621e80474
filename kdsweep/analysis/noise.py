"""How sure an accuracy is: a 95 % interval per variant, and which variants tie with the best of their kind.

With two or more seeds the interval is the mean's (Student's t over seeds); with one seed it is the binomial (Wilson)
interval of that accuracy on the test set, the least noise a single run has. Variants whose intervals overlap the best
one's are ties, as latencies within their noise are (`pareto`): a ranking inside the noise names no winner.
"""
from __future__ import annotations

import math

import pandas as pd

from .. import storage
from ..config import load_config
from ..errors import ConfigError
from ..plan import n_test_images
from .load import Experiment
from .stats import wilson


def fallback_test_images(exp: Experiment) -> int | None:
    """Test images of an experiment whose rows predate the `test_images` column, from its config (None if unknown)."""
    try:
        return n_test_images(load_config(storage.join(exp.uri, "config.yaml")))
    except (ConfigError, OSError):
        return None


def add_accuracy_intervals(table: pd.DataFrame, fallback: int | None = None) -> pd.DataFrame:
    """`test_acc_lo`, `test_acc_hi` and `test_acc_ci_kind` (`seeds` | `binomial`) for every variant with an accuracy."""
    if fallback is not None:  # rows from before the column: the config's test-set size
        table = table.assign(test_images=table.get("test_images", pd.Series(math.nan, index=table.index))
                             .fillna(fallback))
    lo, hi, kind = [], [], []
    for r in table.itertuples():
        n_images = getattr(r, "test_images", math.nan)
        if r.n >= 2 and r.test_acc_ci95 == r.test_acc_ci95:  # an accuracy lies in [0, 1]: so does its interval
            lo.append(max(0.0, r.test_acc_mean - r.test_acc_ci95))
            hi.append(min(1.0, r.test_acc_mean + r.test_acc_ci95))
            kind.append("seeds")
        elif r.n == 1 and n_images:
            a, b = wilson(r.test_acc_mean, n_images)
            lo.append(a)
            hi.append(b)
            kind.append("binomial")
        else:
            lo.append(math.nan)
            hi.append(math.nan)
            kind.append(None)
    return table.assign(test_acc_lo=lo, test_acc_hi=hi, test_acc_ci_kind=kind)


def tied_with_best(frame: pd.DataFrame) -> pd.Series:
    """Per row of `frame`: whether its accuracy interval overlaps that of the most accurate row (the best: True)."""
    ok = frame[(frame["n"] > 0) & frame["test_acc_mean"].notna()] if len(frame) else frame
    if ok.empty:
        return pd.Series(False, index=frame.index)
    best = ok.loc[ok["test_acc_mean"].idxmax()]
    floor = best["test_acc_lo"] if best["test_acc_lo"] == best["test_acc_lo"] else best["test_acc_mean"]
    hi = frame["test_acc_hi"].fillna(frame["test_acc_mean"])
    return (frame.index == best.name) | (frame.index.isin(ok.index) & (hi >= floor))


def add_accuracy_ties(table: pd.DataFrame) -> pd.DataFrame:
    """`acc_tie`: the variant's accuracy interval overlaps that of the best variant of its kind (the best included);
    `acc_rank`: `best`, `tie` or '' among the ok variants of a kind with more than one (for tables)."""
    tie = pd.Series(False, index=table.index)
    rank = pd.Series("", index=table.index, dtype=object)
    for _, g in table.groupby("kind", sort=False):
        tie[g.index] = tied_with_best(g)
        ok = g[(g["n"] > 0) & g["test_acc_mean"].notna()]
        if len(ok) > 1:
            rank[ok.index] = ["tie" if t else "" for t in tie[ok.index]]
            rank[ok["test_acc_mean"].idxmax()] = "best"
    return table.assign(acc_tie=tie.astype(bool), acc_rank=rank)


def ties_line(table: pd.DataFrame, names: dict[str, str]) -> str | None:
    """One line for the headline: per kind with several variants, how many tie with its best on accuracy."""
    parts = []
    for kind, g in table[table["n"] > 0].groupby("kind", sort=False):
        if len(g) > 1 and "acc_tie" in g:
            parts.append(f"{names.get(kind, kind)} {int(g['acc_tie'].sum())} of {len(g)}")
    return "accuracy ties with the best of each kind (95 % CIs overlap): " + ", ".join(parts) if parts else None


def one_seed_note(table: pd.DataFrame) -> str | None:
    """The warning for rankings that rest on one seed per variant, with the size of its binomial interval."""
    ok = table[(table["n"] > 0) & table["test_acc_mean"].notna()]
    if ok.empty or ok["n"].max() > 1:
        return None
    best = ok.loc[ok["test_acc_mean"].idxmax()]
    n_images = best.get("test_images")
    width = (best["test_acc_hi"] - best["test_acc_lo"]) * 50  # half-width in percentage points
    if width != width:  # no test-set size known: no interval either
        return ("accuracy rests on one seed per variant, and its test-set size is unknown: no interval, and "
                "small differences may be noise. For seed noise, set seeds: [0, 1, 2]")
    return (f"accuracy rests on one seed per variant: its 95 % CI is binomial over {int(n_images):,} test images "
            f"(about ±{width:.1f} pp at the best accuracy) and leaves out seed noise; differences inside it are "
            "ties. For seed noise, set seeds: [0, 1, 2]")
