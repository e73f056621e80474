"""Analysis: numbers checked on crafted result sets (hand-computable), damaged and partial sweeps, real smoke output."""
from __future__ import annotations

import csv
import io
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdsweep.analysis import (
    FacetError,
    analyze,
    axis_value,
    expand_axes,
    facet_axis,
    headline_table,
    load_experiment,
    marginal,
    metrics_grid,
    pareto_front,
    t_critical,
    tradeoff_tables,
    tradeoffs_markdown,
)
from kdsweep.cli import main
from kdsweep.errors import ResultError
from kdsweep.results import SCHEMA, read_results, read_row, write_rows

# the result columns before runtimes, precision and pruning methods were recorded (issue 13): old experiments have
# exactly these, one row per variant
OLD_COLUMNS = ("variant", "stage", "temperature", "alpha", "prune_amount", "seed", "test_acc", "latency_ms",
               "latency_p90_ms", "latency_device", "size_mb", "size_nonzero_mb", "size_compressed_mb", "params",
               "nonzero_params", "sparsity", "train_seconds", "status", "error", "config_hash", "kdsweep_version",
               "torch_version", "ray_version", "git_sha", "finished_at", "key", "parent", "arch", "epochs_run",
               "train_runs", "teacher_forward_images", "teacher_logits", "conv_sparsity", "node", "node_ip", "node_id",
               "gpu_ids", "trial_start", "trial_end")

T975_DF1 = 12.7062  # Student's t, 0.975 quantile, 1 degree of freedom (two seeds)


def key_of(stage: str, seed: int, t=None, a=None, p=None) -> str:
    parts = [stage] + ([f"T{t:g}", f"a{a:g}"] if stage in ("student", "pruned") else [])
    return "-".join(parts + ([f"p{p:g}"] if stage == "pruned" else []) + [f"s{seed}"])


def label_of(stage: str, t=None, a=None, p=None) -> str:
    if stage in ("teacher", "baseline"):
        return {"teacher": "teacher", "baseline": "student-ce (no KD)"}[stage]
    return f"student-kd T={t:g} a={a:g}" + (f" p={p:g}" if stage == "pruned" else "")


def put(exp: Path, stage: str, seed: int = 0, t=None, a=None, p=None, acc=None, lat=None, nz=None,
        status: str = "ok", error: str | None = None) -> str:
    """Write one result file the way the sweep did before runtimes existed: one row, the old columns only."""
    key = key_of(stage, seed, t, a, p)
    a = 0.0 if stage == "baseline" else a
    dense = 40.0 if stage == "teacher" else 6.0
    row = {"variant": label_of(stage, t, a, p), "stage": stage, "temperature": t, "alpha": a, "prune_amount": p,
           "seed": seed, "test_acc": acc, "latency_ms": lat, "latency_p90_ms": None if lat is None else lat * 1.1,
           "latency_device": "cpu", "size_mb": dense, "size_nonzero_mb": nz,
           "size_compressed_mb": None if nz is None else nz * 0.9,
           "sparsity": None if nz is None else 1 - nz / dense, "status": status, "error": error, "key": key,
           "parent": key_of("student", seed, t, a) if stage == "pruned" else None}
    schema = pa.schema([SCHEMA.field(c) for c in OLD_COLUMNS])
    (exp / "results").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row], schema=schema), exp / "results" / f"{key}.parquet")
    return key


def write_plan(exp: Path, entries: list[tuple]) -> list[str]:
    """plan.json as the sweeper writes it: a list of variant dicts with their key."""
    plan = []
    for stage, seed, t, a, p in entries:
        plan.append({"stage": stage, "seed": seed, "temperature": t, "alpha": 0.0 if stage == "baseline" else a,
                     "prune_amount": p, "config_hash": "x", "parent": None, "key": key_of(stage, seed, t, a, p)})
    (exp / "plan.json").write_text(json.dumps(plan))
    return [e["key"] for e in plan]


