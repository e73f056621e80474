"""tradeoffs.md: the trade-off tables as GitHub-flavoured Markdown (no tabulate dependency)."""
from __future__ import annotations

import math

import pandas as pd

from .noise import tied_with_best
from .tables import KIND_NAMES, Tables

ERROR_CHARS = 160  # the full error text is in results.csv; the table keeps one readable line


def num(x: object, digits: int = 2, scale: float = 1.0, signed: bool = False) -> str:
    """A number for a table cell; '—' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "—"
    return f"{float(x) * scale:{'+' if signed else ''}.{digits}f}"


def text(x: object) -> str:
    """A string cell; '—' for a missing value (None or NaN)."""
    return x if isinstance(x, str) and x else "—"


def pm(mean: object, std: object, digits: int = 2, scale: float = 1.0) -> str:
    """'mean ± std', or just the mean when there is no spread to show (one seed)."""
    m = num(mean, digits, scale)
    s = num(std, digits, scale)
    return m if s == "—" or m == "—" else f"{m} ± {s}"


def interval(lo: object, hi: object, digits: int = 1) -> str:
    """An accuracy interval in %, 'lo–hi'; '—' when there is none."""
    a, b = num(lo, digits, 100), num(hi, digits, 100)
    return "—" if "—" in (a, b) else f"{a}–{b}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; pipes and newlines in cells are escaped so one row stays one row."""
    clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")
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
            f"{', '.join(map(str, seeds)) or '—'}; latency: batch 1 on {', '.join(devices) or '—'}, "
            f"{_runtime_note(t)}.",
            "Accuracy in %, mean ± std over seeds (n = ok seeds), and its 95 % CI: Student's t over seeds where "
            "there are two or more, else binomial (Wilson) over the test images; *tie* marks a variant whose CI "
            "overlaps that of the best of its kind (*best*). "
            "Failed, skipped, unreadable and missing variants are listed but left out of means, marginals and "
            "Pareto fronts.", ""]
    out += [f"**Note:** {n}\n" for n in t.notes if n.startswith("headline latency runtimes differ")]
    out += ["## Variants", "", _variants(v), "", "## Deltas", "",
            "Differences of means: accuracy in percentage points, latency in ms (both variants on the first one's "
            "latency runtime), sizes in MB. *unpruned* is the KD student with the same T and alpha; *parent* is an "
            "INT8 variant's fp32 model." + (" Each reference has the variant's own value of every swept key it "
                                            "depends on." if t.axes else ""), "", _deltas(v), ""]
    out += ["## Latency by runtime", "", "Batch-1 median latency in ms ± its noise (the wider of the median's 95 % "
            "CI within a run and the std over seeds); **bold** is the runtime the other tables use.", "",
            _latency_by_runtime(t), ""]
    checks = _onnx_checks(v)
    if checks:
        out += ["## ONNX export", "", "Largest absolute difference of the logits between ONNX Runtime and PyTorch, "
                "and top-1 agreement on the test split with the fp32 PyTorch model (INT8: with its fp32 parent).",
                "", checks, ""]
    out += ["## Marginals", "", "Mean accuracy over ok rows (all seeds) of the KD students (T, alpha) and of the "
            "pruned students by method and p (p = 0 is the unpruned KD students).", ""]
    for title, m, axis in (("By temperature T", t.by_temperature, "temperature"),
                           ("By alpha", t.by_alpha, "alpha"), ("By prune amount p", t.by_prune, "prune_amount")):
        out += [f"### {title}", "", _marginal(m, axis), ""]
    if t.by_axis:  # only when a swept key varies: without a sweep the report reads as it always did
        out += ["Swept keys (the config's `sweep:`): mean accuracy over ok rows for each value and kind of variant; "
                "variants that do not depend on a key (the teacher, for a student key) are left out of its table.",
                ""]
        for axis, m in t.by_axis.items():
            out += [f"### By {axis}", "", _swept_marginal(m, axis), ""]
    out += ["## Pareto fronts", "", "Variants no other ok variant beats on both accuracy (higher) and the cost "
            "(lower). Latencies whose noise intervals overlap are ties: a variant is only faster beyond the noise. "
            "*≈ best* marks front members whose accuracy CI overlaps that of the front's most accurate one.", ""]
    fronts = [("Accuracy vs latency", t.pareto_latency, "latency_ms", "Latency p50 ms"),
              ("Accuracy vs non-zero size", t.pareto_size, "size_nonzero_mb", "Non-zero MB")]
    if not t.pareto_bytes.empty:
        fronts.append(("Accuracy vs ONNX file size", t.pareto_bytes, "size_bytes", "ONNX MB"))
    for title, front, col, label in fronts:
        out += [f"### {title}", "", _front(front, col, label), ""]
    return "\n".join(out)


