"""A tiny real sweep with every kind of variant (dense, unstructured, structured, INT8) timed under torch and ONNX
Runtime; and an experiment written before runtimes became rows resumes by re-timing, never retraining."""
from __future__ import annotations

import shutil

import onnx
import pytest

import kdsweep
from kdsweep.cli import main
from kdsweep.results import COLUMNS, SCHEMA, read_results, read_rows

from .conftest import REDUCED, SMOKE

# the shared reduced smoke sweep plus the compression axes: its teacher, students and unstructured variants are reused
# (same hashes); new are 2 structured pruned and 7 INT8 (teacher, 2 KD students, 4 pruned): 15 variants in all
AXES = ["prune.method=[l1_unstructured, l1_structured]", "quantize.method=[none, int8]",
        "quantize.stages=[teacher, student, pruned]", "quantize.calib_batches=4", "measure.iters=20"]


@pytest.fixture(scope="module")
def compress_exp(smoke_exp, tmp_path_factory):
    """A copy of the shared smoke experiment, extended by the compression axes (only the new variants train)."""
    root = tmp_path_factory.mktemp("compress")
    shutil.copytree(smoke_exp, root / smoke_exp.name)
    return kdsweep.run(SMOKE, overrides=REDUCED + AXES, storage=root)


@pytest.mark.slow
def test_every_kind_of_variant_is_built_exported_and_timed(compress_exp):
    df = read_results(compress_exp / "results")
    assert (df.status == "ok").all(), df[["key", "runtime", "status", "error"]]
    assert df.key.nunique() == 15 and df.stage.value_counts()["quantized"] == 7
    rts = df.groupby("key")["runtime"].apply(set).to_dict()
    for key, have in rts.items():  # INT8 runs in ONNX Runtime only; fp32 under both
        assert have == ({"onnxruntime-cpu"} if key.startswith("int8-") else {"torch", "onnxruntime-cpu"}), key
    assert (df.latency_ms > 0).all() and (df.latency_ci95_ms >= 0).all() and (df.latency_iters == 20).all()
    by = df[df.runtime == "onnxruntime-cpu"].set_index("key")
    st, un = by.loc["pruned-T4-a0.9-p0.5-structured-s0"], by.loc["pruned-T4-a0.9-p0.5-s0"]
    parent = by.loc["student-T4-a0.9-s0"]
    assert parent.train_runs == 1 and st.trial_start > parent.trial_end  # the student came from the shared sweep
    assert (st.prune_method, un.prune_method) == ("l1_structured", "l1_unstructured")
    # structured pruning removes channels: fewer params, MACs and ONNX bytes; unstructured keeps dense shapes
    assert st.params <= 0.4 * parent.params and st.macs <= 0.4 * parent.macs
    assert st.size_bytes < 0.5 * parent.size_bytes and un.params == parent.params and un.macs == parent.macs
    assert st.test_acc >= 0.6  # far above chance after one recovery epoch; the benchmark measures the real gap
    # INT8 files: a quarter of the fp32 bytes plus per-channel scales and QDQ nodes, which weigh more in a small model.
    # Top-1 agreement with the fp32 parent depends on how decided the parent is: the trained teacher and KD student
    # agreed on 0.98-1.00 of the test images, the structured variant after one recovery epoch (74-78 % accurate, many
    # near-ties) on 0.956 on an AVX-512 Xeon and 0.942 with AVX2 kernels forced there (2026-12-07; a 0.95 bound failed
    # there). A broken quantizer (scales, calibration views) agrees on far fewer; the accuracy gap stays <= 0.011.
    for key, ratio, agree in (("teacher-s0", 0.3, 0.95), ("student-T4-a0.9-s0", 0.3, 0.95),
                              ("pruned-T4-a0.9-p0.5-structured-s0", 0.35, 0.90)):
        q = by.loc[f"int8-{key}"]
        fp32 = by.loc[key]
        assert (q.stage, q.precision, q.parent) == ("quantized", "int8", key)
        assert q.size_bytes <= ratio * fp32.size_bytes and q.macs == fp32.macs
        assert q.top1_agreement >= agree and abs(q.test_acc - fp32.test_acc) <= 0.03
    # every ONNX file is in the experiment, loadable, opset >= 18 for the fp32 exports, and checked against PyTorch
    for r in by.itertuples():
        model = onnx.load(str(compress_exp / r.onnx_file))
        assert (compress_exp / r.onnx_file).stat().st_size == r.size_bytes
        if r.precision == "fp32":
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
            assert r.onnx_max_abs_diff < 1e-3 and r.top1_agreement == 1.0
    assert (df.train_runs == 1).all()