def png_info(path: Path) -> tuple[int, int, float]:
    """(width, height, dpi) from a PNG's IHDR and pHYs chunks."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    dpi = math.nan
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"pHYs":
            ppm_x, _, unit = struct.unpack(">IIB", data[pos + 8:pos + 17])
            dpi = ppm_x * 0.0254 if unit == 1 else math.nan
        pos += 12 + length
    return width, height, dpi


@pytest.fixture
def pareto_exp(tmp_path: Path) -> Path:
    """Hand-built: accuracy, latency ms, non-zero MB chosen so both fronts are known."""
    exp = tmp_path / "pareto"
    put(exp, "teacher", acc=0.95, lat=10.0, nz=40.0)                 # A: most accurate
    put(exp, "baseline", acc=0.80, lat=3.0, nz=6.0)                  # B: beaten by C on both axes
    put(exp, "student", t=2, a=0.5, acc=0.90, lat=3.0, nz=6.0)       # C
    put(exp, "student", t=4, a=0.5, acc=0.88, lat=2.0, nz=6.0)       # D: fastest
    put(exp, "pruned", t=2, a=0.5, p=0.5, acc=0.89, lat=3.0, nz=3.0)     # E: smallest that is good
    put(exp, "pruned", t=4, a=0.5, p=0.5, acc=0.85, lat=4.0, nz=3.0)     # F: beaten by E / C
    put(exp, "pruned", t=2, a=0.5, p=0.6, acc=0.86, lat=3.5, nz=2.999)   # H: 1 kB smaller than E, far less accurate
    # a failed variant with (bogus) numbers that would win both fronts: must stay out of them
    put(exp, "pruned", t=4, a=0.5, p=0.6, acc=0.99, lat=1.0, nz=1.0, status="failed", error="RuntimeError: boom")
    return exp


def test_pareto_fronts_match_hand_built_example(pareto_exp: Path, tmp_path: Path) -> None:
    t = tradeoff_tables(pareto_exp)
    assert t.pareto_latency["variant"].tolist() == ["student-kd T=4 a=0.5", "student-kd T=2 a=0.5", "teacher"]
    assert t.pareto_size["variant"].tolist() == ["student-kd T=2 a=0.5 p=0.5", "student-kd T=2 a=0.5", "teacher"]
    flags = t.variants.set_index("variant")
    assert flags.loc["student-kd T=2 a=0.5 p=0.5", "pareto_size"] and not flags.loc["student-ce (no KD)",
                                                                                      "pareto_latency"]
    assert not flags.loc["student-kd T=4 a=0.5 p=0.6", "pareto_latency"]  # the failed one
    # without the cost tolerance, H's 1 kB saving puts it on the size front
    strict = pareto_front(t.variants, "size_nonzero_mb_mean", rtol=0)
    assert strict["variant"].tolist()[0] == "student-kd T=2 a=0.5 p=0.6"
    md = (analyze(pareto_exp, tmp_path / "out") / "tradeoffs.md").read_text()
    size_section = md.split("### Accuracy vs non-zero size")[1]
    assert "student-kd T=2 a=0.5 p=0.5" in size_section and "p=0.6" not in size_section


def test_pareto_front_keeps_exact_ties_and_drops_dominated() -> None:
    df = pd.DataFrame({"variant": list("abcd"), "test_acc_mean": [0.9, 0.9, 0.8, 0.95],
                       "latency_ms_mean": [2.0, 2.0, 2.0, 5.0], "n": [1, 1, 1, 0]})
    # a and b are identical (both kept), c is beaten by them, d has no ok seed
    assert pareto_front(df, "latency_ms_mean")["variant"].tolist() == ["a", "b"]


@pytest.fixture
def two_seed_exp(tmp_path: Path) -> Path:
    """Two seeds with round numbers: every mean, std, CI and delta below is computable by hand."""
    exp = tmp_path / "seeds"
    for seed, (ta, ba, s4, s2, pr) in enumerate([(0.90, 0.80, 0.85, 0.80, 0.83), (0.92, 0.84, 0.87, 0.90, 0.83)]):
        put(exp, "teacher", seed, acc=ta, lat=4.0 + 2 * seed, nz=40.0)
        put(exp, "baseline", seed, acc=ba, lat=2.0, nz=6.0)
        put(exp, "student", seed, t=4, a=0.9, acc=s4, lat=2.0, nz=6.0)
        put(exp, "student", seed, t=2, a=0.9, acc=s2, lat=2.0, nz=6.0)
        put(exp, "pruned", seed, t=4, a=0.9, p=0.5, acc=pr, lat=1.5, nz=3.0)
    return exp


def test_two_seeds_mean_std_ci_n_and_deltas(two_seed_exp: Path) -> None:
    t = tradeoff_tables(two_seed_exp)
    v = t.variants.set_index("variant")
    teacher = v.loc["teacher"]
    assert teacher.n == 2 and teacher.seeds == 2 and teacher.status == "ok"
    assert teacher.test_acc_mean == pytest.approx(0.91)
    assert teacher.test_acc_std == pytest.approx(math.sqrt(2) * 0.01)  # sample std of 0.90, 0.92
    assert teacher.test_acc_ci95 == pytest.approx(T975_DF1 * 0.01)  # t * std / sqrt(2)
    assert teacher.latency_ms_mean == pytest.approx(5.0) and teacher.latency_ms_std == pytest.approx(math.sqrt(2))
    pruned = v.loc["student-kd T=4 a=0.9 p=0.5"]
    assert pruned.test_acc_mean == pytest.approx(0.83) and pruned.test_acc_std == pytest.approx(0.0)
    student = v.loc["student-kd T=4 a=0.9"]
    assert student.test_acc_mean == pytest.approx(0.86)
    # deltas are differences of means
    assert student.d_test_acc_vs_teacher == pytest.approx(-0.05)
    assert student.d_test_acc_vs_baseline == pytest.approx(0.04)
    assert math.isnan(student.d_test_acc_vs_unpruned)
    assert pruned.d_test_acc_vs_unpruned == pytest.approx(-0.03)
    assert pruned.d_test_acc_vs_teacher == pytest.approx(-0.08)
    assert pruned.d_test_acc_vs_baseline == pytest.approx(0.01)
    assert pruned.d_size_nonzero_mb_vs_unpruned == pytest.approx(-3.0)
    assert pruned.d_latency_ms_vs_teacher == pytest.approx(-3.5)
    assert math.isnan(teacher.d_test_acc_vs_teacher) and teacher.d_test_acc_vs_baseline == pytest.approx(0.09)
    # marginals over the ok rows of all seeds
    by_t = t.by_temperature.set_index("temperature")
    assert by_t.loc[2.0, "test_acc_mean"] == pytest.approx(0.85) and by_t.loc[2.0, "n"] == 2
    assert by_t.loc[2.0, "test_acc_std"] == pytest.approx(math.sqrt(0.005))
    assert by_t.loc[4.0, "test_acc_mean"] == pytest.approx(0.86)
    assert t.by_alpha.set_index("alpha").loc[0.9, ["test_acc_mean", "n"]].tolist() == [pytest.approx(0.855), 4]
    by_p = t.by_prune.set_index("prune_amount")
    assert by_p.index.tolist() == [0.0, 0.5]  # p = 0 is the unpruned KD students
    assert by_p.loc[0.0, "test_acc_mean"] == pytest.approx(0.855)
    assert by_p.loc[0.5, "test_acc_mean"] == pytest.approx(0.83)
    md = tradeoffs_md(two_seed_exp)
    # 91 ± 12.71 (t with 1 dof) as an interval, clipped to what an accuracy can be
    assert "| teacher | ok | 2 | 91.00 ± 1.41 | 78.3–100.0 (seeds) |" in md
    assert "| student-kd T=4 a=0.9 p=0.5 | -8.00 | +1.00 | -3.00 |" in md


def tradeoffs_md(exp: Path) -> str:
    return (analyze(exp, exp / "out") / "tradeoffs.md").read_text()


def test_results_csv_one_row_per_variant_and_seed_with_reference_columns_first(two_seed_exp: Path) -> None:
    out = analyze(two_seed_exp, two_seed_exp / "out")
    assert out == two_seed_exp / "out"
    text = (out / "results.csv").read_text()
    assert text.startswith("Variant,Accuracy,LatencyMs,SizeMB,")
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns[:4]) == ["Variant", "Accuracy", "LatencyMs", "SizeMB"]
    assert len(csv) == 10  # 5 variants x 2 seeds
    assert {"stage", "seed", "status", "size_nonzero_mb", "latency_p90_ms", "key"} <= set(csv.columns)
    row = csv[(csv["Variant"] == "teacher") & (csv["seed"] == 1)].iloc[0]
    assert row.Accuracy == pytest.approx(0.92) and row.LatencyMs == pytest.approx(6.0) and row.SizeMB == 40.0


def test_default_out_dir_is_experiment_analysis(two_seed_exp: Path) -> None:
    out = analyze(two_seed_exp)
    assert out == two_seed_exp / "analysis"
    assert sorted(p.name for p in out.iterdir()) == ["metrics_grid.png", "results.csv", "tradeoffs.md"]


def test_headline_of_a_sweep_where_every_variant_failed_lists_them(tmp_path: Path) -> None:
    """Seen on an H200: every trial failed, and the end-of-run table raised instead of saying so."""
    exp = tmp_path / "all-failed"
    put(exp, "teacher", status="failed", error="RuntimeError: Input type and weight type should be the same")
    put(exp, "baseline", status="skipped", error="teacher failed")
    text = headline_table(read_results(exp / "results"))
    assert "2 variants: 1 failed, 1 skipped" in text
    assert "not ok: teacher (failed); student-ce (no KD) (skipped)" in text


def test_failed_variant_listed_with_status_and_error_not_dropped(tmp_path: Path) -> None:
    exp = tmp_path / "failed"
    put(exp, "teacher", acc=0.95, lat=4.0, nz=40.0)
    put(exp, "baseline", acc=0.80, lat=2.0, nz=6.0)
    put(exp, "student", t=4, a=0.9, acc=0.90, lat=2.0, nz=6.0)
    put(exp, "pruned", t=4, a=0.9, p=0.5, status="failed", error="CUDA out of memory | tried\nto allocate")
    put(exp, "pruned", t=4, a=0.9, p=0.3, status="skipped", error="parent failed")
    # mixed seeds: one ok, one failed
    put(exp, "student", 0, t=2, a=0.9, acc=0.70, lat=2.0, nz=6.0)
    put(exp, "student", 1, t=2, a=0.9, status="failed", error="NaN loss")
    out = analyze(exp, tmp_path / "out")
    csv = pd.read_csv(out / "results.csv")
    failed = csv[csv["Variant"] == "student-kd T=4 a=0.9 p=0.5"]
    assert len(failed) == 1 and failed.iloc[0].status == "failed" and "CUDA out of memory" in failed.iloc[0].error
    assert pd.isna(failed.iloc[0].Accuracy)
    assert csv[csv["Variant"] == "student-kd T=4 a=0.9 p=0.3"].iloc[0].status == "skipped"
    md = (out / "tradeoffs.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| student-kd T=4 a=0.9 p=0.5 | failed |"))
    assert "CUDA out of memory \\| tried to allocate" in line  # escaped, one table row
    assert "| student-kd T=4 a=0.9 p=0.3 | skipped | 0 |" in md
    assert "| student-kd T=2 a=0.9 | ok 1/2, failed 1/2 | 1 |" in md
    t = tradeoff_tables(exp)
    assert 0.5 not in t.by_prune["prune_amount"].tolist() and 0.3 not in t.by_prune["prune_amount"].tolist()
    assert "student-kd T=4 a=0.9 p=0.5" not in t.pareto_size["variant"].tolist()
    # the mixed variant's mean uses its ok seed only
    assert t.variants.set_index("variant").loc["student-kd T=2 a=0.9", "test_acc_mean"] == pytest.approx(0.70)
    assert "not ok: " in headline_table(read_results(exp / "results"))


def test_partial_sweep_reports_missing_planned_variants(tmp_path: Path) -> None:
    exp = tmp_path / "partial"
    exp.mkdir()
    write_plan(exp, [
        ("teacher", 0, None, None, None), ("baseline", 0, None, None, None),
        ("student", 0, 4.0, 0.9, None), ("pruned", 0, 4.0, 0.9, 0.5)])
    put(exp, "teacher", acc=0.95, lat=4.0, nz=40.0)
    put(exp, "baseline", acc=0.80, lat=2.0, nz=6.0)
    loaded = load_experiment(exp)
    assert loaded.missing == ["student-T4-a0.9-s0", "pruned-T4-a0.9-p0.5-s0"]
    assert loaded.missing_note == "2 of 4 planned variants missing"
    md = (analyze(exp, tmp_path / "out") / "tradeoffs.md").read_text()
    assert "2 of 4 planned variants missing" in "\n".join(md.splitlines()[:4])
    assert "| student-kd T=4 a=0.9 p=0.5 | missing | 0 |" in md
    assert "2 of 4 planned variants missing" in headline_table(loaded)
    assert tradeoff_tables(loaded).missing_note == "2 of 4 planned variants missing"
    put(exp, "student", t=4, a=0.9, acc=0.9, lat=2.0, nz=6.0)
    put(exp, "pruned", t=4, a=0.9, p=0.5, acc=0.88, lat=2.0, nz=3.0)
    assert load_experiment(exp).missing == [] and "planned variants missing" not in tradeoffs_md(exp)


def test_corrupt_result_files_are_reported_by_path(tmp_path: Path) -> None:
    exp = tmp_path / "corrupt"
    exp.mkdir()
    write_plan(exp, [("teacher", 0, None, None, None), ("student", 0, 4.0, 0.9, None),
                     ("pruned", 0, 4.0, 0.9, 0.5)])
    put(exp, "teacher", acc=0.95, lat=4.0, nz=40.0)
    truncated = exp / "results" / f"{put(exp, 'student', t=4, a=0.9, acc=0.9, lat=2.0, nz=6.0)}.parquet"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage = exp / "results" / "pruned-T4-a0.9-p0.5-s0.parquet"
    garbage.write_bytes(b"not parquet at all")
    empty = exp / "results" / "student-T2-a0.5-s0.parquet"  # not in the plan: coordinates come from its name
    empty.write_bytes(b"")
    for f in (truncated, garbage, empty):
        with pytest.raises(ResultError):
            read_row(f)  # the files really are damaged
    loaded = load_experiment(exp)
    assert sorted(u.split(": ")[0] for u in loaded.unreadable) == sorted(map(str, (truncated, garbage, empty)))
    assert loaded.missing == []  # damaged is not missing: the file is there
    out = analyze(exp, tmp_path / "out")
    md = (out / "tradeoffs.md").read_text()
    for f in (truncated, garbage, empty):
        assert str(f) in md
    assert "| student-kd T=4 a=0.9 | unreadable | 0 |" in md
    assert "| student-kd T=2 a=0.5 | unreadable | 0 |" in md
    csv = pd.read_csv(out / "results.csv")
    assert (csv.set_index("key").loc[["student-T4-a0.9-s0", "pruned-T4-a0.9-p0.5-s0", "student-T2-a0.5-s0"],
                                     "status"] == "unreadable").all()
    assert csv.set_index("key").loc["teacher-s0", "status"] == "ok"
    assert str(garbage) in headline_table(loaded)


def test_metrics_grid_png_is_wide_and_high_dpi(two_seed_exp: Path, pareto_exp: Path) -> None:
    for exp in (two_seed_exp, pareto_exp):  # error bars (n = 2) and failed cells
        width, height, dpi = png_info(analyze(exp, exp / "out") / "metrics_grid.png")
        assert width >= 1200 and height >= 800 and dpi >= 149.9


def test_empty_experiment_still_writes_all_outputs(tmp_path: Path) -> None:
    exp = tmp_path / "empty"
    exp.mkdir()
    write_plan(exp, [("teacher", 0, None, None, None)])
    out = analyze(exp, tmp_path / "out")
    assert "1 of 1 planned variants missing" in (out / "tradeoffs.md").read_text()
    assert png_info(out / "metrics_grid.png")[0] >= 1200
    assert (out / "results.csv").read_text().startswith("Variant,Accuracy,LatencyMs,SizeMB")


def test_uri_and_local_path_read_the_same(two_seed_exp: Path, tmp_path: Path) -> None:
    local = load_experiment(two_seed_exp).rows
    uri = load_experiment(two_seed_exp.resolve().as_uri()).rows  # file:///… goes through FileSystem.from_uri
    cols = ["variant", "seed", "test_acc", "latency_ms", "size_nonzero_mb", "status"]
    pd.testing.assert_frame_equal(local[cols], uri[cols])
    out = analyze(two_seed_exp.resolve().as_uri(), (tmp_path / "u").as_uri())
    assert out == tmp_path / "u" and (out / "metrics_grid.png").exists()  # file:// is local: a Path comes back


def test_headline_table_accepts_read_results_rows(two_seed_exp: Path) -> None:
    text = headline_table(read_results(two_seed_exp / "results"))
    first = {line.split("  ")[0] for line in text.splitlines()}
    assert {"teacher", "student-ce (no KD)", "student-kd T=4 a=0.9"} <= first
    assert "91.00 ± 1.41" in text and "5 variants: 5 ok" in text


def test_t_critical_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for dof in [*range(1, 31), 31, 40, 60, 120, 1000]:
        assert t_critical(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=2e-4), dof
    assert math.isnan(t_critical(0))


def test_analysis_never_imports_the_training_stack() -> None:
    code = ("import sys, kdsweep.analysis as a; a.tradeoff_tables; "
            "print(sorted(m for m in ('torch', 'ray', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


GPU = "cuda:NVIDIA H100 80GB HBM3"
DEVICES = {"torch-cpu": ("torch", "cpu"), "torch-cuda": ("torch", GPU), "onnxruntime-cpu": ("onnxruntime-cpu", "cpu"),
           "onnxruntime-cuda": ("onnxruntime-cuda", GPU)}


def put_long(exp: Path, key: str, label: str, stage: str, seed: int = 0, latency: dict | None = None,
             ci: float = 0.01, **columns) -> str:
    """Write one variant's result file as the sweep does now: one row per (runtime, device), training columns repeated.

    `latency` maps a runtime label (torch-cpu, onnxruntime-cuda, ...) to its median ms; none (failed) gives one row.
    """
    base = {"variant": label, "stage": stage, "seed": seed, "key": key, "status": "ok", "latency_iters": 200,
            **columns}
    rows = [{**base, "runtime": DEVICES[rt][0], "latency_device": DEVICES[rt][1], "latency_ms": ms,
             "latency_p90_ms": ms * 1.1, "latency_ci95_ms": ci} for rt, ms in (latency or {}).items()] or [base]
    write_rows(rows, exp / "results" / f"{key}.parquet")
    return key


def fp32(params: int, nonzero: int | None = None, size_bytes: int | None = None) -> dict:
    """The size columns of an fp32 model (4 bytes a weight) and its ONNX file."""
    nonzero = params if nonzero is None else nonzero
    return {"params": params, "nonzero_params": nonzero, "size_mb": params * 4 / 1e6,
            "size_nonzero_mb": nonzero * 4 / 1e6, "size_bytes": size_bytes or params * 4 + 5000, "precision": "fp32"}


KD = {"temperature": 4.0, "alpha": 0.9}
ALL4 = ("onnxruntime-cuda", "onnxruntime-cpu", "torch-cuda", "torch-cpu")


@pytest.fixture
def runtime_exp(tmp_path: Path) -> Path:
    """A hand-built experiment in the long format: fp32 variants timed on four runtimes, INT8 ones on ORT CPU only."""
    exp = tmp_path / "runtimes"
    lat = lambda *ms: dict(zip(ALL4, ms))
    put_long(exp, "teacher-s0", "teacher", "teacher", test_acc=0.95, latency=lat(0.8, 12.0, 2.0, 20.0), **fp32(10**7))
    put_long(exp, "baseline-s0", "student-ce (no KD)", "baseline", test_acc=0.85, alpha=0.0,
             latency=lat(0.5, 3.0, 1.5, 5.0), **fp32(1_500_000))
    for seed, (acc, cuda, cpu) in enumerate([(0.90, 0.51, 3.05), (0.92, 0.52, 3.10)]):
        put_long(exp, f"student-T4-a0.9-s{seed}", "student-kd T=4 a=0.9", "student", seed, test_acc=acc,
                 latency=lat(cuda, cpu, 1.52, 5.1), **KD, **fp32(1_500_000))
    put_long(exp, "pruned-T4-a0.9-p0.5-s0", "student-kd T=4 a=0.9 p=0.5", "pruned", test_acc=0.89, prune_amount=0.5,
             prune_method="l1_unstructured", parent="student-T4-a0.9-s0", latency=lat(0.51, 3.05, 1.52, 5.1), **KD,
             **fp32(1_500_000, nonzero=750_000))
    put_long(exp, "pruned-T4-a0.9-p0.5-structured-s0", "student-kd T=4 a=0.9 p=0.5 structured", "pruned",
             test_acc=0.87, prune_amount=0.5, prune_method="l1_structured", parent="student-T4-a0.9-s0",
             latency=lat(0.35, 1.8, 1.0, 3.0), **KD, **fp32(750_000))
    put_long(exp, "pruned-T4-a0.9-p0.7-structured-s0", "student-kd T=4 a=0.9 p=0.7 structured", "pruned",
             status="failed", error="RuntimeError: boom", prune_amount=0.7, prune_method="l1_structured", **KD)
    int8 = {"stage": "quantized", "precision": "int8", "latency": {"onnxruntime-cpu": None}}
    for key, label, parent, acc, params, ms, cols in (
            ("int8-student-T4-a0.9-s0", "student-kd T=4 a=0.9 int8", "student-T4-a0.9-s0", 0.895, 1_500_000, 1.2, KD),
            ("int8-teacher-s0", "teacher int8", "teacher-s0", 0.94, 10**7, 4.0, {})):
        put_long(exp, key, label, int8["stage"], test_acc=acc, parent=parent, precision="int8", params=params,
                 nonzero_params=params, size_mb=params / 1e6, size_nonzero_mb=params / 1e6, size_bytes=params + 9000,
                 top1_agreement=0.99, onnx_max_abs_diff=0.05, latency={"onnxruntime-cpu": ms}, **cols)
    return exp


def test_headline_runtime_is_onnxruntime_and_counts_are_per_variant(runtime_exp: Path) -> None:
    t = tradeoff_tables(runtime_exp)
    v = t.variants.set_index("variant")
    assert len(t.variants) == 8 and (v["status"] == "ok").sum() == 7  # not multiplied by the four runtimes
    assert v.loc["teacher", "latency_runtime"] == "onnxruntime-cuda" and v.loc["teacher", "latency_ms_mean"] == 0.8
    assert v.loc["teacher int8", "latency_runtime"] == "onnxruntime-cpu"  # INT8 was not timed on CUDA
    assert v.loc["teacher", "kind"] == "teacher" and v.loc["teacher int8", "kind"] == "int8"
    assert v.loc["student-kd T=4 a=0.9 p=0.5 structured", "kind"] == "structured"
    student = v.loc["student-kd T=4 a=0.9"]
    # two seeds, four runtime rows each: statistics over the two seeds, not eight rows
    assert student.n == 2 and student.seeds == 2 and student.test_acc_mean == pytest.approx(0.91)
    assert student.test_acc_std == pytest.approx(math.sqrt(2) * 0.01)
    assert student.latency_ms_mean == pytest.approx(0.515) and student.size_bytes_mean == 6_005_000
    assert t.by_temperature.set_index("temperature").loc[4.0, "n"] == 2
    assert any("runtimes differ" in n for n in t.notes)


def test_forced_runtime_label_or_name(runtime_exp: Path) -> None:
    t = tradeoff_tables(runtime_exp, runtime="torch-cpu")
    v = t.variants.set_index("variant")
    assert v.loc["teacher", "latency_ms_mean"] == 20.0 and v.loc["student-kd T=4 a=0.9", "latency_ms_mean"] == 5.1
    assert math.isnan(v.loc["teacher int8", "latency_ms_mean"])  # no torch row: out of the latency front
    assert "teacher int8" not in t.pareto_latency["variant"].tolist()
    assert "teacher int8" in t.pareto_size["variant"].tolist()  # still on the fronts that need no latency
    torch = tradeoff_tables(runtime_exp, runtime="torch").variants.set_index("variant")
    assert torch.loc["teacher", ["latency_runtime", "latency_ms_mean"]].tolist() == ["torch-cuda", 2.0]
    with pytest.raises(ValueError, match="'tensorrt'.*onnxruntime-cuda, onnxruntime-cpu, torch-cuda, torch-cpu"):
        tradeoff_tables(runtime_exp, runtime="tensorrt")


def test_latency_by_runtime_pivot(runtime_exp: Path) -> None:
    t = tradeoff_tables(runtime_exp)
    wide = t.latency_by_runtime
    assert list(wide.columns) == list(ALL4)
    assert len(wide) == 7 and "student-kd T=4 a=0.9 p=0.7 structured" not in wide.index  # the failed one
    assert wide.loc["teacher", "onnxruntime-cpu"] == 12.0 and wide.loc["teacher", "torch-cpu"] == 20.0
    assert wide.loc["student-kd T=4 a=0.9", "onnxruntime-cpu"] == pytest.approx(3.075)
    assert math.isnan(wide.loc["teacher int8", "torch-cpu"])
    long = t.latency_runtimes.set_index(["variant", "latency_runtime"])
    assert long.loc[("teacher", "torch-cuda"), ["latency_device", "n"]].tolist() == [GPU, 1]
    assert long["headline"].sum() == 7 and long.loc[("teacher", "onnxruntime-cuda"), "headline"]
    assert long.loc[("teacher", "onnxruntime-cuda"), "latency_spread_ms"] == pytest.approx(0.01)
    # the same numbers as a pandas user's one-call pivot of the raw rows
    raw = load_experiment(runtime_exp).rows
    cpu = raw[raw["runtime"] == "onnxruntime-cpu"].pivot_table(index="variant", values="latency_ms")
    assert cpu.loc["student-kd T=4 a=0.9", "latency_ms"] == pytest.approx(3.075)


def test_int8_deltas_are_against_the_fp32_parent_on_the_same_runtime(runtime_exp: Path) -> None:
    v = tradeoff_tables(runtime_exp).variants.set_index("variant")
    q = v.loc["student-kd T=4 a=0.9 int8"]
    assert q.parent == "student-kd T=4 a=0.9" and q.precision == "int8"
    assert q.d_test_acc_vs_parent == pytest.approx(0.895 - 0.91)
    # both on onnxruntime-cpu (the parent's headline is CUDA, 0.515 ms: not comparable)
    assert q.d_latency_ms_vs_parent == pytest.approx(1.2 - 3.075)
    assert q.d_size_mb_vs_parent == pytest.approx(1.5 - 6.0) and q.d_size_bytes_vs_parent == 1_509_000 - 6_005_000
    assert v.loc["teacher int8", "d_test_acc_vs_parent"] == pytest.approx(-0.01)
    assert v.loc["teacher int8", "d_latency_ms_vs_teacher"] == pytest.approx(4.0 - 12.0)
    assert math.isnan(v.loc["student-kd T=4 a=0.9 p=0.5", "d_test_acc_vs_parent"])  # only INT8 has a parent delta
    assert v.loc["student-kd T=4 a=0.9 p=0.5 structured", "d_test_acc_vs_unpruned"] == pytest.approx(0.87 - 0.91)


def test_prune_marginal_by_method_and_fronts_span_every_kind(runtime_exp: Path) -> None:
    t = tradeoff_tables(runtime_exp)
    by_p = t.by_prune
    assert [(p, m) for p, m in zip(by_p["prune_amount"], by_p["prune_method"])] == [
        (0.0, None), (0.5, "l1_unstructured"), (0.5, "l1_structured")]
    assert by_p["test_acc_mean"].tolist() == pytest.approx([0.91, 0.89, 0.87]) and by_p["n"].tolist() == [2, 1, 1]
    assert t.pareto_latency["variant"].tolist() == ["student-kd T=4 a=0.9 p=0.5 structured", "student-kd T=4 a=0.9",
                                                    "teacher"]
    # non-zero size: INT8 weights are one byte; unstructured pruning only shrinks this size, not the ONNX file
    front = ["student-kd T=4 a=0.9 int8", "student-kd T=4 a=0.9", "teacher int8", "teacher"]
    assert t.pareto_size["variant"].tolist() == front
    assert t.pareto_bytes["variant"].tolist() == front
    # the same file bytes as its dense parent: beaten by it on the bytes front
    assert not t.variants.set_index("variant").loc["student-kd T=4 a=0.9 p=0.5", "pareto_bytes"]
    text = headline_table(t)
    roles = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "best structured" in roles["student-kd T=4 a=0.9 p=0.5 structured"]
    assert "best int8" in roles["teacher int8"] and "best unstructured" in roles["student-kd T=4 a=0.9 p=0.5"]
    assert "onnxruntime-cuda" in roles["teacher"] and "onnxruntime-cpu" in roles["teacher int8"]
    assert "8 variants: 7 ok, 1 failed" in text


def test_long_format_outputs(runtime_exp: Path, tmp_path: Path) -> None:
    out = analyze(runtime_exp, tmp_path / "out")
    csv = pd.read_csv(out / "results.csv")
    # one row per (variant, seed), as the reference CSV: 6 fp32 ones, 2 INT8, the failed variant; LatencyMs from the
    # headline runtime, then one column per runtime in RUNTIME_ORDER (the Parquet rows stay one per runtime)
    per = [f"LatencyMs[{r}]" for r in ALL4]
    assert list(csv.columns[:8]) == ["Variant", "Accuracy", "LatencyMs", "SizeMB", *per]
    assert len(csv) == 6 + 2 + 1 and not csv.duplicated(["key"]).any()
    assert {"latency_runtime", "precision", "prune_method", "size_bytes", "latency_ci95_ms"} <= set(csv.columns)
    teacher = csv.set_index("key").loc["teacher-s0"]
    assert teacher.LatencyMs == 0.8 and teacher.latency_runtime == "onnxruntime-cuda"
    assert teacher[per].tolist() == [0.8, 12.0, 2.0, 20.0]
    int8 = csv.set_index("key").loc["int8-teacher-s0"]
    assert int8.LatencyMs == 4.0 and int8["LatencyMs[onnxruntime-cpu]"] == 4.0 and pd.isna(int8[per[0]])
    failed = csv[csv.status == "failed"].iloc[0]
    assert pd.isna(failed.LatencyMs) and failed[per].isna().all()
    md = (out / "tradeoffs.md").read_text()
    assert "8 variants (7 ok, 1 failed)" in md
    assert "runtime per variant (onnxruntime-cuda: 5, onnxruntime-cpu: 2)" in md
    assert f"| onnxruntime-cuda ({GPU}) | onnxruntime-cpu (cpu) | torch-cuda ({GPU}) | torch-cpu (cpu) |" in md
    assert "| teacher | **0.800 ± 0.010** | 12.000 ± 0.010 | 2.000 ± 0.010 | 20.000 ± 0.010 |" in md
    assert "| teacher int8 | — | **4.000 ± 0.010** | — | — |" in md
    assert "### Accuracy vs ONNX file size" in md and "| teacher int8 | int8 | 5.0e-02 | 99.00 |" in md
    assert "| 0.5 | l1_structured | 1 | 1 | 87.00 |" in md
    width, height, dpi = png_info(out / "metrics_grid.png")
    assert width >= 1200 and height >= 800 and dpi >= 149.9


@pytest.fixture
def tied_exp(tmp_path: Path) -> Path:
    """Six identical dense students of equal accuracy whose medians differ by 0-3 % with CIs of ±5 %, and a teacher."""
    exp = tmp_path / "ties"
    put_long(exp, "teacher-s0", "teacher", "teacher", test_acc=0.95, latency={"onnxruntime-cpu": 10.0}, ci=0.5,
             **fp32(10**7))
    settings = [(t, a) for t in (2.0, 4.0, 6.0) for a in (0.5, 0.9)]
    for (t, a), noise in zip(settings, (0.0, 0.01, 0.015, 0.02, 0.025, 0.03)):
        ms = 2.0 * (1 + noise)
        put_long(exp, f"student-T{t:g}-a{a:g}-s0", f"student-kd T={t:g} a={a:g}", "student", test_acc=0.9,
                 temperature=t, alpha=a, latency={"onnxruntime-cpu": ms}, ci=0.05 * ms, **fp32(1_500_000))
    return exp


def test_latency_ties_within_the_noise_single_out_none(tied_exp: Path) -> None:
    t = tradeoff_tables(tied_exp)
    students = [v for v in t.variants["variant"] if v.startswith("student-kd")]
    assert sorted(t.pareto_latency["variant"]) == sorted([*students, "teacher"])  # all six kept, none picked
    assert t.variants["pareto_latency"].all()
    text = headline_table(t)
    assert "fastest" not in "".join(line.split("  ")[1] for line in text.splitlines()[1:] if "  " in line)
    assert "fastest: a tie within the latency noise between 6 variants (2.000–2.060 ms)" in text
    # without the CIs (only the relative tolerance), noise alone would single out the 2.000 ms one
    assert pareto_front(t.variants, "latency_ms_mean")["variant"].tolist() == ["student-kd T=2 a=0.5", "teacher"]
    # one student really faster (beyond both CIs) is singled out and beats the others on latency
    put_long(tied_exp, "student-T8-a0.9-s0", "student-kd T=8 a=0.9", "student", test_acc=0.9, temperature=8.0,
             alpha=0.9, latency={"onnxruntime-cpu": 1.5}, ci=0.05, **fp32(1_500_000))
    t = tradeoff_tables(tied_exp)
    assert t.pareto_latency["variant"].tolist() == ["student-kd T=8 a=0.9", "teacher"]
    assert "student-kd T=8 a=0.9" in next(x for x in headline_table(t).splitlines() if "fastest" in x)


def test_old_format_experiment_reads_as_torch_fp32_unstructured(two_seed_exp: Path) -> None:
    assert "runtime" not in pq.read_schema(two_seed_exp / "results" / "teacher-s0.parquet").names
    rows = load_experiment(two_seed_exp).rows
    assert (rows["runtime"] == "torch").all() and (rows["precision"] == "fp32").all()
    assert rows.loc[rows["stage"] == "pruned", "prune_method"].eq("l1_unstructured").all()
    assert rows.loc[rows["stage"] != "pruned", "prune_method"].isna().all() and rows["size_bytes"].isna().all()
    t = tradeoff_tables(two_seed_exp)
    assert (t.variants["latency_runtime"] == "torch-cpu").all() and t.pareto_bytes.empty
    assert list(t.latency_by_runtime.columns) == ["torch-cpu"]
    assert t.by_prune[["prune_amount", "prune_method"]].values.tolist() == [[0.0, None], [0.5, "l1_unstructured"]]
    text = headline_table(t)
    assert "best pruned" in text and "latency: batch-1 median on torch-cpu (cpu)" in text
    assert "runtime torch-cpu" in tradeoffs_markdown(t)


def test_new_keys_and_labels_of_damaged_and_missing_variants(tmp_path: Path) -> None:
    exp = tmp_path / "keys"
    exp.mkdir()
    plan = [{"stage": "pruned", "seed": 0, "temperature": 4.0, "alpha": 0.9, "prune_amount": 0.5,
             "prune_method": "l1_structured", "precision": "fp32", "parent": "student-T4-a0.9-s0",
             "key": "pruned-T4-a0.9-p0.5-structured-s0"},
            {"stage": "quantized", "seed": 0, "temperature": None, "alpha": 0.0, "prune_amount": None,
             "prune_method": None, "precision": "int8", "parent": "baseline-s0", "key": "int8-baseline-s0"}]
    (exp / "plan.json").write_text(json.dumps(plan))
    (exp / "results").mkdir()
    for key in ("int8-pruned-T4-a0.9-p0.3-structured-s1", "int8-teacher-s0"):  # not in the plan: parsed from names
        (exp / "results" / f"{key}.parquet").write_bytes(b"garbage")
    v = tradeoff_tables(exp).variants.set_index("variant")
    assert v.loc["student-kd T=4 a=0.9 p=0.5 structured", ["status", "kind"]].tolist() == ["missing", "structured"]
    assert v.loc["student-ce (no KD) int8", ["status", "kind"]].tolist() == ["missing", "int8"]
    damaged = v.loc["student-kd T=4 a=0.9 p=0.3 structured int8"]
    assert damaged.status == "unreadable" and damaged.kind == "int8" and damaged.prune_method == "l1_structured"
    assert v.loc["teacher int8", "status"] == "unreadable"


@pytest.mark.slow
def test_analysis_of_real_smoke_experiment(smoke_exp: Path, tmp_path: Path) -> None:
    raw = read_results(smoke_exp / "results")
    out = analyze(smoke_exp, tmp_path / "analysis")
    width, _, dpi = png_info(out / "metrics_grid.png")
    assert width >= 1200 and dpi >= 149.9
    csv = pd.read_csv(out / "results.csv")
    # one row per variant (one seed), each with its headline latency and one column per runtime it was timed on
    assert list(csv.columns[:4]) == ["Variant", "Accuracy", "LatencyMs", "SizeMB"] and len(csv) == 6
    assert raw["key"].nunique() == 6 and len(raw) > 6
    per = [c for c in csv.columns if c.startswith("LatencyMs[")]
    assert per == ["LatencyMs[onnxruntime-cpu]", "LatencyMs[torch-cpu]"] and csv[per].notna().all().all()
    assert (csv["LatencyMs"] == csv["LatencyMs[onnxruntime-cpu]"]).all()
    t = tradeoff_tables(smoke_exp)
    assert not t.missing_note and not t.experiment.unreadable
    assert (t.variants["status"] == "ok").all() and len(t.variants) == 6
    assert t.variants["latency_runtime"].notna().all() and len(t.latency_by_runtime) == 6
    by_key = raw.drop_duplicates("key").set_index("key")
    v = t.variants.set_index("variant")
    drop = by_key.loc["pruned-T4-a0.9-p0.5-s0", "test_acc"] - by_key.loc["student-T4-a0.9-s0", "test_acc"]
    assert v.loc["student-kd T=4 a=0.9 p=0.5", "d_test_acc_vs_unpruned"] == pytest.approx(drop)
    assert "teacher" in t.pareto_size["variant"].tolist()  # the most accurate model is always on the front
    assert t.by_prune["prune_amount"].unique().tolist() == [0.0, 0.5]
    md = (out / "tradeoffs.md").read_text()
    assert "6 variants (6 ok)" in md and "planned variants missing" not in md


# --- swept config keys (the config's `sweep:` section): the `axes` column, marginals per key, facets (issue 14) ---

AUG = ["flip", "crop"]
SWEEP_YAML = """name: sweep
sweep:
  teacher.epochs: [2]
  student.arch: [mobilenet_v3_small, mobilenet_v2]
  student.augment: [[flip, crop]]
