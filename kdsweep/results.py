"""The results contract: one Parquet file per variant, written atomically; reading a whole experiment back.

No torch and no Ray here: the driver writes rows, and the analysis and `kdsweep status` read them.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import ResultError, one_line

# column -> arrow type; the order is the contract's order (DESIGN.md), extras after
SCHEMA = pa.schema([
    ("variant", pa.string()), ("stage", pa.string()),
    ("temperature", pa.float64()), ("alpha", pa.float64()), ("prune_amount", pa.float64()), ("seed", pa.int64()),
    ("test_acc", pa.float64()),
    ("latency_ms", pa.float64()), ("latency_p90_ms", pa.float64()), ("latency_device", pa.string()),
    ("size_mb", pa.float64()), ("size_nonzero_mb", pa.float64()), ("size_compressed_mb", pa.float64()),
    ("params", pa.int64()), ("nonzero_params", pa.int64()), ("sparsity", pa.float64()),
    ("train_seconds", pa.float64()), ("status", pa.string()), ("error", pa.string()),
    ("config_hash", pa.string()), ("kdsweep_version", pa.string()), ("torch_version", pa.string()),
    ("ray_version", pa.string()), ("git_sha", pa.string()), ("finished_at", pa.string()),
    # extras: identity, lineage, and the evidence that shared work was done once
    ("key", pa.string()), ("parent", pa.string()), ("arch", pa.string()),
    ("epochs_run", pa.int64()), ("train_runs", pa.int64()), ("teacher_forward_images", pa.int64()),
    ("teacher_logits", pa.string()), ("conv_sparsity", pa.float64()), ("node", pa.string()), ("node_ip", pa.string()),
    ("node_id", pa.string()), ("gpu_ids", pa.string()),
    ("trial_start", pa.float64()), ("trial_end", pa.float64()),
    # compression and runtimes: one row per (variant, runtime, device); training columns repeat on each
    ("runtime", pa.string()), ("precision", pa.string()), ("prune_method", pa.string()), ("macs", pa.int64()),
    ("size_bytes", pa.int64()), ("latency_ci95_ms", pa.float64()), ("latency_iters", pa.int64()),
    ("onnx_file", pa.string()), ("onnx_max_abs_diff", pa.float64()), ("top1_agreement", pa.float64()),
    # swept config keys (the `sweep:` section) this variant depends on: a JSON object, dotted key -> value
    ("axes", pa.string()),
    # the fused task (`resources.fuse`) that trained this variant together with others; null when it trained alone
    ("fused_group", pa.string()),
])
COLUMNS = SCHEMA.names


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Write a variant's rows (one per runtime) as one Parquet file, atomically; unknown keys are an error."""
    extra = {k for row in rows for k in row} - set(COLUMNS)
    if extra:
        raise KeyError(f"not in the results schema: {sorted(extra)}")
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(path, buf.getvalue())


def read_rows(path: str | Path) -> list[dict]:
    """Every row of one result file (files written before runtimes became rows hold one); damage is a ResultError."""
    try:
        rows = pq.read_table(pa.BufferReader(storage.read_bytes(path))).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise ResultError(f"{path}: unreadable result file ({one_line(exc)})") from None
    if not rows:
        raise ResultError(f"{path}: unreadable result file (no rows)")
    return rows


def read_row(path: str | Path) -> dict:
    """The first row of one result file (what every row of a variant shares: identity, training, status)."""
    return read_rows(path)[0]


def read_results(results_dir: str | Path) -> pd.DataFrame:
    """All result rows of an experiment's results/ folder (a path or URI) as one DataFrame (contract column order)."""
    files = storage.listdir(results_dir, ".parquet")
    rows = [r for f in files for r in read_rows(f)]
    return pd.DataFrame(rows, columns=COLUMNS)
