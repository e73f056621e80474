"""Read an experiment's result files (local path or any pyarrow.fs URI such as s3://) into one DataFrame.

Reads Parquet with pyarrow directly instead of `kdsweep.results.read_results`, which stops at the first damaged file;
here a damaged file becomes a flagged row. Only the column list comes from `kdsweep.results` (no torch there).

A result file holds one row per (variant, seed, runtime, device); files written before runtimes existed hold one row
per variant without the runtime columns, and `fill_defaults` gives them the values they implied (torch, fp32, L1
unstructured pruning).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..results import COLUMNS

STAGE_ORDER = {"teacher": 0, "baseline": 1, "student": 2, "pruned": 3, "quantized": 4}
# statuses in the order a reader should see them; `unreadable` and `missing` are added by the analysis
STATUS_ORDER = ("ok", "failed", "skipped", "unreadable", "missing")
# columns the analysis computes with, by type; a file without one (an older experiment) gets it empty
FLOAT_COLUMNS = ("temperature", "alpha", "prune_amount", "test_acc", "latency_ms", "latency_p90_ms",
                 "latency_ci95_ms", "size_mb", "size_nonzero_mb", "size_compressed_mb", "sparsity", "train_seconds",
                 "onnx_max_abs_diff", "top1_agreement")
INT_COLUMNS = ("seed", "params", "nonzero_params", "macs", "size_bytes", "latency_iters")
TEXT_COLUMNS = ("runtime", "precision", "prune_method")
UNSTRUCTURED, STRUCTURED = "l1_unstructured", "l1_structured"


@dataclass(frozen=True)
class Experiment:
    """The raw rows of one experiment, plus what could not be read and what was planned but never written."""

    uri: str
    rows: pd.DataFrame  # one row per result file; unreadable files are rows with status "unreadable"
    unreadable: list[str] = field(default_factory=list)  # "path: reason", one per damaged file
    planned: list[dict] = field(default_factory=list)  # plan.json entries (empty when the folder has no plan)
    missing: list[str] = field(default_factory=list)  # planned keys without a result file

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


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path within it, display URI) for a local path or a URI like s3://bucket/exp."""
    from .. import storage  # S3-compatible endpoints (AWS_ENDPOINT_URL) are handled in one place

    text = os.fspath(location)
    if "://" not in text:
        text = os.path.abspath(os.path.expanduser(text))
    fs, path = storage.resolve(text)
    return fs, path.rstrip("/") or "/", text.rstrip("/")


def join(base: str, *parts: str) -> str:
    """Join path parts the way pyarrow.fs paths are written (always '/')."""
    return "/".join([base.rstrip("/"), *parts])


def variant_label(entry: dict) -> str:
    """The human label of a plan.json entry (mirrors kdsweep.plan.Variant.label without importing the planner)."""
    stage = entry.get("stage")
    if stage == "teacher":
        return "teacher"
    if stage == "baseline":
        return "student-ce (no KD)"
    if stage in ("student", "pruned"):
        label = f"student-kd T={entry['temperature']:g} a={entry['alpha']:g}"
        if stage == "pruned":
            structured = " structured" if entry.get("prune_method") == STRUCTURED else ""
            label += f" p={entry['prune_amount']:g}{structured}"
        return label
    if stage == "quantized":
        parent = _parse_key(entry.get("parent") or "")
        if "stage" in parent:
            return f"{variant_label(parent)} int8"
    return str(entry.get("key", "?"))


def load_experiment(experiment_dir: str | os.PathLike) -> Experiment:
    """Read every results/*.parquet of an experiment; damaged files become flagged rows, never silent drops."""
    fs, root, uri = resolve(experiment_dir)
    planned = _read_plan(fs, root)
    by_key = {p["key"]: p for p in planned if "key" in p}
    rows: list[dict] = []
    unreadable: list[str] = []
    seen: set[str] = set()
    for path in _result_files(fs, join(root, "results")):
        key = path.rsplit("/", 1)[-1][: -len(".parquet")]
        seen.add(key)
        shown = path if "://" not in uri else f"{uri.split('://', 1)[0]}://{path}"
        try:
            file_rows = _read_file(fs, path)
        except Exception as exc:  # noqa: BLE001 -- any damage to one file must be reported, not end the analysis
            reason = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            unreadable.append(f"{shown}: {reason}")
            rows.append(_flagged_row(key, by_key.get(key), f"unreadable result file {shown} ({reason})", shown))
            continue
        for r in file_rows:
            r["file"] = shown
            seen.add(r.get("key") or key)
        rows.extend(file_rows)
    missing = [k for k in by_key if k not in seen]
    return Experiment(uri=uri, rows=_frame(rows), unreadable=unreadable, planned=planned, missing=missing)


def _result_files(fs: pafs.FileSystem, results: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(results, allow_not_found=True))
    # atomic writes leave hidden ".<name>.tmp" files while in flight: not results
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith("."))


def _read_file(fs: pafs.FileSystem, path: str) -> list[dict]:
    table = pq.read_table(path, filesystem=fs)
    if table.num_rows == 0:
        raise ValueError("file has no rows")
    for col in ("variant", "status"):
        if col not in table.column_names:
            raise ValueError(f"not a kdsweep result (no {col!r} column)")
    return table.to_pylist()


def _read_plan(fs: pafs.FileSystem, root: str) -> list[dict]:
    path = join(root, "plan.json")
    if fs.get_file_info(path).type != pafs.FileType.File:
        return []
    with fs.open_input_stream(path) as f:
        plan = json.loads(f.read().decode())
    return [p for p in plan if isinstance(p, dict)]


def _flagged_row(key: str, entry: dict | None, error: str, shown: str) -> dict:
    """A stand-in row for a damaged file, with the grid coordinates taken from the plan (or the key) when known."""
    entry = dict(entry or _parse_key(key))
    entry.setdefault("key", key)
    row = {c: entry.get(c) for c in ("stage", "temperature", "alpha", "prune_amount", "seed", "parent", "key",
                                     "prune_method", "precision")}
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
    f = lambda x: float(x) if x else None  # noqa: E731
    method = (STRUCTURED if structured else UNSTRUCTURED) if stage == "pruned" else None
    return {"key": key, "stage": stage, "temperature": f(t), "alpha": f(a), "prune_amount": f(p), "seed": int(s),
            "prune_method": method, "precision": "fp32"}


def _frame(rows: list[dict]) -> pd.DataFrame:
    extra = [c for r in rows for c in r if c != "file"]
    df = pd.DataFrame(rows, columns=[*dict.fromkeys([*COLUMNS, *extra]), "file"])
    return sort_rows(fill_defaults(df)).reset_index(drop=True)


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
    """Rows in reading order: teacher, baseline, KD students, pruned, int8; then by T, alpha, p, seed, runtime."""
    if df.empty:
        return df
    order = df["stage"].map(STAGE_ORDER).fillna(len(STAGE_ORDER))
    keys = [c for c in ("temperature", "alpha", "prune_amount", "seed", "variant", "runtime", "latency_device")
            if c in df]
    return df.assign(_o=order).sort_values(["_o", *keys], na_position="first", kind="stable").drop(columns="_o")
