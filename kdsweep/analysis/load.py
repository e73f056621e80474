"""Read an experiment's result files (local path or any pyarrow.fs URI such as s3://) into one DataFrame.

Reads each Parquet file itself instead of through `kdsweep.results.read_results`, which stops at the first damaged
file; here a damaged file becomes a flagged row. Files are reached through `kdsweep.storage` (local paths and s3://
alike); the column list comes from `kdsweep.results` and variant labels from `kdsweep.plan` (no torch in either).

A result file holds one row per (variant, seed, runtime, device); files written before runtimes existed hold one row
per variant without the runtime columns, and `fill_defaults` gives them the values they implied (torch, fp32, L1
unstructured pruning).

Swept config keys (the config's `sweep:` section) arrive as one JSON object per row in the `axes` column; `expand_axes`
turns them into one column per key, named by the dotted key (`student.arch`). No other column name has a dot, which is
how `axis_columns` finds them again in any derived table. Rows without `axes` (no sweep, or an older experiment) get no
such columns.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import one_line
from ..names import STAGES, STRUCTURED, UNSTRUCTURED
from ..plan import Variant
from ..results import COLUMNS

STAGE_ORDER = {s: i for i, s in enumerate(STAGES)}
_VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(Variant))
# statuses in the order a reader should see them; `unreadable` and `missing` are added by the analysis
STATUS_ORDER = ("ok", "failed", "skipped", "unreadable", "missing")
# columns the analysis computes with, by type; a file without one (an older experiment) gets it empty
FLOAT_COLUMNS = ("temperature", "alpha", "prune_amount", "test_acc", "latency_ms", "latency_p90_ms",
                 "latency_ci95_ms", "size_mb", "size_nonzero_mb", "size_compressed_mb", "sparsity", "train_seconds",
                 "onnx_max_abs_diff", "top1_agreement")
INT_COLUMNS = ("seed", "params", "nonzero_params", "macs", "size_bytes", "latency_iters", "test_images")
TEXT_COLUMNS = ("runtime", "precision", "prune_method")


@dataclass(frozen=True)
class Experiment:
    """The raw rows of one experiment, plus what could not be read and what was planned but never written."""

    uri: str
    rows: pd.DataFrame  # one row per result file; unreadable files are rows with status "unreadable"
    unreadable: list[str] = field(default_factory=list)  # "path: reason", one per damaged file
    planned: list[dict] = field(default_factory=list)  # plan.json entries (empty when the folder has no plan)
    missing: list[str] = field(default_factory=list)  # planned keys without a result file
    axes: list[str] = field(default_factory=list)  # swept dotted keys, each a column of `rows` (see expand_axes)

    @property
    def name(self) -> str:
        """The experiment folder's name."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def missing_note(self) -> str:
        """'N of M planned variants missing', or '' when the sweep is complete (or has no plan)."""
        if not self.missing:
            return ""
        return f"{len(self.missing)} of {len(self.planned)} planned variants missing"


def location(experiment_dir: str | os.PathLike) -> str:
    """An experiment folder as shown and joined: an absolute local path, or the URI as given (no trailing '/')."""
    text = os.fspath(experiment_dir)
    return (os.path.abspath(storage.local_path(text)) if storage.is_local(text) else text).rstrip("/") or "/"


def variant_label(entry: dict) -> str:
    """The human label of a plan.json entry (`kdsweep.plan.Variant.label`); a damaged entry still gets its
    coordinates' label without its swept values, or else its key."""
    if isinstance(entry.get("variant"), str):  # an entry that carries its label knows best
        return entry["variant"]
    fields = {"seed": 0} | {k: entry[k] for k in _VARIANT_FIELDS if k in entry}
    for attempt in (fields, fields | {"axes": ""}):
        try:
            return Variant.from_dict(attempt).label
        except (TypeError, ValueError, AttributeError, KeyError):
            continue
    return str(entry.get("key", "?"))


def load_experiment(experiment_dir: str | os.PathLike) -> Experiment:
    """Read every results/*.parquet of an experiment; damaged files become flagged rows, never silent drops."""
    uri = location(experiment_dir)
    planned = _read_plan(uri)
    by_key = {p["key"]: p for p in planned if "key" in p}
    rows: list[dict] = []
    unreadable: list[str] = []
    seen: set[str] = set()
    for shown in storage.listdir(storage.join(uri, "results"), ".parquet"):  # in-flight (hidden) temp files skipped
        key = storage.basename(shown)[: -len(".parquet")]
        seen.add(key)
        try:
            file_rows = _read_file(shown)
        except Exception as exc:  # noqa: BLE001 -- any damage to one file must be reported, not end the analysis
            reason = one_line(exc)
            unreadable.append(f"{shown}: {reason}")
            rows.append(_flagged_row(key, by_key.get(key), f"unreadable result file {shown} ({reason})", shown))
            continue
        for r in file_rows:
            r["file"] = shown
            seen.add(r.get("key") or key)
        rows.extend(file_rows)
    missing = [k for k in by_key if k not in seen]
    frame, axes = _frame(rows, _sweep_keys(uri))
    return Experiment(uri=uri, rows=frame, unreadable=unreadable, planned=planned, missing=missing, axes=axes)


