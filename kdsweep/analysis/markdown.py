"""tradeoffs.md: the trade-off tables as GitHub-flavoured Markdown (no tabulate dependency)."""
from __future__ import annotations

import math

import pandas as pd

from .tables import Tables

ERROR_CHARS = 160  # the full error text is in results.csv; the table keeps one readable line


def num(x: object, digits: int = 2, scale: float = 1.0, signed: bool = False) -> str:
    """A number for a table cell; '—' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "—"
    return f"{float(x) * scale:{'+' if signed else ''}.{digits}f}"


def pm(mean: object, std: object, digits: int = 2, scale: float = 1.0) -> str:
    """'mean ± std', or just the mean when there is no spread to show (one seed)."""
    m = num(mean, digits, scale)
    s = num(std, digits, scale)
    return m if s == "—" or m == "—" else f"{m} ± {s}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; pipes and newlines in cells are escaped so one row stays one row."""
    clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def tradeoffs_markdown(t: Tables) -> str:
    """The whole tradeoffs.md: notes first (missing / unreadable), then variants, deltas, marginals, Pareto fronts."""
    exp = t.experiment
    v = t.variants
    out = [f"# Trade-offs: {exp.name}", ""]
    if exp.missing:
        shown = ", ".join(exp.missing[:20]) + (" …" if len(exp.missing) > 20 else "")
        out += [f"**{exp.missing_note}**: {shown}", ""]
    if exp.unreadable:
        out += [f"**{len(exp.unreadable)} unreadable result file(s)** (listed as `unreadable` below):"]
        out += [f"- `{u}`" for u in exp.unreadable] + [""]
    if v.empty:
        return "\n".join(out + ["(no results)", ""])
    counts = v["status"].value_counts().to_dict()
    seeds = sorted(exp.rows["seed"].dropna().unique().tolist())
    devices = sorted({d for d in v["latency_device"].dropna() for d in d.split(", ")})
    out += [f"{len(v)} variants ({', '.join(f'{c} {s}' for s, c in counts.items())}); seeds: "
            f"{', '.join(map(str, seeds)) or '—'}; latency: batch 1 on {', '.join(devices) or '—'}.",
            "Accuracy in %, mean ± std over seeds (n = ok seeds), 95 % CI half-width from Student's t. "
            "Failed, skipped, unreadable and missing variants are listed but left out of means, marginals and "
            "Pareto fronts.", ""]
    out += ["## Variants", "", _variants(v), "", "## Deltas", "",
            "Differences of means: accuracy in percentage points, latency in ms, non-zero size in MB. "
            "*unpruned* is the KD student with the same T and alpha.", "", _deltas(v), ""]
    out += ["## Marginals", "", "Mean accuracy over ok rows (all seeds) of the KD students (T, alpha) and of the "
            "pruned students (p; p = 0 is the unpruned KD students).", ""]
    for title, m, axis in (("By temperature T", t.by_temperature, "temperature"),
                           ("By alpha", t.by_alpha, "alpha"), ("By prune amount p", t.by_prune, "prune_amount")):
        out += [f"### {title}", "", _marginal(m, axis), ""]
    out += ["## Pareto fronts", "", "Variants no other ok variant beats on both accuracy (higher) and the cost "
            "(lower).", ""]
    for title, front, col, label in (("Accuracy vs latency", t.pareto_latency, "latency_ms", "Latency p50 ms"),
                                     ("Accuracy vs non-zero size", t.pareto_size, "size_nonzero_mb", "Non-zero MB")):
        out += [f"### {title}", "", _front(front, col, label), ""]
    return "\n".join(out)


def _variants(v: pd.DataFrame) -> str:
    header = ["Variant", "Status", "n", "Accuracy %", "95 % CI (± pp)", "Latency p50 ms", "Latency p90 ms",
              "Size MB", "Non-zero MB", "Compressed MB", "Sparsity %", "Error"]
    rows = []
    for r in v.itertuples():
        err = r.error if isinstance(r.error, str) else ""
        rows.append([r.variant, r.status, r.n, pm(r.test_acc_mean, r.test_acc_std, 2, 100),
                     num(r.test_acc_ci95, 2, 100), pm(r.latency_ms_mean, r.latency_ms_std, 3),
                     num(r.latency_p90_ms_mean, 3), num(r.size_mb_mean), num(r.size_nonzero_mb_mean),
                     num(r.size_compressed_mb_mean), num(r.sparsity_mean, 1, 100),
                     err[:ERROR_CHARS] + ("…" if len(err) > ERROR_CHARS else "")])
    return md_table(header, rows)


def _deltas(v: pd.DataFrame) -> str:
    header = ["Variant", "Δacc vs teacher (pp)", "Δacc vs no-KD (pp)", "Δacc vs unpruned (pp)",
              "Δlatency vs teacher (ms)", "Δlatency vs no-KD (ms)", "Δnon-zero vs teacher (MB)",
              "Δnon-zero vs unpruned (MB)"]
    rows = [[r.variant, num(r.d_test_acc_vs_teacher, 2, 100, True), num(r.d_test_acc_vs_baseline, 2, 100, True),
             num(r.d_test_acc_vs_unpruned, 2, 100, True), num(r.d_latency_ms_vs_teacher, 3, signed=True),
             num(r.d_latency_ms_vs_baseline, 3, signed=True), num(r.d_size_nonzero_mb_vs_teacher, 2, signed=True),
             num(r.d_size_nonzero_mb_vs_unpruned, 2, signed=True)] for r in v[v["n"] > 0].itertuples()]
    return md_table(header, rows)


def _marginal(m: pd.DataFrame, axis: str) -> str:
    if m.empty:
        return "(no ok rows for this axis)"
    name = {"temperature": "T", "alpha": "alpha", "prune_amount": "p"}[axis]
    header = [name, "Variants", "n", "Accuracy %", "95 % CI (± pp)", "Latency ms", "Non-zero MB"]
    rows = [[f"{getattr(r, axis):g}", r.variants, r.n, pm(r.test_acc_mean, r.test_acc_std, 2, 100),
             num(r.test_acc_ci95, 2, 100), num(r.latency_ms_mean, 3), num(r.size_nonzero_mb_mean)]
            for r in m.itertuples()]
    return md_table(header, rows)


def _front(front: pd.DataFrame, col: str, label: str) -> str:
    if front.empty:
        return "(no ok variants)"
    header = ["Variant", "Accuracy %", label, "n"]
    rows = [[r.variant, pm(r.test_acc_mean, r.test_acc_std, 2, 100), num(getattr(r, f"{col}_mean"), 3), r.n]
            for r in front.itertuples()]
    return md_table(header, rows)
