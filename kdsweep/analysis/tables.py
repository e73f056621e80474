"""Trade-off tables as DataFrames: per-variant mean ± std over seeds, deltas, per-axis marginals, Pareto fronts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .load import STATUS_ORDER, Experiment, load_experiment, sort_rows, variant_label
from .stats import describe

# per-seed numbers that get mean / std / 95 % CI per variant
METRICS = ("test_acc", "latency_ms", "latency_p90_ms", "size_mb", "size_nonzero_mb", "size_compressed_mb", "sparsity")
# what the deltas are taken of, and against what
DELTA_METRICS = ("test_acc", "latency_ms", "size_nonzero_mb")
REFERENCES = ("teacher", "baseline", "unpruned")
# the two trade-offs: accuracy up against latency down, and against non-zero size down
PARETO_AXES = {"latency": "latency_ms_mean", "size": "size_nonzero_mb_mean"}
# the first columns of results.csv are the reference notebook's table; the rest follow under their contract names
CSV_HEAD = {"variant": "Variant", "test_acc": "Accuracy", "latency_ms": "LatencyMs", "size_mb": "SizeMB"}


@dataclass(frozen=True)
class Tables:
    """Everything tradeoffs.md shows, as DataFrames, plus the notes (missing/unreadable) printed above them."""

    experiment: Experiment
    variants: pd.DataFrame  # one row per variant label: status, n, <metric>_mean/_std/_ci95, deltas, pareto flags
    by_temperature: pd.DataFrame
    by_alpha: pd.DataFrame
    by_prune: pd.DataFrame
    pareto_latency: pd.DataFrame
    pareto_size: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def missing_note(self) -> str:
        """'N of M planned variants missing', or ''."""
        return self.experiment.missing_note

    @property
    def deltas(self) -> pd.DataFrame:
        """Variant, status and every delta column (differences of means; accuracy as a 0-1 fraction)."""
        cols = [c for c in self.variants if c.startswith("d_")]
        return self.variants[["variant", "stage", "status", "n", *cols]]


def tradeoff_tables(experiment: Experiment | str | os.PathLike) -> Tables:
    """All trade-off tables of an experiment (a loaded Experiment or its folder / URI)."""
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    planned = {p["key"]: p for p in exp.planned if "key" in p}
    variants = variant_table(exp.rows, [planned[k] for k in exp.missing])
    notes = [n for n in [exp.missing_note] if n]
    notes += [f"unreadable result file: {u}" for u in exp.unreadable]
    rows = exp.rows
    return Tables(experiment=exp, variants=variants,
                  by_temperature=marginal(rows, "temperature"), by_alpha=marginal(rows, "alpha"),
                  by_prune=marginal(rows, "prune_amount"),
                  pareto_latency=pareto_front(variants, PARETO_AXES["latency"]),
                  pareto_size=pareto_front(variants, PARETO_AXES["size"]), notes=notes)


def variant_table(rows: pd.DataFrame, missing: list[dict] | None = None) -> pd.DataFrame:
    """One row per variant label over its seeds; metrics from ok rows only, every status kept and counted."""
    extra = [{"variant": variant_label(m), "stage": m.get("stage"), "temperature": m.get("temperature"),
              "alpha": m.get("alpha"), "prune_amount": m.get("prune_amount"), "seed": m.get("seed"),
              "key": m.get("key"), "status": "missing"} for m in (missing or [])]
    frames = [f for f in (rows, pd.DataFrame(extra)) if not f.empty]
    allrows = pd.concat(frames, ignore_index=True) if frames else rows
    out = []
    for label, g in allrows.groupby("variant", sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        first = g.iloc[0]
        rec = {"variant": label, "stage": first["stage"], "temperature": first["temperature"],
               "alpha": first["alpha"], "prune_amount": first["prune_amount"], "status": _status(g["status"]),
               "n": len(ok), "seeds": len(g), "error": _errors(g)}
        for m in METRICS:
            mean, std, ci, _ = describe(ok[m]) if m in ok else (np.nan, np.nan, np.nan, 0)
            rec.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci95": ci})
        devices = ok["latency_device"].dropna().unique() if "latency_device" in ok else []
        rec["latency_device"] = ", ".join(map(str, devices)) or None
        out.append(rec)
    table = sort_rows(pd.DataFrame(out)) if out else pd.DataFrame(columns=["variant", "stage", "status", "n"])
    table = add_deltas(table.reset_index(drop=True))
    for name, x in PARETO_AXES.items():
        front = pareto_front(table, x) if len(table) else table
        table[f"pareto_{name}"] = table.index.isin(front.index)
    return table


def add_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """d_<metric>_vs_{teacher,baseline,unpruned}: variant mean minus the reference's mean (NaN if none/self)."""
    table = table.copy()
    if table.empty:
        return table
    usable = table[table["n"] > 0]

    def ref(stage: str) -> pd.Series | None:
        hit = usable[usable["stage"] == stage]
        return hit.iloc[0] if len(hit) else None

    refs = {"teacher": ref("teacher"), "baseline": ref("baseline")}
    students = usable[usable["stage"] == "student"]
    for m in DELTA_METRICS:
        col = f"{m}_mean"
        for name, r in refs.items():
            value = table[col] - r[col] if r is not None else pd.Series(np.nan, index=table.index)
            table[f"d_{m}_vs_{name}"] = value.where(table["stage"] != name)
        # a pruned variant's own unpruned KD student: same (T, alpha)
        unpruned = []
        for row in table.itertuples():
            hit = students[(students["temperature"] == row.temperature) & (students["alpha"] == row.alpha)]
            unpruned.append(getattr(row, col) - hit.iloc[0][col] if row.stage == "pruned" and len(hit) else np.nan)
        table[f"d_{m}_vs_unpruned"] = pd.Series(unpruned, index=table.index, dtype=float)
    return table