def experiment_from_rows(rows: pd.DataFrame, uri: str = "") -> Experiment:
    """An Experiment of raw result rows (as from `kdsweep.results.read_results`), with typed and swept-key columns."""
    frame, axes = expand_axes(fill_defaults(rows))
    return Experiment(uri=uri, rows=sort_rows(frame).reset_index(drop=True), axes=axes)


def _read_file(path: str) -> list[dict]:
    table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
    if table.num_rows == 0:
        raise ValueError("file has no rows")
    for col in ("variant", "status"):
        if col not in table.column_names:
            raise ValueError(f"not a kdsweep result (no {col!r} column)")
    rows = table.to_pylist()
    for r in rows:
        parse_axes(r.get("axes"))  # a damaged `axes` value flags the file instead of losing the row's coordinates
    return rows


def _read_plan(root: str) -> list[dict]:
    path = storage.join(root, "plan.json")
    if not storage.exists(path):
        return []
    plan = json.loads(storage.read_text(path))
    return [p for p in plan if isinstance(p, dict)]


def _flagged_row(key: str, entry: dict | None, error: str, shown: str) -> dict:
    """A stand-in row for a damaged file, with the grid coordinates taken from the plan (or the key) when known."""
    entry = dict(entry or _parse_key(key))
    entry.setdefault("key", key)
    row = {c: entry.get(c) for c in ("stage", "temperature", "alpha", "prune_amount", "seed", "parent", "key",
                                     "prune_method", "precision")}
    try:  # a plan entry may carry its swept values: the damaged variant keeps them
        row["axes"] = json.dumps(parse_axes(entry.get("axes"))) or None
    except ValueError:
        row["axes"] = None  # a damaged plan entry must not stop the analysis either
    return {**row, "variant": variant_label(entry), "status": "unreadable", "error": error, "file": shown}


def _parse_key(key: str) -> dict:
    """Best-effort coordinates from a file name like pruned-T4-a0.9-p0.3-structured-s0 (when plan.json is absent).

    Keys mirror kdsweep.plan.Variant.key; an INT8 variant's key is `int8-` and its fp32 parent's key.
    """
    if key.startswith("int8-"):
        parent = _parse_key(key[len("int8-"):])
        if "stage" not in parent:
            return {"key": key}
        return {**parent, "key": key, "stage": "quantized", "parent": parent["key"], "precision": "int8"}
    m = re.fullmatch(r"(teacher|baseline|student|pruned)(?:-T([\d.]+)-a([\d.]+))?(?:-p([\d.]+))?(-structured)?"
                     r"-s(\d+)", key)
    if not m:
        return {"key": key}
    stage, t, a, p, structured, s = m.groups()
    def f(x: str | None) -> float | None:
        return float(x) if x else None

    method = (STRUCTURED if structured else UNSTRUCTURED) if stage == "pruned" else None
    return {"key": key, "stage": stage, "temperature": f(t), "alpha": f(a), "prune_amount": f(p), "seed": int(s),
            "prune_method": method, "precision": "fp32"}


def _sweep_keys(root: str) -> list[str]:
    """The keys of config.yaml's `sweep:` section in the user's order; [] when there is none or it cannot be read."""
    import yaml

    try:
        sweep = (yaml.safe_load(storage.read_text(storage.join(root, "config.yaml"))) or {}).get("sweep")
    except Exception:  # noqa: BLE001 -- the order is a nicety: the result files alone still give every key
        return []
    return [str(k) for k in sweep] if isinstance(sweep, dict) else []