@pytest.mark.slow
def test_rerun_of_the_compress_sweep_trains_and_times_nothing(compress_exp, capsys):
    before = {f.name: f.stat().st_mtime_ns for f in (compress_exp / "results").glob("*.parquet")}
    kdsweep.run(SMOKE, overrides=REDUCED + AXES, storage=compress_exp.parent)
    out = capsys.readouterr().out
    assert "] training" not in out and "[latency]" not in out
    assert {f.name: f.stat().st_mtime_ns for f in (compress_exp / "results").glob("*.parquet")} == before


@pytest.mark.slow
def test_an_experiment_from_before_runtimes_resumes_by_retiming_only(smoke_exp, tmp_path, capsys):
    """Old experiments: one row per variant, no runtime/ONNX columns, no .onnx files: rerun re-times, trains nothing."""
    old = tmp_path / smoke_exp.name
    shutil.copytree(smoke_exp, old)
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_schema = pa.schema([SCHEMA.field(c) for c in COLUMNS[:COLUMNS.index("runtime")]])  # the schema before
    for f in (old / "results").glob("*.parquet"):
        row = next(r for r in read_rows(f) if r["runtime"] == "torch")
        pq.write_table(pa.Table.from_pylist([{c: row[c] for c in old_schema.names}], schema=old_schema), f)
    for f in old.glob("artifacts/*/model.onnx"):
        f.unlink()
    checkpoints = {f: f.stat().st_mtime_ns for f in old.glob("artifacts/*/*.pt")}
    capsys.readouterr()
    kdsweep.run(SMOKE, overrides=REDUCED, storage=tmp_path)
    out = capsys.readouterr().out
    assert "] training" not in out and "[latency]" in out
    df = read_results(old / "results")
    assert (df.status == "ok").all() and (df.train_runs == 1).all()
    assert set(df.runtime) == {"torch", "onnxruntime-cpu"} and len(df) == 2 * df.key.nunique()
    assert {f: f.stat().st_mtime_ns for f in checkpoints} == checkpoints  # weights and checkpoints untouched
    assert all((old / p).is_file() for p in df.onnx_file)


def test_a_runtime_that_cannot_run_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started for a bad input"))
    assert main(["run", SMOKE, "--storage", str(tmp_path / "runs"), "--set", "measure.runtimes=[torch, tvm]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "measure.runtimes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# torch only in the devices case: with a CPU-only onnxruntime, [cpu, cuda] is refused earlier, for the provider
# (tests/test_runtimes.py); here the GPU is what is missing
@pytest.mark.parametrize("overrides, key", [
    (("measure.devices=[cpu, cuda]", "measure.runtimes=[torch]"), "measure.devices"),
    (("measure.runtimes=[torch, tensorrt]",), "measure.runtimes")])
def test_cuda_without_a_gpu_is_refused_before_the_experiment_exists(overrides, key, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec  # pretend tensorrt is installed: the GPU is what is missing
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "tensorrt" else real(n, *a))
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["run", SMOKE, "--storage", str(tmp_path / "runs"), *sets, "--set", "data.train_limit=64"]) == 2
    # Ray itself (started to count the cluster's GPUs) may log to stderr; kdsweep's own error is one line
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("kdsweep: error:")]
    assert len(errors) == 1 and key in errors[0] and "GPU" in errors[0]
    assert not (tmp_path / "runs").exists()
