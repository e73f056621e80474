"""Read an experiment's result files (local path or any pyarrow.fs URI such as s3://) into one DataFrame.

Reads Parquet with pyarrow directly instead of `kdsweep.results.read_results`: that module imports the checkpoint code
(and so torch) at import time, and analysis must stay importable without the training stack.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

STAGE_ORDER = {"teacher": 0, "baseline": 1, "student": 2, "pruned": 3}
# statuses in the order a reader should see them; `unreadable` and `missing` are added by the analysis
STATUS_ORDER = ("ok", "failed", "skipped", "unreadable", "missing")
# the contract columns the analysis relies on (DESIGN.md "Results contract"); any others a file has are kept after
COLUMNS = ("variant", "stage", "temperature", "alpha", "prune_amount", "seed", "test_acc",
           "latency_ms", "latency_p90_ms", "latency_device", "size_mb", "size_nonzero_mb", "size_compressed_mb",
           "params", "nonzero_params", "sparsity", "train_seconds", "status", "error", "key", "parent")
FLOAT_COLUMNS = ("temperature", "alpha", "prune_amount", "test_acc", "latency_ms", "latency_p90_ms", "size_mb",
                 "size_nonzero_mb", "size_compressed_mb", "sparsity", "train_seconds")
INT_COLUMNS = ("seed", "params", "nonzero_params")


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
        return label + (f" p={entry['prune_amount']:g}" if stage == "pruned" else "")
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
    row = {c: entry.get(c) for c in ("stage", "temperature", "alpha", "prune_amount", "seed", "parent", "key")}
    return {**row, "variant": variant_label(entry), "status": "unreadable", "error": error, "file": shown}


def _parse_key(key: str) -> dict:
    """Best-effort coordinates from a file name like pruned-T4-a0.9-p0.3-s0 (when plan.json is absent)."""
    m = re.fullmatch(r"(teacher|baseline|student|pruned)(?:-T([\d.]+)-a([\d.]+))?(?:-p([\d.]+))?-s(\d+)", key)
    if not m:
        return {"key": key}
    stage, t, a, p, s = m.groups()
    f = lambda x: float(x) if x else None  # noqa: E731
    return {"key": key, "stage": stage, "temperature": f(t), "alpha": f(a), "prune_amount": f(p), "seed": int(s)}


def _frame(rows: list[dict]) -> pd.DataFrame:
    extra = [c for r in rows for c in r if c not in COLUMNS and c != "file"]
    columns = [*COLUMNS, *dict.fromkeys(extra), "file"]
    df = pd.DataFrame(rows, columns=columns)
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in INT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return sort_rows(df).reset_index(drop=True)


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in reading order: teacher, baseline, KD students, pruned; then by T, alpha, p, seed."""
    if df.empty:
        return df
    order = df["stage"].map(STAGE_ORDER).fillna(len(STAGE_ORDER))
    keys = [c for c in ("temperature", "alpha", "prune_amount", "seed", "variant") if c in df]
    return df.assign(_o=order).sort_values(["_o", *keys], na_position="first", kind="stable").drop(columns="_o")