def _runtime_note(t: Tables) -> str:
    """Which runtime the latency columns come from: forced, one for all, or a count per runtime."""
    if t.runtime is not None:
        return f"runtime {t.runtime} for every variant"
    runtimes = t.variants.loc[t.variants["n"] > 0, "latency_runtime"].dropna()
    if runtimes.empty:
        return "no runtime"
    if runtimes.nunique() == 1:
        return f"runtime {runtimes.iloc[0]}"
    return "runtime per variant (" + ", ".join(f"{r}: {c}" for r, c in runtimes.value_counts().items()) + ")"


def _variants(v: pd.DataFrame) -> str:
    header = ["Variant", "Status", "n", "Accuracy %", "95 % CI %", "Tie", "Latency p50 ms", "Latency p90 ms",
              "Runtime", "Size MB", "Non-zero MB", "Compressed MB", "ONNX MB", "MMACs", "Sparsity %", "Error"]
    rows = []
    for r in v.itertuples():
        err = r.error if isinstance(r.error, str) else ""
        rows.append([r.variant, r.status, r.n, pm(r.test_acc_mean, r.test_acc_std, 2, 100),
                     interval(r.test_acc_lo, r.test_acc_hi) + (f" ({r.test_acc_ci_kind})" if r.test_acc_ci_kind
                                                               else ""),
                     r.acc_rank, pm(r.latency_ms_mean, r.latency_ms_std, 3),
                     num(r.latency_p90_ms_mean, 3), text(r.latency_runtime), num(r.size_mb_mean),
                     num(r.size_nonzero_mb_mean), num(r.size_compressed_mb_mean), num(r.size_bytes_mean, 2, 1e-6),
                     num(r.macs_mean, 1, 1e-6), num(r.sparsity_mean, 1, 100),
                     err[:ERROR_CHARS] + ("…" if len(err) > ERROR_CHARS else "")])
    return md_table(header, rows)


def _deltas(v: pd.DataFrame) -> str:
    header = ["Variant", "Δacc vs teacher (pp)", "Δacc vs no-KD (pp)", "Δacc vs unpruned (pp)",
              "Δlatency vs teacher (ms)", "Δlatency vs no-KD (ms)", "Δnon-zero vs teacher (MB)",
              "Δnon-zero vs unpruned (MB)", "Δacc vs parent (pp)", "Δlatency vs parent (ms)",
              "Δsize vs parent (MB)", "ΔONNX vs parent (MB)"]
    rows = [[r.variant, num(r.d_test_acc_vs_teacher, 2, 100, True), num(r.d_test_acc_vs_baseline, 2, 100, True),
             num(r.d_test_acc_vs_unpruned, 2, 100, True), num(r.d_latency_ms_vs_teacher, 3, signed=True),
             num(r.d_latency_ms_vs_baseline, 3, signed=True), num(r.d_size_nonzero_mb_vs_teacher, 2, signed=True),
             num(r.d_size_nonzero_mb_vs_unpruned, 2, signed=True), num(r.d_test_acc_vs_parent, 2, 100, True),
             num(r.d_latency_ms_vs_parent, 3, signed=True), num(r.d_size_mb_vs_parent, 2, signed=True),
             num(r.d_size_bytes_vs_parent, 2, 1e-6, True)] for r in v[v["n"] > 0].itertuples()]
    return md_table(header, rows)