def pareto_front(table: pd.DataFrame, x: str, y: str = "test_acc_mean", rtol: float = 1e-3) -> pd.DataFrame:
    """The rows no other row beats on both `y` (higher is better) and `x` (lower is better), sorted by `x`.

    Costs within `rtol` (relative) of each other count as equal: a pruned model that is four bytes smaller
    (one weight fewer survived) is not a trade-off worth listing when it is less accurate.
    """
    cand = table.dropna(subset=[x, y])
    if "n" in cand:
        cand = cand[cand["n"] > 0]  # failed / skipped / missing variants are not trade-off points
    xs, ys = cand[x].to_numpy(float), cand[y].to_numpy(float)
    xi, yi, xj, yj = xs[:, None], ys[:, None], xs[None, :], ys[None, :]
    # j dominates i: no worse on both axes (cost up to the tolerance) and strictly better on one
    dominated = ((xj <= xi + rtol * np.abs(xi)) & (yj >= yi) & ((xj < xi) | (yj > yi))).any(axis=1)
    return cand[~dominated].sort_values([x, y], ascending=[True, False], kind="stable")


def marginal(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Mean accuracy (± std, 95 % CI over ok rows) by one grid axis; T and alpha over KD students, p over pruned.

    The p table starts with p = 0: the unpruned KD students, so the cost of pruning reads off the first column.
    """
    ok = rows[rows["status"] == "ok"]
    if axis == "prune_amount":
        parts = [ok[ok["stage"] == "student"].assign(prune_amount=0.0), ok[ok["stage"] == "pruned"]]
        ok = pd.concat([p for p in parts if not p.empty]) if any(not p.empty for p in parts) else ok.iloc[:0]
    else:
        ok = ok[ok["stage"] == "student"]
    out = []
    for value, g in ok.groupby(axis, sort=True):
        mean, std, ci, n = describe(g["test_acc"])
        out.append({axis: value, "stage": "/".join(sorted(g["stage"].unique())), "variants": g["variant"].nunique(),
                    "n": n, "test_acc_mean": mean, "test_acc_std": std, "test_acc_ci95": ci,
                    "latency_ms_mean": g["latency_ms"].mean(), "size_nonzero_mb_mean": g["size_nonzero_mb"].mean()})
    cols = [axis, "stage", "variants", "n", "test_acc_mean", "test_acc_std", "test_acc_ci95", "latency_ms_mean",
            "size_nonzero_mb_mean"]
    return pd.DataFrame(out, columns=cols)


def results_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The raw rows (one per variant and seed) for results.csv: Variant,Accuracy,LatencyMs,SizeMB first."""
    head = rows[list(CSV_HEAD)].rename(columns=CSV_HEAD)
    return pd.concat([head, rows.drop(columns=list(CSV_HEAD))], axis=1)


def _status(statuses: pd.Series) -> str:
    counts = statuses.fillna("unknown").value_counts()
    if len(counts) == 1:
        return str(counts.index[0])
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    parts = sorted(counts.items(), key=lambda kv: rank.get(kv[0], len(rank)))
    return ", ".join(f"{s} {c}/{len(statuses)}" for s, c in parts)


def _errors(g: pd.DataFrame) -> str | None:
    errs = g.loc[g["status"] != "ok", "error"].dropna().astype(str) if "error" in g else pd.Series([], dtype=str)
    unique = [e for e in dict.fromkeys(errs) if e]
    return " | ".join(unique) or None
