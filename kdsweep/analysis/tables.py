"""Trade-off tables as DataFrames: per-variant mean ± std over seeds, deltas, per-axis marginals, Pareto fronts.

Result files hold one row per (variant, seed, runtime, device). The per-variant tables take each variant's latency from
one headline runtime (`seed_rows`); `latency_runtimes` keeps every runtime, for comparing them. Swept config keys
(`student.arch`, ...) are columns named by the dotted key (see `load.expand_axes`); they carry into the variant table,
get a marginal each when they vary, and keep deltas comparing like with like.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..names import STRUCTURED, UNSTRUCTURED
from .load import (
    STATUS_ORDER,
    Experiment,
    axis_columns,
    axis_order,
    axis_value,
    fill_defaults,
    load_experiment,
    parse_axes,
    sort_rows,
    variant_label,
    varying_axes,
)
from .noise import add_accuracy_intervals, add_accuracy_ties, fallback_test_images, one_seed_note
from .pareto import PARETO_AXES, latency_spread, pareto_front
from .stats import mean_std_ci

# per-seed numbers that get mean / std / 95 % CI per variant
METRICS = ("test_acc", "latency_ms", "latency_p90_ms", "latency_ci95_ms", "size_mb", "size_nonzero_mb",
           "size_compressed_mb", "size_bytes", "macs", "sparsity", "onnx_max_abs_diff", "top1_agreement")
# the columns that differ between the rows of one variant and seed: they come from the runtime that was picked
LATENCY_COLUMNS = ("runtime", "latency_device", "latency_ms", "latency_p90_ms", "latency_ci95_ms", "latency_iters",
                   "latency_runtime")
# what the deltas are taken of, and against what; `parent` is an INT8 variant's fp32 source
DELTA_METRICS = ("test_acc", "latency_ms", "size_nonzero_mb")
PARENT_DELTA_METRICS = ("test_acc", "latency_ms", "size_mb", "size_nonzero_mb", "size_bytes")
REFERENCES = ("teacher", "baseline", "unpruned", "parent")
# the headline latency of a variant: ONNX Runtime where it was measured (the deployment path), else eager PyTorch
RUNTIME_ORDER = ("onnxruntime-cuda", "onnxruntime-cpu", "torch-cuda", "torch-cpu", "tensorrt")
KINDS = ("teacher", "baseline", "student", "unstructured", "structured", "int8")
KIND_NAMES = {"teacher": "teacher", "baseline": "no-KD baseline", "student": "KD student",
              "unstructured": "unstructured", "structured": "structured", "int8": "INT8"}
# the grid axes every experiment has, as columns; swept keys (dotted) come on top
GRID_AXES = ("temperature", "alpha", "prune_amount")
# the numbers of a marginal's row, after its axis columns and `stage`
MARGINAL_STATS = ("variants", "n", "test_acc_mean", "test_acc_std", "test_acc_ci95", "latency_ms_mean",
                  "size_nonzero_mb_mean", "size_bytes_mean")
# the first columns of results.csv are the reference notebook's table; the rest follow under their contract names
CSV_HEAD = {"variant": "Variant", "test_acc": "Accuracy", "latency_ms": "LatencyMs", "size_mb": "SizeMB"}


@dataclass(frozen=True)
class Tables:
    """Everything tradeoffs.md shows, as DataFrames, plus the notes (missing/unreadable) printed above them."""

    experiment: Experiment
    variants: pd.DataFrame  # one row per variant label: status, n, <metric>_mean/_std/_ci95, deltas, pareto flags
    by_temperature: pd.DataFrame
    by_alpha: pd.DataFrame
    by_prune: pd.DataFrame  # by (prune_method, prune_amount); p = 0 is the unpruned KD students
    pareto_latency: pd.DataFrame
    pareto_size: pd.DataFrame
    pareto_bytes: pd.DataFrame  # on the ONNX file's bytes; empty when no variant was exported
    latency_runtimes: pd.DataFrame  # one row per variant and runtime label: median ms over seeds, noise, headline
    runtime: str | None = None  # the runtime label a caller forced, or None for each variant's headline runtime
    notes: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)  # the swept keys that take two or more values, in sweep order
    by_axis: dict[str, pd.DataFrame] = field(default_factory=dict)  # swept key -> its marginal (see `marginal`)

    @property
    def missing_note(self) -> str:
        """'N of M planned variants missing', or ''."""
        return self.experiment.missing_note

    @property
    def deltas(self) -> pd.DataFrame:
        """Variant, status and every delta column (differences of means; accuracy as a 0-1 fraction)."""
        cols = [c for c in self.variants if c.startswith("d_")]
        return self.variants[["variant", "stage", "status", "n", *cols]]

    @property
    def latency_by_runtime(self) -> pd.DataFrame:
        """Variant x runtime label -> median latency in ms (mean over seeds); NaN where not measured."""
        lat = self.latency_runtimes
        if lat.empty:
            return pd.DataFrame(index=pd.Index([], name="variant"))
        wide = lat.pivot_table(index="variant", columns="latency_runtime", values="latency_ms_mean", sort=False)
        order = [v for v in self.variants["variant"] if v in wide.index]
        return wide.loc[order, sorted(wide.columns, key=runtime_rank)]


def tradeoff_tables(experiment: Experiment | str | os.PathLike, runtime: str | None = None) -> Tables:
    """All trade-off tables of an experiment (a loaded Experiment or its folder / URI).

    Latency is each variant's headline runtime (see RUNTIME_ORDER) unless `runtime` names one runtime label
    (`onnxruntime-cpu`, `torch-cuda`, ...) or runtime (`torch`) to use for every variant.
    """
    exp = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    planned = {p["key"]: p for p in exp.planned if "key" in p}
    variants = variant_table(exp.rows, [planned[k] for k in exp.missing], runtime=runtime)
    if len(variants):
        missing_n = "test_images" not in variants or variants["test_images"].isna().all()
        variants = add_accuracy_ties(add_accuracy_intervals(variants, fallback_test_images(exp) if missing_n else None))
    notes = [n for n in [exp.missing_note, one_seed_note(variants) if len(variants) else None] if n]
    notes += [f"unreadable result file: {u}" for u in exp.unreadable]
    timed = variants.loc[variants["n"] > 0, "latency_runtime"].dropna() if len(variants) else pd.Series([], dtype=str)
    if timed.nunique() > 1:
        counts = ", ".join(f"{r} for {c}" for r, c in timed.value_counts().items())
        notes.append(f"headline latency runtimes differ between variants ({counts}): the latency front compares "
                     "across runtimes; see Latency by runtime, or pass one runtime")
    rows = seed_rows(exp.rows, runtime)
    fronts = {name: pareto_front(variants, x, spread=s) if x in variants else variants
              for name, (x, s) in PARETO_AXES.items()}
    axes = varying_axes(exp.rows, exp.axes or None)
    return Tables(experiment=exp, variants=variants,
                  by_temperature=marginal(rows, "temperature"), by_alpha=marginal(rows, "alpha"),
                  by_prune=marginal(rows, "prune_amount"), pareto_latency=fronts["latency"],
                  pareto_size=fronts["size"], pareto_bytes=fronts["bytes"],
                  latency_runtimes=latency_runtimes(exp.rows, variants), runtime=runtime, notes=notes,
                  axes=axes, by_axis={a: marginal(rows, a) for a in axes})


def latency_runtime(runtime: object, device: object) -> str | None:
    """The `latency_runtime` column: 'onnxruntime-cpu', 'onnxruntime-cuda', 'tensorrt', or 'torch-cpu' / 'torch-cuda'
    (a result row's `runtime` says only 'torch', which runs on both)."""
    if not isinstance(runtime, str):
        return None
    if runtime != "torch":
        return runtime
    return "torch-cuda" if isinstance(device, str) and device.startswith("cuda") else "torch-cpu"


def runtime_rank(label: object) -> int:
    """Position of a runtime label in RUNTIME_ORDER (unknown labels last)."""
    return RUNTIME_ORDER.index(label) if label in RUNTIME_ORDER else len(RUNTIME_ORDER)


def variant_kind(stage: object, prune_method: object, precision: object) -> str | None:
    """teacher | baseline | student | unstructured | structured | int8 (what a variant is, for grouping)."""
    if precision == "int8" or stage == "quantized":
        return "int8"
    if stage == "pruned":
        return "structured" if prune_method == STRUCTURED else "unstructured"
    return stage if isinstance(stage, str) else None


def _seed_id(df: pd.DataFrame) -> pd.Series:
    """One string per (variant, seed) row; NA seeds match too."""
    return df["variant"].astype(str) + "\0" + df["seed"].astype(str)


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with defaults filled and each one's `latency_runtime` label."""
    rows = fill_defaults(rows)
    rows["latency_runtime"] = [latency_runtime(r, d) for r, d in zip(rows["runtime"], rows["latency_device"])]
    return rows


def _timed(labelled: pd.DataFrame) -> pd.DataFrame:
    """The ok rows that carry a latency and a runtime label."""
    ok = (labelled["status"] == "ok") & labelled["latency_ms"].notna() & labelled["latency_runtime"].notna()
    return labelled[ok]


def seed_rows(rows: pd.DataFrame, runtime: str | None = None) -> pd.DataFrame:
    """One row per (variant, seed): its training columns, and the latency of the variant's headline runtime.

    The headline runtime is the first of RUNTIME_ORDER that any ok seed of the variant was timed on, so all seeds of
    a variant use one runtime; `runtime` (a label or a runtime name) forces one instead. A seed without that
    runtime gets no latency. Applying this to its own output returns the same rows.
    """
    if rows.empty:
        return rows.assign(latency_runtime=pd.Series(dtype=object), kind=pd.Series(dtype=object))
    rows = _labelled(rows)
    rows["kind"] = [variant_kind(*k) for k in zip(rows["stage"], rows["prune_method"], rows["precision"])]
    timed = _timed(rows)
    if runtime is not None:
        hit = (timed["latency_runtime"] == runtime) | (timed["runtime"] == runtime)
        if len(timed) and not hit.any():
            have = ", ".join(sorted(set(timed["latency_runtime"]), key=runtime_rank))
            raise ValueError(f"no latency measured with runtime {runtime!r}; this experiment has: {have}")
        timed = timed[hit]
    timed = timed.assign(_rank=timed["latency_runtime"].map(runtime_rank)).sort_values("_rank", kind="stable")
    headline = timed.groupby("variant", sort=False)["latency_runtime"].first()
    picked = timed[timed["latency_runtime"] == timed["variant"].map(headline)]
    latency = picked.assign(_id=_seed_id(picked)).drop_duplicates("_id").set_index("_id")
    out = rows.assign(_id=_seed_id(rows)).drop_duplicates("_id").set_index("_id")
    for c in LATENCY_COLUMNS:
        out[c] = latency[c].reindex(out.index) if len(latency) else None
    return fill_defaults(out.reset_index(drop=True))


def variant_table(rows: pd.DataFrame, missing: list[dict] | None = None, runtime: str | None = None) -> pd.DataFrame:
    """One row per variant label over its seeds; metrics from ok rows only, every status kept and counted."""
    extra = [{"variant": variant_label(m), "stage": m.get("stage"), "temperature": m.get("temperature"),
              "alpha": m.get("alpha"), "prune_amount": m.get("prune_amount"), "seed": m.get("seed"),
              "key": m.get("key"), "parent": m.get("parent"), "prune_method": m.get("prune_method"),
              "precision": m.get("precision"), "status": "missing",
              # a plan entry that lists its swept values keeps them (only keys the rows have: no new columns)
              **{k: axis_value(v) for k, v in parse_axes(m.get("axes")).items() if k in rows.columns}}
             for m in (missing or [])]
    extra = pd.DataFrame(extra, columns=list(dict.fromkeys([*rows.columns, *(extra[0] if extra else {})])))
    frames = [f for f in (rows, extra) if not f.empty]
    raw = pd.concat(frames, ignore_index=True) if frames else rows
    allrows = seed_rows(raw, runtime)
    labels = dict(zip(allrows["key"], allrows["variant"])) if "key" in allrows else {}
    axes = axis_columns(allrows)
    out = []
    for label, g in allrows.groupby("variant", sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        first = g.iloc[0]
        parents = [labels[k] for k in g["parent"].dropna() if k in labels] if first["stage"] == "quantized" else []
        rec = {"variant": label, "stage": first["stage"], "kind": first["kind"],
               "temperature": first["temperature"], "alpha": first["alpha"], "prune_amount": first["prune_amount"],
               "prune_method": first["prune_method"], "precision": first["precision"],
               "parent": parents[0] if parents else None, "status": _status(g["status"]),
               "n": len(ok), "seeds": len(g), "error": _errors(g), **{a: first[a] for a in axes}}
        for m in METRICS:
            mean, std, ci, _ = mean_std_ci(ok[m].astype(float))  # Int64 columns: NA -> NaN
            rec.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci95": ci})
        rec["latency_spread_ms"] = latency_spread(rec["latency_ci95_ms_mean"], rec["latency_ms_std"])
        rec["test_images"] = next(iter(ok["test_images"].dropna()), math.nan) if "test_images" in ok else math.nan
        rec["latency_runtime"] = next(iter(ok["latency_runtime"].dropna()), None)
        rec["latency_device"] = ", ".join(map(str, ok["latency_device"].dropna().unique())) or None
        out.append(rec)
    table = sort_rows(_typed_like(pd.DataFrame(out), allrows, axes)) if out else pd.DataFrame(
        columns=["variant", "stage", "status", "n"])
    table = add_deltas(table.reset_index(drop=True), latency_runtimes(raw, table) if out else None)
    for name, (x, spread) in PARETO_AXES.items():
        front = pareto_front(table, x, spread=spread) if len(table) else table
        table[f"pareto_{name}"] = table.index.isin(front.index)
    return table


def latency_runtimes(rows: pd.DataFrame, variants: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, runtime label) that was timed: median ms over ok seeds, its noise, and `headline`."""
    cols = ["variant", "kind", "latency_runtime", "runtime", "latency_device", "n", "latency_ms_mean",
            "latency_ms_std", "latency_ms_ci95", "latency_ci95_ms_mean", "latency_spread_ms", "headline"]
    if rows.empty or variants.empty:
        return pd.DataFrame(columns=cols).astype({"headline": bool})
    rows = fill_defaults(rows)
    label = pd.Series([latency_runtime(r, d) for r, d in zip(rows["runtime"], rows["latency_device"])],
                      index=rows.index)
    timed = rows.assign(latency_runtime=label)
    timed = timed[(timed["status"] == "ok") & timed["latency_ms"].notna() & timed["latency_runtime"].notna()]
    order = {v: i for i, v in enumerate(variants["variant"])}
    headline = dict(zip(variants["variant"], variants["latency_runtime"]))
    kinds = dict(zip(variants["variant"], variants["kind"]))
    out = []
    for (variant, rt), g in timed.groupby(["variant", "latency_runtime"], sort=False):
        mean, std, ci, n = mean_std_ci(g["latency_ms"])
        within = mean_std_ci(g["latency_ci95_ms"])[0]
        out.append({"variant": variant, "kind": kinds.get(variant), "latency_runtime": rt,
                    "runtime": g["runtime"].iloc[0],
                    "latency_device": ", ".join(g["latency_device"].astype(str).unique()),
                    "n": n, "latency_ms_mean": mean, "latency_ms_std": std, "latency_ms_ci95": ci,
                    "latency_ci95_ms_mean": within, "latency_spread_ms": latency_spread(within, std),
                    "headline": headline.get(variant) == rt})
    table = pd.DataFrame(out, columns=cols).astype({"headline": bool})
    rank = {"_v": table["variant"].map(order).fillna(len(order)), "_r": table["latency_runtime"].map(runtime_rank)}
    return table.assign(**rank).sort_values(["_v", "_r"]).drop(columns=list(rank)).reset_index(drop=True)


def add_deltas(table: pd.DataFrame, latency: pd.DataFrame | None = None) -> pd.DataFrame:
    """d_<metric>_vs_{teacher,baseline,unpruned,parent}: variant mean minus the reference's mean (NaN if none/self).

    `unpruned` is a pruned variant's KD student with the same (T, alpha); `parent` is an INT8 variant's fp32 source.
    With swept keys, a reference must also agree on every swept key both have (a mobilenet_v2 student is compared
    with the mobilenet_v2 baseline, and with the teacher of its own teacher.epochs; the teacher, which has no
    student.arch, serves every architecture). With `latency` (from `latency_runtimes`), latency deltas compare both
    variants on the variant's own headline runtime, so an INT8 model timed only on onnxruntime-cpu is not compared
    with its parent's CUDA time.
    """
    table = table.copy()
    if table.empty:
        return table
    usable = table[table["n"] > 0]
    by_label = usable.set_index("variant")
    same_runtime = {} if latency is None else {
        (r.variant, r.latency_runtime): r.latency_ms_mean for r in latency.itertuples()}

    axes = axis_columns(table)

    def first(frame: pd.DataFrame, row: pd.Series) -> str | None:
        for a in axes:  # a swept key both have must agree; NaN on either side (does not depend on it) matches
            if pd.notna(row[a]):
                frame = frame[frame[a].isna() | (frame[a] == row[a]).fillna(False).astype(bool)]
        return frame["variant"].iloc[0] if len(frame) else None

    students = usable[usable["stage"] == "student"]
    records = [r for _, r in table.iterrows()]  # Series, not itertuples: dotted column names stay reachable
    refs = {"teacher": [first(usable[usable["stage"] == "teacher"], r) for r in records],
            "baseline": [first(usable[usable["stage"] == "baseline"], r) for r in records],
            "unpruned": [first(students[(students["temperature"] == r.temperature) & (students["alpha"] == r.alpha)],
                               r) if r.stage == "pruned" else None for r in records],
            "parent": [r.parent if r.stage == "quantized" and r.parent in by_label.index else None
                       for r in table.itertuples()]}
    for name in REFERENCES:
        ref_labels = refs[name]
        for m in PARENT_DELTA_METRICS if name == "parent" else DELTA_METRICS:
            col = f"{m}_mean"
            values = []
            for row, ref in zip(table.itertuples(), ref_labels):
                if ref is None or ref == row.variant or ref not in by_label.index:
                    values.append(np.nan)
                elif m == "latency_ms" and same_runtime:
                    values.append(getattr(row, col) - same_runtime.get((ref, row.latency_runtime), np.nan))
                else:
                    values.append(getattr(row, col) - by_label.at[ref, col])
            table[f"d_{m}_vs_{name}"] = pd.Series(values, index=table.index, dtype=float)
    return table


def marginal(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Mean accuracy (± std, 95 % CI over ok seeds) by one axis; T and alpha over KD students, p over pruned.

    The p table is by (prune method, p) and starts with p = 0: the unpruned KD students, so the cost of pruning
    reads off the first row. A swept key (`student.arch`, any dotted column) is by (value, kind of variant): each
    kind (teacher, KD student, structured, ...) of each value is its own row, since a mean over a teacher and
    its pruned students means nothing; rows that do not depend on the key are left out. Latency is each variant's
    headline runtime (`seed_rows`).
    """
    if axis not in GRID_AXES and axis not in rows:
        raise ValueError(f"no axis {axis!r} in these rows; axes: {', '.join([*GRID_AXES, *axis_columns(rows)])}")
    rows = seed_rows(rows)
    ok = rows[rows["status"] == "ok"]
    if axis not in GRID_AXES:
        return _swept_marginal(ok, axis)
    keys = [axis]
    if axis == "prune_amount":
        keys.append("prune_method")
        parts = [ok[ok["stage"] == "student"].assign(prune_amount=0.0, prune_method=None), ok[ok["stage"] == "pruned"]]
        ok = pd.concat([p for p in parts if not p.empty]) if any(not p.empty for p in parts) else ok.iloc[:0]
    else:
        ok = ok[ok["stage"] == "student"]
    out = [{**dict(zip(keys, value)), **_marginal_stats(g)} for value, g in ok.groupby(keys, sort=False, dropna=False)]
    table = pd.DataFrame(out, columns=[*keys, "stage", *MARGINAL_STATS])
    if "prune_method" not in table:
        return table.sort_values(axis, kind="stable").reset_index(drop=True)
    # None for the p = 0 row, as in the rows (pandas reads it as NaN); at each p unstructured before structured
    table["prune_method"] = table["prune_method"].astype(object).where(table["prune_method"].notna(), None)
    method = table["prune_method"].map({UNSTRUCTURED: 1, STRUCTURED: 2}).fillna(0)
    return table.assign(_m=method).sort_values([axis, "_m"], kind="stable").drop(columns="_m").reset_index(drop=True)


def _marginal_stats(g: pd.DataFrame) -> dict:
    """One marginal row's numbers over the ok seed rows `g` of one group (MARGINAL_STATS, and the stages in it)."""
    mean, std, ci, n = mean_std_ci(g["test_acc"])
    return {"stage": "/".join(sorted(g["stage"].unique())), "variants": g["variant"].nunique(), "n": n,
            "test_acc_mean": mean, "test_acc_std": std, "test_acc_ci95": ci, "latency_ms_mean": g["latency_ms"].mean(),
            "size_nonzero_mb_mean": g["size_nonzero_mb"].mean(), "size_bytes_mean": g["size_bytes"].mean()}


def _swept_marginal(ok: pd.DataFrame, axis: str) -> pd.DataFrame:
    """`marginal` of a swept key over ok seed rows: one row per (value, kind), values in order, kinds as in KINDS."""
    ok = ok[ok[axis].notna()]
    out = [{axis: value, "kind": kind, **_marginal_stats(g)}
           for (value, kind), g in ok.groupby([axis, "kind"], sort=False)]
    table = pd.DataFrame(out, columns=[axis, "kind", "stage", *MARGINAL_STATS])
    if table.empty:
        return table
    table[axis] = table[axis].astype(ok[axis].dtype)  # Int64 stays Int64
    rank = {"_v": table[axis].map(axis_order(table[axis])), "_k": table["kind"].map(
        {k: i for i, k in enumerate(KINDS)}).fillna(len(KINDS))}
    return table.assign(**rank).sort_values(["_v", "_k"], kind="stable").drop(columns=list(rank)).reset_index(
        drop=True)


def _typed_like(table: pd.DataFrame, rows: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The swept-key columns of a table made from `rows` with the rows' dtypes (Int64 stays Int64, not object)."""
    for a in axes:
        table[a] = table[a].astype(rows[a].dtype)
    return table


def results_frame(rows: pd.DataFrame, axes: list[str] | None = None) -> pd.DataFrame:
    """results.csv, one row per (variant, seed) as the reference notebook's CSV has it: Variant,Accuracy,LatencyMs,
    SizeMB first (LatencyMs from the variant's headline runtime, named in `latency_runtime`), then one
    `LatencyMs[<runtime label>]` column per runtime timed (RUNTIME_ORDER), then the swept keys (`axes`, default every
    dotted column), then the rest. The Parquet files keep one row per runtime."""
    one = seed_rows(rows)
    axes = axis_columns(one) if axes is None else [a for a in axes if a in one]
    timed = _timed(_labelled(rows)) if len(rows) else pd.DataFrame(columns=["latency_runtime"])
    ids = _seed_id(one) if len(one) else pd.Series(dtype=str)
    per = {}
    for label in sorted(set(timed["latency_runtime"]), key=runtime_rank):
        t = timed[timed["latency_runtime"] == label]
        per[f"LatencyMs[{label}]"] = ids.map(dict(zip(_seed_id(t), t["latency_ms"]))).astype(float).to_numpy()
    head = one[list(CSV_HEAD)].rename(columns=CSV_HEAD)
    return pd.concat([head, pd.DataFrame(per, index=one.index), one[axes], one.drop(columns=[*CSV_HEAD, *axes])],
                     axis=1)


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