def _frame(rows: list[dict], order: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    extra = [c for r in rows for c in r if c != "file"]
    df = pd.DataFrame(rows, columns=[*dict.fromkeys([*COLUMNS, *extra]), "file"])
    df, axes = expand_axes(fill_defaults(df), order)
    return sort_rows(df).reset_index(drop=True), axes


def parse_axes(value: object) -> dict[str, Any]:
    """The swept keys of one row: its `axes` JSON object (or a dict) as a dict; {} for null / absent."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == "":
        return {}
    obj = json.loads(value) if isinstance(value, str) else value
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ValueError(f"axes is not a JSON object: {str(value)[:80]!r}")
    return obj


def axis_value(value: object) -> object:
    """A swept value as a table cell: scalars as they are, lists joined by '+' ('none' when empty), null as 'null'."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(axis_value(v)) for v in value) or "none"
    if isinstance(value, dict):  # e.g. a swept sub-section: compact and readable, still one hashable cell
        return ",".join(f"{k}={axis_value(v)}" for k, v in value.items()) or "none"
    if value is None:
        return "null"  # a key swept to null is set (to its default), unlike a variant that lacks the key (NaN)
    return value


def expand_axes(df: pd.DataFrame, order: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One column per swept key, named by the dotted key, from the `axes` JSON column; (frame, keys).

    Keys come in `order` (the config's `sweep:` order, when known), then as first seen, reading the rows that name
    the most keys first (a KD student depends on more swept keys than the teacher), so a row's own key order wins.
    A row that does not depend on a key gets NaN (pd.NA in an integer column). Without an `axes` column or values,
    nothing changes.
    """
    if "axes" not in df or df.empty:
        return df, []
    parsed = [parse_axes(v) for v in df["axes"]]
    if not any(parsed):
        return df, []
    by_size = sorted(range(len(parsed)), key=lambda i: -len(parsed[i]))
    seen = list(dict.fromkeys(k for i in by_size for k in parsed[i]))
    keys = [k for k in order or [] if k in seen] + [k for k in seen if k not in (order or [])]
    cols = {k: _axis_column([axis_value(p[k]) if k in p else None for p in parsed], df.index) for k in keys}
    at = list(df.columns).index("axes") + 1  # next to the raw JSON they come from
    out = pd.concat([df.iloc[:, :at], pd.DataFrame(cols, index=df.index),
                     df.iloc[:, at:].drop(columns=[k for k in keys if k in df.columns])], axis=1)
    return out, keys


def _axis_column(values: list, index: pd.Index) -> pd.Series:
    """Integers as Int64 (CSV shows 3, not 3.0), other numbers as float, anything else as objects; missing NaN/NA."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, index=index, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], index=index, dtype=float)
    return pd.Series([math.nan if v is None else v for v in values], index=index, dtype=object)


def axis_columns(df: pd.DataFrame) -> list[str]:
    """The swept-key columns of a frame of rows or of a table made from them: the dotted column names, in order."""
    return [c for c in df.columns if isinstance(c, str) and "." in c]


def varying_axes(df: pd.DataFrame, axes: list[str] | None = None) -> list[str]:
    """The swept keys (default: every dotted column) that take two or more values in `df`."""
    return [a for a in (axis_columns(df) if axes is None else axes) if a in df and df[a].nunique(dropna=True) > 1]


def axis_order(values: pd.Series) -> dict:
    """value -> rank: numbers ascending, then strings (and anything else) alphabetically; a mixed key sorts too."""
    def key(v: object) -> tuple:
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            return (0, float(v), "")
        return (1, 0.0, str(v))
    return {v: i for i, v in enumerate(sorted(values.dropna().unique(), key=key))}


def fill_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Typed analysis columns, and the runtime / precision / prune method that rows from older experiments imply."""
    df = df.copy()
    for c in (*FLOAT_COLUMNS, *INT_COLUMNS, *TEXT_COLUMNS):
        if c not in df:
            df[c] = pd.Series(None, index=df.index, dtype=object)
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in TEXT_COLUMNS:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    # before runtimes were recorded, latency was always eager PyTorch, models fp32, and pruning L1 unstructured
    df.loc[df["runtime"].isna() & df["latency_ms"].notna(), "runtime"] = "torch"
    df.loc[df["precision"].isna(), "precision"] = df["stage"].map({"quantized": "int8"}).fillna("fp32")
    df.loc[df["prune_method"].isna() & (df["stage"] == "pruned"), "prune_method"] = UNSTRUCTURED
    return df


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: teacher, baseline, KD students, pruned, int8; then by swept keys, T, alpha, p, seed,
    runtime (so a sweep over student.arch lists each architecture's students together)."""
    if df.empty:
        return df
    order = df["stage"].map(STAGE_ORDER).fillna(len(STAGE_ORDER))
    # swept values sort by rank, which works for a key whose values mix numbers and strings
    ranks = {f"_a{i}": df[a].map(axis_order(df[a])) for i, a in enumerate(axis_columns(df))}
    keys = [c for c in ("temperature", "alpha", "prune_amount", "seed", "variant", "runtime", "latency_device")
            if c in df]
    return (df.assign(_o=order, **ranks).sort_values(["_o", *ranks, *keys], na_position="first", kind="stable")
            .drop(columns=["_o", *ranks]))