def _latency_by_runtime(t: Tables) -> str:
    lat = t.latency_runtimes
    if lat.empty:
        return "(no latency measured)"
    runtimes = list(t.latency_by_runtime.columns)
    devices = {r: ", ".join(dict.fromkeys(d for ds in g["latency_device"] for d in ds.split(", ")))
               for r, g in lat.groupby("latency_runtime")}
    cells = {(r.variant, r.latency_runtime): r for r in lat.itertuples()}
    rows = []
    for variant in t.latency_by_runtime.index:
        row = [variant]
        for rt in runtimes:
            c = cells.get((variant, rt))
            text = "—" if c is None else (pm(c.latency_ms_mean, c.latency_spread_ms, 3) + (f" (n={c.n})" if c.n > 1
                                                                                              else ""))
            row.append(f"**{text}**" if c is not None and c.headline else text)
        rows.append(row)
    return md_table(["Variant", *(f"{rt} ({devices[rt]})" for rt in runtimes)], rows)


def _onnx_checks(v: pd.DataFrame) -> str:
    ok = v[(v["n"] > 0) & (v["onnx_max_abs_diff_mean"].notna() | v["top1_agreement_mean"].notna())]
    if ok.empty:
        return ""
    sci = lambda x: "—" if pd.isna(x) else f"{x:.1e}"  # differences span 1e-7 (fp32) to 1 (INT8)
    rows = [[r.variant, text(r.precision), sci(r.onnx_max_abs_diff_mean), num(r.top1_agreement_mean, 2, 100)]
            for r in ok.itertuples()]
    return md_table(["Variant", "Precision", "Max abs logit diff", "Top-1 agreement %"], rows)


def _marginal(m: pd.DataFrame, axis: str) -> str:
    if m.empty:
        return "(no ok rows for this axis)"
    name = {"temperature": "T", "alpha": "alpha", "prune_amount": "p"}[axis]
    method = ["Method"] if "prune_method" in m else []
    header = [name, *method, "Variants", "n", "Accuracy %", "95 % CI (± pp)", "Latency ms", "Non-zero MB"]
    rows = [[f"{getattr(r, axis):g}", *([r.prune_method or "none"] if method else []), r.variants, r.n,
             pm(r.test_acc_mean, r.test_acc_std, 2, 100), num(r.test_acc_ci95, 2, 100), num(r.latency_ms_mean, 3),
             num(r.size_nonzero_mb_mean)] for r in m.itertuples()]
    return md_table(header, rows)


def cell(value: object) -> str:
    """A swept value for a table cell: numbers as %g, anything else as text; '—' for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def _swept_marginal(m: pd.DataFrame, axis: str) -> str:
    if m.empty:
        return "(no ok rows for this key)"
    header = [axis, "Kind", "Variants", "n", "Accuracy %", "95 % CI (± pp)", "Latency ms", "Non-zero MB"]
    rows = [[cell(r[axis]), KIND_NAMES.get(r["kind"], cell(r["kind"])), r["variants"], r["n"],
             pm(r["test_acc_mean"], r["test_acc_std"], 2, 100), num(r["test_acc_ci95"], 2, 100),
             num(r["latency_ms_mean"], 3), num(r["size_nonzero_mb_mean"])] for _, r in m.iterrows()]
    return md_table(header, rows)


def _front(front: pd.DataFrame, col: str, label: str) -> str:
    if front.empty:
        return "(no ok variants)"
    latency = col == "latency_ms"
    tie = tied_with_best(front) if "test_acc_lo" in front else pd.Series(False, index=front.index)
    header = ["Variant", "Accuracy %", "95 % CI %", "≈ best", label, *(["± ms", "Runtime"] if latency else []), "n"]
    scale, digits = (1e-6, 2) if col == "size_bytes" else (1.0, 3)
    rows = [[r.variant, pm(r.test_acc_mean, r.test_acc_std, 2, 100),
             interval(getattr(r, "test_acc_lo", None), getattr(r, "test_acc_hi", None)), "≈" if tie[r.Index] else "",
             num(getattr(r, f"{col}_mean"), digits, scale),
             *([num(r.latency_spread_ms, 3), text(r.latency_runtime)] if latency else []), r.n]
            for r in front.itertuples()]
    note = f"{int(tie.sum())} of {len(front)} within the accuracy CI of the front's most accurate."
    return md_table(header, rows) + "\n\n" + note
