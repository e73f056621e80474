"""benchmarks/gpu_acceptance.py --cpu-smoke: every section of the GPU acceptance run end to end on CPU at toy size,
so the one command a GPU session runs cannot rot between GPU sessions (issue 15). Numbers are not checked: timings
belong in benchmarks/RESULTS.md."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_acceptance  # noqa: E402 - importable once sys.path holds benchmarks/


@pytest.mark.slow
def test_gpu_acceptance_cpu_smoke_writes_every_entry(tmp_path: Path) -> None:
    out = tmp_path / "acceptance"
    # the second seed-grid run only feeds the two-size fit, checked below without a sweep (2-core CI time)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--out", str(out),
                           "--cpu-smoke", "--skip", "seed_grid_n2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "gpu_acceptance.json").read_text())
    s = res["sections"]
    assert list(s) == ["fused_students", "cuda_tests", "seed_grid", "percell", "kd224", "pipeline", "packing",
                       "latency", "seed_grid_n2"]
    assert s.pop("seed_grid_n2") == {"skipped": "--skip"}
    assert not [k for k, v in s.items() if "error" in v or "skipped" in v]
    assert res["env"]["torch"] and res["env"]["onnxruntime"] and res["env"]["cores"] >= 1
    # the cuda tests ran in a subprocess: on a machine without a GPU each is skipped and says why
    tests = s["cuda_tests"]["tests"]
    assert len(tests) == 6 and set(s["cuda_tests"]["counts"]) <= {"passed", "skipped"}
    assert all(t["why"] for t in tests.values() if t["outcome"] == "skipped")
    for key, n in (("seed_grid", 48),):
        g = s[key]
        assert g["n_train"] == n and g["status"] == {"ok": 4} and g["latency_devices"] == ["cpu"]
        assert g["most_trials_at_once"] >= 1 and set(g["epoch_timing"]) == {"teacher", "baseline", "student", "pruned"}
        assert g["epoch_timing"]["student"]["trials"] == 1 and g["epoch_timing"]["student"]["epochs"] == 1
        # plan --estimate of the same config, for measured / estimate on the GPU; its range is 0.75x-1.5x of the
        # point estimate by construction (no timing bound)
        e = g["estimate"]
        assert 0 < e["low"] < e["seconds"] < e["high"] and e["device"] == "CPU" and g["estimate_full"] is None
    x = res["seed_grid_50k"]
    assert set(x) == {"from_epochs"} and "extrapolation" in x["from_epochs"]["label"]
    assert x["from_epochs"]["extrapolated_s"] > s["seed_grid"]["wall_s"]
    # with a second size, a straight line through both runs as well
    bigger = {**s["seed_grid"], "n_train": 96, "wall_s": s["seed_grid"]["wall_s"] + 1}
    two = gpu_acceptance.extrapolate([s["seed_grid"], bigger])
    assert two["fit"]["s_per_1000_images"] == pytest.approx(1000 / 48, rel=1e-3)
    assert two["fit"]["extrapolated_s"] == pytest.approx(s["seed_grid"]["wall_s"] + (50_000 - 48) / 48, rel=1e-3)
    assert s["percell"]["cells"] == 1 and s["percell"]["errors"] == []
    rows = s["fused_students"]["rows"]  # every arm at B = 3 (on CPU no compile or MPS arms)
    assert [(r["arm"], r["B"]) for r in rows] == [(a, 3) for a in ("fused_torchfunc", "fused_hfta", "sequential",
                                                                   "packed")]
    assert all(r["images_per_s"] > 0 for r in rows) and s["fused_students"]["hfta_max_abs_diff"] <= 1e-4
    assert s["fused_students"]["decisive"]["B"] == 3 and "vs_alone" not in s["fused_students"]["decisive"]
    for key in ("kd224", "pipeline", "packing"):
        assert s[key]["ours"] > 0 and s[key]["baseline"] > 0
    assert set(s["packing"]["params"]["trials_per_device"]) >= {"1", "2", "4"}
    lat = s["latency"]["models"]["mobilenet_v3_small"]
    assert lat["torch fp32"]["median_ms"] > 0 and lat["ort cpu fp32 (1 thread)"]["median_ms"] > 0
    md = (out / "gpu_acceptance.md").read_text()
    assert md.startswith("### GPU acceptance") and "| per-cell grid, N = 48 |" in md
    assert "| fused students: 3 fused" in md
    assert not list(Path(res["sections"]["seed_grid"]["exp"]).parents[1].glob("*")), "experiments left behind"


def test_the_fused_section_times_the_decisive_arms_first_on_a_gpu() -> None:
    import torch

    plan = gpu_acceptance.fused.arm_plan([1, 3, 9], torch.device("cuda"), compile_=True, mps=True)
    # issue 23's targets first (9 fused, one alone, 4 packed, 4 packed under MPS), then each (arm, B) once
    assert plan[:4] == [("fused_torchfunc", 9), ("sequential", 1), ("packed", 4), ("packed_mps", 4)]
    assert len(plan) == len(set(plan)) and ("fused_hfta", 9) in plan and plan[-2:] == [
        ("fused_torchfunc_compiled", 9), ("solo_compiled", 1)]