"""


def values_of(arch: str | None = None, epochs: int | None = 2) -> dict:
    """The swept values a variant depends on: the student keys if a student, teacher.epochs if it has a teacher."""
    return ({"student.arch": arch, "student.augment": AUG} if arch else {}) | (
        {"teacher.epochs": epochs} if epochs is not None else {})


def lab(base: str, values: dict) -> str:
    """A variant label as the planner writes it: its coordinates, then ` key=value` per swept key (sorted)."""
    return base + "".join(f" {k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in sorted(values.items()))


def put_swept(exp: Path, key: str, base: str, stage: str, values: dict, seed: int = 0,
              **columns) -> str:
    """One variant of a sweep as the sweeper writes it: `axes` as canonical JSON, key and label carrying the values."""
    suffix = f"-student.arch={values['student.arch']}" if "student.arch" in values else ""
    axes = json.dumps(values, sort_keys=True, separators=(",", ":")) if values else None
    return put_long(exp, key + suffix, lab(base, values), stage, seed, axes=axes, **columns)


@pytest.fixture
def sweep_exp(tmp_path: Path) -> Path:
    """A sweep over student.arch (two values); student.augment and teacher.epochs swept to one value each.

    The baseline does not depend on the teacher (no teacher.epochs), the teacher not on the student (no student keys).
    Accuracy / latency per arch: baseline, KD student over two seeds, pruned; all computable by hand.
    """
    exp = tmp_path / "sweep"
    put_swept(exp, "teacher-s0", "teacher", "teacher", values_of(), test_acc=0.95, latency={"onnxruntime-cpu": 10.0},
              **fp32(10**7))
    for arch, base, accs, lats, pruned in (("mobilenet_v3_small", 0.80, (0.86, 0.88), (1.0, 1.0), 0.85),
                                           ("mobilenet_v2", 0.84, (0.90, 0.94), (2.0, 2.2), 0.91)):
        put_swept(exp, "baseline-s0", "student-ce (no KD)", "baseline", values_of(arch, None), test_acc=base,
                  alpha=0.0, latency={"onnxruntime-cpu": lats[0]}, **fp32(1_500_000))
        for seed, (acc, ms) in enumerate(zip(accs, lats)):
            put_swept(exp, f"student-T4-a0.9-s{seed}", "student-kd T=4 a=0.9", "student", values_of(arch), seed,
                      test_acc=acc, latency={"onnxruntime-cpu": ms}, **KD, **fp32(1_500_000))
        put_swept(exp, "pruned-T4-a0.9-p0.5-s0", "student-kd T=4 a=0.9 p=0.5", "pruned", values_of(arch),
                  test_acc=pruned, prune_amount=0.5, prune_method="l1_unstructured",
                  parent=f"student-T4-a0.9-s0-student.arch={arch}", latency={"onnxruntime-cpu": lats[0]}, **KD,
                  **fp32(1_500_000, nonzero=750_000))
    (exp / "config.yaml").write_text(SWEEP_YAML)
    return exp


V2, V3 = values_of("mobilenet_v2"), values_of("mobilenet_v3_small")
V2_KEY = "student-T4-a0.9-s1-student.arch=mobilenet_v2"


def test_swept_keys_become_columns_in_sweep_order(sweep_exp: Path, tmp_path: Path) -> None:
    loaded = load_experiment(sweep_exp)
    assert loaded.axes == ["teacher.epochs", "student.arch", "student.augment"]  # config.yaml's sweep: order
    rows = loaded.rows.set_index("key")
    assert rows.loc[V2_KEY, "student.arch"] == "mobilenet_v2"
    assert rows.loc[V2_KEY, "student.augment"] == "flip+crop"  # a list, readable
    assert rows["teacher.epochs"].dtype == "Int64" and rows.loc["teacher-s0", "teacher.epochs"] == 2
    # a key the variant does not depend on is missing, not a value
    assert pd.isna(rows.loc["teacher-s0", "student.arch"]) and pd.isna(rows.loc["teacher-s0", "student.augment"])
    assert pd.isna(rows.loc["baseline-s0-student.arch=mobilenet_v2", "teacher.epochs"])
    assert axis_value([]) == "none" and axis_value(["flip", "crop", "randaugment"]) == "flip+crop+randaugment"
    assert axis_value(0.5) == 0.5 and axis_value("resnet18") == "resnet18" and axis_value(None) == "null"
    frame, keys = expand_axes(pd.DataFrame({"axes": ['{"student.augment": []}', None, '{"kd.x": 0.5}']}))
    assert keys == ["student.augment", "kd.x"] and frame["student.augment"].tolist()[0] == "none"
    assert frame["kd.x"].dtype == float and math.isnan(frame["kd.x"][0]) and frame["kd.x"][2] == 0.5
    # without config.yaml: as first seen (the canonical JSON lists keys sorted)
    (sweep_exp / "config.yaml").unlink()
    assert load_experiment(sweep_exp).axes == ["student.arch", "student.augment", "teacher.epochs"]
    # planned variants that never wrote a file keep their swept values, label and arch
    plan = [{"stage": "student", "seed": 2, "temperature": 4.0, "alpha": 0.9, "prune_amount": None,
             "prune_method": None, "precision": "fp32", "parent": "teacher-s0", "config_hash": "x",
             "key": "student-T4-a0.9-s2-student.arch=mobilenet_v2", "axes": json.dumps(V2, sort_keys=True)},
            {"stage": "quantized", "seed": 0, "temperature": 4.0, "alpha": 0.9, "prune_amount": None,
             "prune_method": None, "precision": "int8", "parent": "student-T4-a0.9-s0-student.arch=mobilenet_v2",
             "config_hash": "y", "key": "int8-student-T4-a0.9-s0-student.arch=mobilenet_v2",
             "axes": json.dumps(V2, sort_keys=True)}]
    (sweep_exp / "plan.json").write_text(json.dumps(plan))
    v = tradeoff_tables(sweep_exp).variants.set_index("variant")
    student = v.loc[lab("student-kd T=4 a=0.9", V2)]
    assert student.status == "ok 2/3, missing 1/3" and student.n == 2 and student["student.arch"] == "mobilenet_v2"
    int8 = v.loc[lab("student-kd T=4 a=0.9", V2) + " int8"]
    assert int8.status == "missing" and int8["student.arch"] == "mobilenet_v2" and int8.kind == "int8"
    assert pd.isna(v.loc[lab("teacher", values_of()), "student.arch"])
    # a damaged `axes` value flags its file instead of losing the variant's coordinates
    bad = put_long(sweep_exp, "student-T2-a0.9-s0-x", "student-kd T=2 a=0.9 x", "student", test_acc=0.5,
                   axes='["not", "an object"]', temperature=2.0, alpha=0.9)
    damaged = load_experiment(sweep_exp)
    assert len(damaged.unreadable) == 1 and f"{bad}.parquet: ValueError: axes is not a JSON object" in \
        damaged.unreadable[0]
    assert damaged.rows.set_index("key").loc[bad, "status"] == "unreadable"


def test_experiments_without_varying_axes_read_and_report_as_before(two_seed_exp: Path, tmp_path: Path) -> None:
    loaded = load_experiment(two_seed_exp)  # written before `axes` existed: the column is absent from the files
    assert loaded.axes == [] and not [c for c in loaded.rows.columns if "." in c]
    assert list(loaded.rows.columns) == [*SCHEMA.names, "file"]
    t = tradeoff_tables(loaded)
    assert t.axes == [] and t.by_axis == {}
    md = tradeoffs_markdown(t)
    assert [x for x in md.splitlines() if x.startswith("### By")] == [
        "### By temperature T", "### By alpha", "### By prune amount p"] and "Swept keys" not in md
    assert facet_axis(t) is None
    # swept keys that take one value each: the same report and figure as the same rows with no `axes` at all
    texts, titles = [], []
    for name, axes in (("none", None), ("one", json.dumps(V2))):
        exp = tmp_path / name / "exp"
        for stage, t_, p, acc in (("teacher", None, None, 0.95), ("student", 4.0, None, 0.9),
                                  ("pruned", 4.0, 0.5, 0.88)):
            put_long(exp, f"{stage}-s0", label_of(stage, t_, 0.9, p), stage, test_acc=acc, temperature=t_,
                     alpha=None if t_ is None else 0.9, prune_amount=p, latency={"onnxruntime-cpu": 2.0},
                     axes=None if stage == "teacher" else axes, **fp32(1_000_000))
        t = tradeoff_tables(exp)
        texts.append(tradeoffs_markdown(t))
        titles.append([ax.get_title() for ax in metrics_grid(t).axes])
    assert tradeoff_tables(tmp_path / "one" / "exp").experiment.axes == ["student.arch", "student.augment",
                                                                        "teacher.epochs"]
    assert texts[0] == texts[1] and titles[0] == titles[1]
    assert "Accuracy vs latency (Pareto front: higher and further left is better)" in titles[0]


def test_marginal_per_swept_key_and_deltas_within_each_value(sweep_exp: Path) -> None:
    t = tradeoff_tables(sweep_exp)
    assert t.axes == ["student.arch"] and list(t.by_axis) == ["student.arch"]  # the one-value keys get none
    m = t.by_axis["student.arch"]
    assert m[["student.arch", "kind"]].values.tolist() == [
        ["mobilenet_v2", "baseline"], ["mobilenet_v2", "student"], ["mobilenet_v2", "unstructured"],
        ["mobilenet_v3_small", "baseline"], ["mobilenet_v3_small", "student"], ["mobilenet_v3_small", "unstructured"]]
    assert m["n"].tolist() == [1, 2, 1, 1, 2, 1]
    assert m["test_acc_mean"].tolist() == pytest.approx([0.84, 0.92, 0.91, 0.80, 0.87, 0.85])
    student = m.iloc[1]
    assert student.test_acc_std == pytest.approx(math.sqrt(2) * 0.02)  # 0.90 and 0.94
    assert student.test_acc_ci95 == pytest.approx(T975_DF1 * 0.02) and student.latency_ms_mean == pytest.approx(2.1)
    assert m.iloc[4].latency_ms_mean == pytest.approx(1.0) and m.iloc[2].size_nonzero_mb_mean == pytest.approx(3.0)
    pd.testing.assert_frame_equal(marginal(load_experiment(sweep_exp).rows, "student.arch"), m)
    with pytest.raises(ValueError, match="no axis 'student.width'.*teacher.epochs, student.arch, student.augment"):
        marginal(load_experiment(sweep_exp).rows, "student.width")
    # references share the variant's swept values: each arch's pruned model against its own KD student
    v = t.variants.set_index("variant")
    assert v.loc[lab("student-kd T=4 a=0.9 p=0.5", V2), "d_test_acc_vs_unpruned"] == pytest.approx(-0.01)
    assert v.loc[lab("student-kd T=4 a=0.9 p=0.5", V3), "d_test_acc_vs_unpruned"] == pytest.approx(-0.02)
    assert v.loc[lab("student-kd T=4 a=0.9", V2), "d_test_acc_vs_baseline"] == pytest.approx(0.08)
    assert v.loc[lab("student-kd T=4 a=0.9", V3), "d_test_acc_vs_baseline"] == pytest.approx(0.07)
    assert v.loc[lab("student-kd T=4 a=0.9", V3), "d_test_acc_vs_teacher"] == pytest.approx(-0.08)
    md = tradeoffs_markdown(t)
    assert "### By student.arch" in md and "### By teacher.epochs" not in md and "### By student.augment" not in md
    assert "| mobilenet_v2 | KD student | 1 | 2 | 92.00 ± 2.83 | 25.41 | 2.100 | 6.00 |" in md
    assert "| mobilenet_v3_small | unstructured | 1 | 1 | 85.00 | — | 1.000 | 3.00 |" in md
    # raw rows (the `axes` JSON not yet expanded) give the same per-arch variants
    text = headline_table(read_results(sweep_exp / "results"))
    assert lab("student-kd T=4 a=0.9", V2) in text and "7 variants: 7 ok" in text


def test_metrics_grid_facets_by_swept_key(sweep_exp: Path) -> None:
    t = tradeoff_tables(sweep_exp)
    assert facet_axis(t) == "student.arch"  # default: the first swept key that varies
    fig = metrics_grid(t)
    latency = [ax for ax in fig.axes if ax.get_title().endswith("Accuracy vs latency (Pareto front: higher and "
                                                                 "further left is better)")]
    assert [ax.get_title().split("\n")[0] for ax in latency] == ["student.arch = mobilenet_v2",
                                                                 "student.arch = mobilenet_v3_small"]
    assert len([ax for ax in fig.axes if "Accuracy vs non-zero size" in ax.get_title()]) == 2
    for ax in latency:  # the teacher (no student.arch) is the reference in every row; each row has its own arch
        labels = ax.get_legend_handles_labels()[1]
        assert "teacher" in labels and "no-KD baseline" in labels
        front = [a.get_text() for a in ax.texts]
        assert "T4 a0.9" in front and "teacher" in front
    heat = [ax.get_title() for ax in fig.axes if "KD students (unpruned)" in ax.get_title()
            or "pruned p = 0.5" in ax.get_title()]
    assert heat == [f"student.arch = {a}\n{k}" for a in ("mobilenet_v2", "mobilenet_v3_small")
                    for k in ("KD students (unpruned)", "pruned p = 0.5")]
    runtime = next(ax for ax in fig.axes if ax.get_title().startswith("Latency by runtime"))
    assert [x.get_text() for x in runtime.get_xticklabels()] == [
        "teacher", "no-KD baseline\nmobilenet_v2", "no-KD baseline\nmobilenet_v3_small", "KD student\nmobilenet_v2",
        "KD student\nmobilenet_v3_small", "unstructured\nmobilenet_v2", "unstructured\nmobilenet_v3_small"]
    # any swept key can be the facet, also one with a single value: one row of scatters
    one = metrics_grid(t, facet="teacher.epochs")
    assert [ax.get_title().split("\n")[0] for ax in one.axes if "Accuracy vs latency" in ax.get_title()] == [
        "teacher.epochs = 2"]
    with pytest.raises(FacetError, match="unknown key 'student.width'; swept keys of this experiment: "
                                         "teacher.epochs, student.arch, student.augment$"):
        metrics_grid(t, facet="student.width")


def test_cli_analyze_facet_and_csv_columns(sweep_exp: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad"
    assert main(["analyze", str(sweep_exp), "--out", str(bad), "--facet", "student.width"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'student.width'" in err and "teacher.epochs, student.arch, student.augment" in err
    assert not bad.exists()  # nothing written
    out = tmp_path / "good"
    assert main(["analyze", str(sweep_exp), "--out", str(out), "--facet", "student.arch"]) == 0
    width, height, _ = png_info(out / "metrics_grid.png")
    assert width >= 1200 and height > width  # two facet rows of scatters under two rows of heatmaps
    text = (out / "results.csv").read_text()
    assert text.startswith("Variant,Accuracy,LatencyMs,SizeMB,LatencyMs[onnxruntime-cpu],teacher.epochs,student.arch,"
                           "student.augment,stage,")
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows[V2_KEY]["student.augment"] == "flip+crop" and rows[V2_KEY]["Accuracy"] == "0.94"
    assert rows[V2_KEY]["teacher.epochs"] == "2"  # an integer stays one
    assert rows["baseline-s0-student.arch=mobilenet_v2"]["teacher.epochs"] == ""
    assert rows["teacher-s0"]["student.arch"] == ""
    assert "### By student.arch" in (out / "tradeoffs.md").read_text()
    # an experiment without a sweep has no key to facet by, and the error says so
    old = tmp_path / "old"
    put(old, "teacher", acc=0.9, lat=1.0, nz=4.0)
    assert main(["analyze", str(old), "--facet", "student.arch"]) == 2
    assert "swept keys of this experiment: none" in capsys.readouterr().err and not (old / "analysis").exists()
