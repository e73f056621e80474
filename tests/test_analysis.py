"""Analysis: numbers checked on crafted result sets (hand-computable), damaged and partial sweeps, real smoke output."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdsweep.analysis import analyze, headline_table, load_experiment, pareto_front, t_critical, tradeoff_tables
from kdsweep.results import ResultError, read_results, read_row, write_row

T975_DF1 = 12.7062  # Student's t, 0.975 quantile, 1 degree of freedom (two seeds)


def key_of(stage: str, seed: int, t=None, a=None, p=None) -> str:  # noqa: ANN001
    parts = [stage] + ([f"T{t:g}", f"a{a:g}"] if stage in ("student", "pruned") else [])
    return "-".join(parts + ([f"p{p:g}"] if stage == "pruned" else []) + [f"s{seed}"])


def label_of(stage: str, t=None, a=None, p=None) -> str:  # noqa: ANN001
    if stage in ("teacher", "baseline"):
        return {"teacher": "teacher", "baseline": "student-ce (no KD)"}[stage]
    return f"student-kd T={t:g} a={a:g}" + (f" p={p:g}" if stage == "pruned" else "")


def put(exp: Path, stage: str, seed: int = 0, t=None, a=None, p=None, acc=None, lat=None, nz=None,  # noqa: ANN001
        status: str = "ok", error: str | None = None) -> str:
    """Write one result row the way the sweep does (kdsweep.results.write_row); returns its key."""
    key = key_of(stage, seed, t, a, p)
    a = 0.0 if stage == "baseline" else a
    dense = 40.0 if stage == "teacher" else 6.0
    write_row({"variant": label_of(stage, t, a, p), "stage": stage, "temperature": t, "alpha": a, "prune_amount": p,
               "seed": seed, "test_acc": acc, "latency_ms": lat, "latency_p90_ms": None if lat is None else lat * 1.1,
               "latency_device": "cpu", "size_mb": dense, "size_nonzero_mb": nz,
               "size_compressed_mb": None if nz is None else nz * 0.9,
               "sparsity": None if nz is None else 1 - nz / dense, "status": status, "error": error, "key": key,
               "parent": key_of("student", seed, t, a) if stage == "pruned" else None},
              exp / "results" / f"{key}.parquet")
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
    for seed, (ta, ba, s4, s2, pa) in enumerate([(0.90, 0.80, 0.85, 0.80, 0.83), (0.92, 0.84, 0.87, 0.90, 0.83)]):
        put(exp, "teacher", seed, acc=ta, lat=4.0 + 2 * seed, nz=40.0)
        put(exp, "baseline", seed, acc=ba, lat=2.0, nz=6.0)
        put(exp, "student", seed, t=4, a=0.9, acc=s4, lat=2.0, nz=6.0)
        put(exp, "student", seed, t=2, a=0.9, acc=s2, lat=2.0, nz=6.0)
        put(exp, "pruned", seed, t=4, a=0.9, p=0.5, acc=pa, lat=1.5, nz=3.0)
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
    assert "| teacher | ok | 2 | 91.00 ± 1.41 | 12.71 |" in md
    assert "| student-kd T=4 a=0.9 p=0.5 | -8.00 | +1.00 | -3.00 |" in md


def tradeoffs_md(exp: Path) -> str:
    return (analyze(exp, exp / "out") / "tradeoffs.md").read_text()


def test_results_csv_raw_rows_with_reference_columns_first(two_seed_exp: Path) -> None:
    out = analyze(two_seed_exp, two_seed_exp / "out")
    assert out == two_seed_exp / "out"
    text = (out / "results.csv").read_text()
    assert text.startswith("Variant,Accuracy,LatencyMs,SizeMB,")
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns[:4]) == ["Variant", "Accuracy", "LatencyMs", "SizeMB"]
    assert len(csv) == 10  # 5 variants x 2 seeds, raw rows
    assert {"stage", "seed", "status", "size_nonzero_mb", "latency_p90_ms", "key"} <= set(csv.columns)
    row = csv[(csv["Variant"] == "teacher") & (csv["seed"] == 1)].iloc[0]
    assert row.Accuracy == pytest.approx(0.92) and row.LatencyMs == pytest.approx(6.0) and row.SizeMB == 40.0


def test_default_out_dir_is_experiment_analysis(two_seed_exp: Path) -> None:
    out = analyze(two_seed_exp)
    assert out == two_seed_exp / "analysis"
    assert sorted(p.name for p in out.iterdir()) == ["metrics_grid.png", "results.csv", "tradeoffs.md"]


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


@pytest.mark.slow
def test_analysis_of_real_smoke_experiment(smoke_exp: Path, tmp_path: Path) -> None:
    raw = read_results(smoke_exp / "results")
    out = analyze(smoke_exp, tmp_path / "analysis")
    width, _, dpi = png_info(out / "metrics_grid.png")
    assert width >= 1200 and dpi >= 149.9
    csv = pd.read_csv(out / "results.csv")
    assert list(csv.columns[:4]) == ["Variant", "Accuracy", "LatencyMs", "SizeMB"] and len(csv) == len(raw) == 6
    t = tradeoff_tables(smoke_exp)
    assert not t.missing_note and not t.experiment.unreadable
    assert (t.variants["status"] == "ok").all() and len(t.variants) == 6
    by_key = raw.set_index("key")
    v = t.variants.set_index("variant")
    drop = by_key.loc["pruned-T4-a0.9-p0.5-s0", "test_acc"] - by_key.loc["student-T4-a0.9-s0", "test_acc"]
    assert v.loc["student-kd T=4 a=0.9 p=0.5", "d_test_acc_vs_unpruned"] == pytest.approx(drop)
    assert "teacher" in t.pareto_size["variant"].tolist()  # the most accurate model is always on the front
    assert t.by_prune["prune_amount"].tolist() == [0.0, 0.5]
    md = (out / "tradeoffs.md").read_text()
    assert "6 variants (6 ok)" in md and "planned variants missing" not in md
