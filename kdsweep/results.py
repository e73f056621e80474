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
    # how many test images `test_acc` was taken on: the binomial CI of a one-seed accuracy needs it
    ("test_images", pa.int64()),
])
COLUMNS = SCHEMA.names

# what each column means: docs/results.md is generated from this (kdsweep.reference), and a test keeps it complete
DESCRIPTIONS = {
    "variant": "human label, e.g. `student-kd T=4 a=0.9 p=0.3` or `student-kd T=4 a=0.9 p=0.5 structured int8`",
    "stage": "`teacher`, `baseline` (the student without KD), `student` (KD), `pruned`, `quantized` (INT8 of `parent`)",
    "temperature": "KD temperature T (null for the teacher and the baseline)",
    "alpha": "KD weight of the soft-target term (0 for the baseline, null for the teacher)",
    "prune_amount": "fraction pruned: of each layer's weights (unstructured) or channels (structured); null unpruned",
    "seed": "the training seed (`seeds` axis)",
    "test_acc": "top-1 accuracy on the test split, 0-1 (INT8: of the ONNX model in ONNX Runtime)",
    "latency_ms": "batch-1 median latency on this row's runtime and device, timed interleaved with every other model",
    "latency_p90_ms": "90th percentile of the same timings",
    "latency_device": "where it was timed: `cpu` or `cuda:<GPU name>`",
    "size_mb": "parameters x 4 bytes / 1e6 (INT8: x 1 byte), the reference's size figure",
    "size_nonzero_mb": "non-zero parameters x 4 bytes / 1e6 (INT8: x 1 byte)",
    "size_compressed_mb": "real bytes / 1e6 of the state dict as bitmask + non-zero values + zstd (INT8: the zstd'd "
                          "ONNX file)",
    "params": "parameter count",
    "nonzero_params": "non-zero parameter count",
    "sparsity": "fraction of zero parameters",
    "train_seconds": "seconds its last trial run spent setting it up, training and evaluating it (not export, "
                     "not latency)",
    "status": "`ok`, `failed` (see `error`) or `skipped` (its parent did not finish ok)",
    "error": "why it failed or was skipped; null when ok",
    "config_hash": "hash of exactly the settings the variant depends on (its identity across runs)",
    "kdsweep_version": "kdsweep version that trained it",
    "torch_version": "torch version that trained it",
    "ray_version": "Ray version of the sweep",
    "git_sha": "git commit of the kdsweep checkout, where there is one",
    "finished_at": "when the row was written (UTC, ISO 8601)",
    "key": "file-safe unique id in the experiment, e.g. `pruned-T4-a0.9-p0.3-s0` (file names use it)",
    "parent": "key of the variant it started from (a student's teacher, a pruned variant's student, an INT8's fp32)",
    "arch": "model architecture (torchvision name or `timm:<name>`)",
    "epochs_run": "training epochs run (all runs together, a resumed one included)",
    "train_runs": "how many times training of it started (1 = trained once; more after a crash and resume)",
    "teacher_forward_images": "images the teacher ran forward inside this variant's training (0 with cached logits)",
    "teacher_logits": "`cached` or `online` for KD variants",
    "conv_sparsity": "fraction of zero Conv2d weights (what L1 pruning touches)",
    "node": "host name of the node that trained it",
    "node_ip": "IP address of that node",
    "node_id": "Ray node id of that node",
    "gpu_ids": "GPU ids Ray gave the trial (empty on CPU)",
    "trial_start": "Unix time the trial started on this variant",
    "trial_end": "Unix time the trial finished it",
    "runtime": "`torch`, `onnxruntime-cpu`, `onnxruntime-cuda` or `tensorrt`; null on a failed or skipped variant",
    "precision": "`fp32` or `int8`",
    "prune_method": "`l1_unstructured` (masks, dense kernels) or `l1_structured` (channels removed); null unpruned",
    "macs": "multiply-accumulates of one batch-1 forward at `data.image_size`",
    "size_bytes": "bytes of the variant's ONNX file",
    "latency_ci95_ms": "half-width of the 95 % confidence interval of the median latency",
    "latency_iters": "timed iterations behind the latency figures",
    "onnx_file": "the variant's .onnx file, relative to the experiment folder",
    "onnx_max_abs_diff": "largest absolute difference of ONNX Runtime's logits from PyTorch's on 64 test images",
    "top1_agreement": "top-1 agreement with PyTorch on those images (INT8: with its fp32 parent on the whole test "
                      "split)",
    "axes": "the swept keys (`sweep:` section) this variant depends on, a JSON object of dotted key -> value",
    "fused_group": "the fused task that trained it with others (`fused-<stage>-x<members>-<hash>`); null if alone",
    "test_images": "images of the test split `test_acc` was taken on (the binomial CI of one seed's accuracy)",
}


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
