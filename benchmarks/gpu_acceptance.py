#!/usr/bin/env python
"""kdsweep's GPU acceptance run (issue 15): one command for one GPU, 16 cores and no network (goal: <= 8 minutes).

    python benchmarks/gpu_acceptance.py --out DIR            # on the GPU machine
    python benchmarks/gpu_acceptance.py --out DIR --cpu-smoke   # every section end to end on CPU at toy size (tests)

Writes DIR/gpu_acceptance.json (every number, the command, date, machine) and DIR/gpu_acceptance.md (a section for
benchmarks/RESULTS.md), both rewritten after each section so that a run cut short still leaves what it measured.
Sections, in this order (the optional ones are skipped, and say so, when `--budget-s` would be overrun):

  env            GPU name, driver, memory; torch / CUDA / cuDNN / ONNX Runtime (and its providers) / Ray versions; CPU
  fused_students first, the decisive one (issue 23): 9 KD students fused vs one alone vs 4 packed trials (with and
                 without CUDA MPS when nvidia-cuda-mps-control exists), then B in {1, 3, 9} for every arm, with and
                 without torch.compile, 224 px, batch 128 (benchmarks/fused.py)
  cuda_tests     `pytest -m cuda tests/test_cuda.py` in a subprocess: outcome of every test (skips with their reason)
  seed_grid      configs/seed.yaml (38 variants, 224 px) on CIFAR-10-shaped synthetic data, `weights: none`, training
                 set scaled to N1 images (test set N1/5, as CIFAR-10's 50,000/10,000)
                 The full 50,000-image sweep is extrapolated from its measured epoch times (`extrapolate`).
  percell        the seed grid at N1 as a plain per-cell Ray Tune grid (benchmarks/percell.py, `full` arm): the same
                 config and scale as seed_grid, so the ratio compares orchestration alone
  kd224          one KD epoch at 224 px from cached logits vs with the teacher online (bench.bench_kd)
  pipeline       kdsweep's views of a uint8 training set kept on the device vs a PIL + transforms DataLoader at 224 px
                 (bench.bench_pipeline)
  packing        aggregate student-training images/s with 1, 2 and 4 trials on one GPU (bench.bench_packing)
  latency        batch-1 latency at 224 px, interleaved: torch fp32 / bf16 on the GPU vs ONNX Runtime (CUDA provider
                 where this onnxruntime has it; the CPU provider as a reference)
  seed_grid_n2   the seed grid again at N2 images: with N1 a second extrapolation, wall = fixed + per-image * N

Timings belong here and in RESULTS.md, never in tests; the goals are recorded next to each number, not asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import bench  # noqa: E402 - importable once sys.path holds benchmarks/
import fused  # noqa: E402 - importable once sys.path holds benchmarks/
import percell  # noqa: E402 - importable once sys.path holds benchmarks/

FULL_TRAIN = 50_000  # CIFAR-10's labelled training set
GOALS = {
    "seed_grid": "full 50,000 images at 224 px <= 10 min on one H100 (extrapolated is fine, said so)",
    "percell": ">= 5x the per-cell grid",
    "pipeline": ">= 10x the PIL DataLoader",
    "packing": "4 trials per GPU >= 1.5x the aggregate throughput of 1",
    "fused_students": "9 fused >= 3x the aggregate images/s of 4 packed trials and >= 1.5x one student alone",
}
# The seed recipe as the acceptance runs it: CIFAR-10-shaped synthetic data (no download), no pretrained weights
# (no network), everything else as configs/seed.yaml says.
SEED_OVERRIDES = ["data.dataset=synthetic", "data.download=false", "data.verify=false", "teacher.weights=none"]
# --cpu-smoke: the same code paths at toy size (one grid cell, 32 px, one epoch per stage)
SMOKE_OVERRIDES = ["data.image_size=32", "teacher.epochs=1", "student.epochs=1", "prune.recovery_epochs=1",
                   "kd.temperature=[4]", "kd.alpha=[0.9]", "prune.amount=[0.5]", "measure.warmup=1",
                   "measure.iters=3", "measure.runtimes=[torch]", "resources.gpus_per_trial=0"]
SIZES = {  # per mode: training images of the two seed-grid runs and the micro-benchmarks' sizes
    "gpu": dict(n1=512, n2=3072, kd_n=2048, kd_batch=128, pipe_n=8192, pipe_batch=128, pipe_workers=8,
                lat_warmup=20, lat_iters=200, lat_archs=("mobilenet_v3_small", "resnet18"), pack_size=224,
                pack_batch=128, pack_subset=1024, pack_window=2.0, fused_size=224, fused_batch=128, fused_steps=20,
                fused_bs=(1, 3, 9), repeats=3, tests_timeout=180),
    "smoke": dict(n1=48, n2=96, kd_n=32, kd_batch=16, pipe_n=64, pipe_batch=16, pipe_workers=0, lat_warmup=1,
                  lat_iters=3, lat_archs=("mobilenet_v3_small",), pack_size=32, pack_batch=16, pack_subset=32,
                  pack_window=0.2, fused_size=32, fused_batch=8, fused_steps=2, fused_bs=(3,), repeats=1,
                  tests_timeout=300),
}
# seconds a section is expected to need at most on the GPU: an optional section starts only if this much is left
NEEDS = {"seed_grid_n2": 100, "percell": 90, "kd224": 30, "pipeline": 20, "packing": 35, "latency": 30}
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[gpu-acceptance {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def env_info() -> dict:
    """GPU, driver and library versions, and the CPU: what every number below was measured on."""
    import onnxruntime as ort
    import ray
    import torch

    from kdsweep.runtimes import runtime_problem

    m = bench.machine()
    out = {"cpu": m["cpu"], "cores": m["cores"], "ram_gb": m["ram_gb"], "python": m["python"],
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers(), "ray": ray.__version__,
           "ort_cuda_problem": runtime_problem("onnxruntime", "cuda"), "gpu": None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count,
                      "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count()}
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip().splitlines()
            out["gpu"]["driver"] = q[0].split(",")[1].strip()
            out["gpu"]["nvidia_smi"] = q
        except (OSError, subprocess.SubprocessError, IndexError) as e:
            out["gpu"]["driver"] = f"nvidia-smi failed: {e}"
    return out


def cuda_tests(out_dir: Path, timeout: int, marker: str) -> dict:
    """Run the cuda-marked tests in a subprocess; every test's outcome, and a skip's reason, from its JUnit XML."""
    xml = out_dir / "cuda-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", marker, str(ROOT / "tests" / "test_cuda.py"), "-q", "-rs",
           "-p", "no:cacheprovider", f"--junitxml={xml}"]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout or "")[-3000:]
    res = {"command": shlex.join(cmd[1:]), "rc": rc, "seconds": round(time.perf_counter() - t, 1), "tests": {},
           "output_tail": tail}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, why = "passed", ""
            for kind in ("failure", "error", "skipped"):
                el = case.find(kind)
                if el is not None:
                    outcome, why = kind, (el.get("message") or "")[:400]
            res["tests"][case.get("name")] = {"outcome": outcome, "seconds": float(case.get("time") or 0), "why": why}
    counts: dict[str, int] = {}
    for v in res["tests"].values():
        counts[v["outcome"]] = counts.get(v["outcome"], 0) + 1
    res["counts"] = counts
    return res


def grid_overrides(n: int, smoke: bool) -> list[str]:
    """configs/seed.yaml -> the acceptance's seed grid at n training images (ONNX Runtime only where it can run)."""
    from kdsweep.runtimes import runtime_problem

    over = SEED_OVERRIDES + [f"data.train_limit={n}", f"data.test_limit={max(16, n // 5)}"]
    if not smoke and runtime_problem("onnxruntime", "cuda"):
        over.append("measure.runtimes=[torch]")  # without onnxruntime-gpu ORT would time on the CPU: not this test
    return over + (SMOKE_OVERRIDES if smoke else [])


def grid_config(n: int, smoke: bool):
    from kdsweep.config import load_config

    return load_config(str(ROOT / "configs" / "seed.yaml"), grid_overrides(n, smoke))


def epoch_timing(exp: Path) -> dict:
    """Per stage, from every trained variant's record: trials, epochs, seconds of first and later epochs, and what a
    trial spent outside its epochs (model build/load, pruning, BN recalibration, accuracy, size, MACs): the fixed
    cost per trial that a small training set exaggerates."""
    raw: dict[str, dict[str, list[float]]] = {}
    for f in (exp / "artifacts").glob("*/trained.json"):
        rec = json.loads(f.read_text())
        epochs = [h["epoch_seconds"] for h in rec.get("history", [])]
        if not epochs:
            continue
        d = raw.setdefault(f.parent.name.split("-")[0], {"first": [], "later": [], "outside": [], "epochs": []})
        d["first"].append(epochs[0])
        d["later"] += epochs[1:]
        d["outside"].append(rec["train_seconds"] - sum(epochs))
        d["epochs"].append(len(epochs))
    out = {}
    for stage, d in raw.items():
        later = d["later"] or d["first"]  # one-epoch stages: the first epoch is all there is
        out[stage] = {"trials": len(d["first"]), "epochs": sum(d["epochs"]),
                      "first_epoch_s": round(bench.med(d["first"]), 3), "later_epoch_s": round(bench.med(later), 3),
                      "outside_epochs_s": round(bench.med(d["outside"]), 3)}
    return out


def seed_grid(n: int, smoke: bool, storage: Path) -> dict:
    """One `kdsweep run` of the seed recipe at n training images: wall time, statuses, devices, per-stage timing."""
    cfg = grid_config(n, smoke)
    guess = plan_estimate(cfg)  # what `kdsweep plan --estimate` would print here, checked against the run below
    d = percell.tmpdir(str(storage), f"ours-{n}-")
    r = bench.run_ours(cfg, d)
    rows = bench.ours_rows_analysis(cfg, r["exp"], n)
    from kdsweep.results import read_results
    from kdsweep.status import most_at_once

    df = read_results(r["exp"] / "results")
    trained = df.drop_duplicates("key").dropna(subset=["trial_start", "trial_end"])  # a row per runtime
    train_images = sum(rows["passes_from_rows"].values())
    return {"n_train": n, "n_test": cfg.data.test_limit, "image_size": cfg.data.image_size,
            "wall_s": round(r["wall_s"], 2), "variants": rows["rows"], "status": rows["status"],
            "latency_devices": sorted(df.latency_device.dropna().unique().tolist()),
            "gpu_ids": sorted(str(g) for g in df.gpu_ids.dropna().unique()),
            "most_trials_at_once": most_at_once(list(zip(trained.trial_start, trained.trial_end))),
            "image_passes": rows["passes_from_rows"], "images_per_s_of_wall": round(train_images / r["wall_s"], 1),
            "milestones_s": r["waves"], "stages": rows["stages"], "epoch_timing": epoch_timing(r["exp"]),
            "overrides": grid_overrides(n, smoke), "exp": str(r["exp"]), "estimate": guess,
            "estimate_full": plan_estimate(grid_config(FULL_TRAIN, smoke)) if not smoke else None}


def plan_estimate(cfg) -> dict:
    """`kdsweep plan --estimate` for `cfg` on this machine: expected wall time, its range, and the timing's cost."""
    import torch

    from kdsweep.estimate import estimate
    from kdsweep.plan import make_plan, trial_slots

    gpus = torch.cuda.device_count()
    est = estimate(make_plan(cfg), cfg, trial_slots(cfg, os.cpu_count() or 1, gpus), gpus)
    return {"seconds": round(est.seconds, 1), "low": round(est.low, 1), "high": round(est.high, 1),
            "timed_s": round(est.timed_s, 1), "slots": est.slots, "device": est.device}


def extrapolate(runs: list[dict]) -> dict:
    """The 50,000-image sweep's wall time from the measured runs, each estimate labelled as what it is.

    `from_epochs` needs one run: its wall time plus, per stage, the extra epoch time at 50,000 images (the median later
    epoch, which includes per-epoch evaluation and checkpoint, scaled by 50,000/N) spread over the trials that ran at
    once; the teacher-logits step scaled the same way. Stages are added as if they did not overlap, and per-epoch costs
    that do not grow with N are scaled too: both make it an overestimate. `fit` needs a second size: wall = fixed +
    per-image x N through the two runs."""
    g = runs[0]
    n, scale = g["n_train"], FULL_TRAIN / g["n_train"] - 1
    at_once = max(1, g["most_trials_at_once"])
    extra = {stage: round(t["epochs"] * t["later_epoch_s"] * scale / min(at_once, t["trials"]), 1)
             for stage, t in g["epoch_timing"].items()}
    m = g["milestones_s"]
    extra["teacher logits"] = round(max(0.0, m.get("all teacher logits done", 0) - m.get("all teacher done", 0))
                                    * scale, 1)
    out = {"from_epochs": {"extrapolated_s": round(g["wall_s"] + sum(extra.values()), 1), "extra_s_by_stage": extra,
                           "trials_at_once": at_once,
                           "label": f"extrapolation from the run at N = {n}: its wall time plus each stage's median "
                                    f"later-epoch time scaled to {FULL_TRAIN} images over the trials that ran at once "
                                    "(an overestimate: stages added without overlap); the full sweep was not run"}}
    if len(runs) >= 2 and runs[1]["n_train"] != n:
        (n1, w1), (n2, w2) = ((r["n_train"], r["wall_s"]) for r in runs[:2])
        per = (w2 - w1) / (n2 - n1)
        fixed = w1 - per * n1
        out["fit"] = {"extrapolated_s": round(fixed + per * FULL_TRAIN, 1), "fixed_s": round(fixed, 1),
                      "s_per_1000_images": round(per * 1000, 3),
                      "label": f"extrapolation: wall = fixed + per-image x N through the runs at N = {n1} and {n2}; "
                               "the full sweep was not run"}
    return out


def percell_grid(n: int, smoke: bool, storage: Path) -> dict:
    """The plain per-cell Ray Tune grid on the same config and scale as seed_grid's first run."""
    import ray

    cfg = grid_config(n, smoke)
    gpus = cfg.resources.gpus_per_trial if float(ray.cluster_resources().get("GPU", 0)) else 0.0
    d = percell.tmpdir(str(storage), f"percell-{n}-")
    r = percell.run_percell(cfg, d, False, gpus)
    rows = r.pop("rows")
    return {"n_train": n, "wall_s": round(r["wall_s"], 2), "cells": len(rows), "errors": r["errors"],
            "gpus_per_trial": gpus, "latency_devices": sorted({x["latency_device"] for x in rows}),
            "trial_s_sum": round(sum(x["trial_seconds"] for x in rows), 2),
            "actor_start_s_median": round(bench.med([x["actor_start_s"] for x in rows]), 2) if rows else None,
            "passes_analytic": percell.expected_passes(cfg, n, "full")}


def latency_torch_vs_ort(size: int, warmup: int, iters: int, device, archs: tuple[str, ...]) -> dict:
    """Batch-1 latency at `size` px, all runners of a model interleaved per iteration: torch fp32/bf16 on `device`,
    ONNX Runtime's CUDA provider when this build has it, and its CPU provider (1 thread, as a sweep trial) for scale."""
    import torch

    from kdsweep.export import export_onnx
    from kdsweep.models import build_model
    from kdsweep.runtimes import ort_runner, ort_session, runtime_problem, time_interleaved, torch_runner

    out: dict = {"image_size": size, "batch": 1, "warmup": warmup, "iters": iters,
                 "ort_cuda": runtime_problem("onnxruntime", "cuda") or "available", "models": {}}
    for arch in archs:
        torch.manual_seed(0)
        model = build_model(arch, 10).eval()
        blob = export_onnx(model, torch.randn(2, 3, size, size)).onnx
        runners = {"torch fp32": torch_runner(model.to(device), size, device)}
        if device.type == "cuda":
            runners["torch bf16"] = torch_runner(model, size, device, "bf16")
            if out["ort_cuda"] == "available":
                runners["ort cuda fp32"] = ort_runner(ort_session(blob, "cuda", 1), size)
        runners["ort cpu fp32 (1 thread)"] = ort_runner(ort_session(blob, "cpu", 1), size)
        stats = time_interleaved(runners, warmup, iters)
        out["models"][arch] = {k: {"device": runners[k].device, "median_ms": round(s.median_ms, 4),
                                   "p90_ms": round(s.p90_ms, 4)} for k, s in stats.items()}
        if "ort cuda fp32" in stats:
            out["models"][arch]["ort_cuda_vs_torch_fp32"] = round(stats["torch fp32"].median_ms
                                                                  / stats["ort cuda fp32"].median_ms, 3)
    return out


def fused_students(z: dict, device) -> dict:
    """benchmarks/fused.py on this device: the decisive arms first, then every arm at each B."""
    rows = fused.bench_fused_students(z["fused_size"], z["fused_batch"], z["fused_steps"], list(z["fused_bs"]), device,
                                      threads=1, compile_=device.type == "cuda", mps=True)
    return {"rows": rows, "decisive": fused.decisive(rows), "hfta_max_abs_diff": fused.check_hfta()}


def markdown(res: dict) -> str:
    """The RESULTS.md section: one table of the acceptance goals, then the details."""
    env, s = res.get("env", {}), res["sections"]
    gpu = env.get("gpu") or {}
    head = (f"### GPU acceptance, {res['date'][:10]}: {gpu.get('name', 'no GPU (CPU smoke)')}\n\n"
            f"`{res['command']}` · driver {gpu.get('driver', '-')} · torch {env.get('torch')} (CUDA "
            f"{env.get('torch_cuda')}, cuDNN {env.get('cudnn')}) · onnxruntime {env.get('onnxruntime')} "
            f"({', '.join(env.get('ort_providers', []))}) · Ray {env.get('ray')} · CPU {env.get('cpu')}, "
            f"{env.get('cores')} cores · total {res.get('total_s', 0):.0f} s\n")
    rows = ["| check | measured | goal |", "| --- | --- | --- |"]

    def row(name: str, measured: str, goal: str = "") -> None:
        rows.append(f"| {name} | {measured} | {goal} |")

    def state(key: str) -> dict | None:
        v = s.get(key)
        if v is None:
            row(key, "not run (cut short)")
        elif "skipped" in v or "error" in v:
            row(key, f"{'skipped' if 'skipped' in v else 'error'}: {v.get('skipped') or v.get('error')}")
            return None
        return v

    if (f := state("fused_students")) is not None:
        d = f.get("decisive", {})
        row(f"fused students: {d.get('B')} fused ({d.get('fused_arm')}) vs one alone / 4 packed (/ 4 packed + MPS)",
            f"{d.get('fused_images_per_s')} images/s: {d.get('vs_alone')}x / {d.get('vs_packed4')}x"
            + (f" / {d['vs_packed4_mps']}x" if "vs_packed4_mps" in d else ""), GOALS["fused_students"])
        for r in f["rows"]:
            row(f"· {r['arm']}, B = {r['B']}", r.get("error") or f"{r['images_per_s']:.0f} images/s")
    if (t := state("cuda_tests")) is not None:
        row("cuda tests", ", ".join(f"{k} {n}" for k, n in t["counts"].items()) + f" ({t['seconds']} s)")
        for name, v in t["tests"].items():
            if v["outcome"] != "passed":
                row(f"· {name}", f"{v['outcome']}: {v['why'][:200]}")
    runs = [v for k in ("seed_grid", "seed_grid_n2") if (v := s.get(k)) and "wall_s" in v]
    for k in ("seed_grid", "seed_grid_n2"):
        if (g := state(k)) is not None:
            row(f"{k}: {g['variants']} variants, N = {g['n_train']}, {g['image_size']} px",
                f"{g['wall_s']} s wall, status {g['status']}, latency on {', '.join(g['latency_devices'])}, "
                f"at most {g['most_trials_at_once']} trials at once on GPU(s) {', '.join(g['gpu_ids']) or '-'}")
            if e := g.get("estimate"):
                row(f"· plan --estimate of {k}", f"{e['seconds']} s ({e['low']}-{e['high']}), timed in "
                    f"{e['timed_s']} s: measured / estimate = {g['wall_s'] / e['seconds']:.2f}")
            if e := g.get("estimate_full"):
                row(f"· plan --estimate at {FULL_TRAIN} images", f"{e['seconds']} s ({e['low']}-{e['high']})")
    if runs:
        for how, x in extrapolate(runs).items():
            row(f"seed grid, {FULL_TRAIN} images, {runs[0]['image_size']} px ({how})",
                f"{x['extrapolated_s']} s: {x['label']}", GOALS["seed_grid"])
    if (p := state("percell")) is not None and runs:
        row(f"per-cell grid, N = {p['n_train']}", f"{p['wall_s']} s, {p['cells']} cells, errors {p['errors']}: "
            f"kdsweep {p['wall_s'] / runs[0]['wall_s']:.2f}x faster", GOALS["percell"])
    if (k := state("kd224")) is not None:
        row("KD epoch at 224 px, cached vs online teacher", f"{k['ours']:.0f} vs {k['baseline']:.0f} images/s: "
            f"{k['ratio']:.2f}x")
    if (p := state("pipeline")) is not None:
        row(f"input pipeline vs PIL DataLoader ({p['params']['num_workers']} workers)",
            f"{p['ours']:.0f} vs {p['baseline']:.0f} images/s: {p['ratio']:.2f}x", GOALS["pipeline"])
    if (lat := state("latency")) is not None:
        for arch, runners in lat["models"].items():
            row(f"latency {arch}, batch 1, {lat['image_size']} px", ", ".join(
                f"{k} {v['median_ms']:.3f} ms" for k, v in runners.items() if isinstance(v, dict))
                + ("" if lat["ort_cuda"] == "available" else f"; ORT CUDA: {lat['ort_cuda']}"))
    if (p := state("packing")) is not None:
        t = p["params"]["trials_per_device"]
        row("packing: aggregate images/s, 1 / 2 / 4 trials per device",
            " / ".join(f"{t[k]['median']:.0f}" for k in ("1", "2", "4")) + f": 4 vs 1 {p['ratio']:.2f}x",
            GOALS["packing"])
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_acceptance.json and gpu_acceptance.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="every section on CPU at toy size (the test suite)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip an optional section that would end after this many seconds (default 420)")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out (e.g. cuda_tests)")
    ap.add_argument("--only", default="", help="comma-separated sections to run, the others skipped (env always)")
    ap.add_argument("--keep", action="store_true", help="keep the sweeps' experiment folders (printed at the end)")
    ap.add_argument("--cuda-tests", default="cuda", metavar="MARKEXPR",
                    help="pytest -m expression of the cuda tests to run (default: cuda, i.e. all of them)")
    args = ap.parse_args(argv)

    import ray
    import torch

    mode = "smoke" if args.cpu_smoke else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA GPU here; use --cpu-smoke to run it on CPU at toy size", file=sys.stderr)
        return 2
    z = SIZES[mode]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = percell.tmpdir(None, "kdsweep-gpu-acceptance-")  # experiments stay out of --out (8 files come back)
    device = torch.device("cuda", 0) if mode == "gpu" else torch.device("cpu")
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    res: dict = {"command": shlex.join(["python", "benchmarks/gpu_acceptance.py", *(argv or sys.argv[1:])]),
                 "mode": mode, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "budget_s": args.budget_s, "goals": GOALS, "sizes": z, "sections": {}}

    def save() -> None:
        res["total_s"] = round(time.perf_counter() - T0, 1)
        tmp = out_dir / "gpu_acceptance.json.tmp"
        tmp.write_text(json.dumps(res, indent=1, default=str))
        tmp.replace(out_dir / "gpu_acceptance.json")
        (out_dir / "gpu_acceptance.md").write_text(markdown(res))

    def section(name: str, fn, optional: bool = True) -> None:
        left = args.budget_s - (time.perf_counter() - T0)
        if name in skip or (only and name not in only):
            res["sections"][name] = {"skipped": "--skip" if name in skip else "--only"}
        elif optional and mode == "gpu" and left < NEEDS.get(name, 0):
            res["sections"][name] = {"skipped": f"budget: {left:.0f} s left of --budget-s {args.budget_s:g}, "
                                                f"this section needs up to {NEEDS[name]} s"}
        else:
            log(f"{name} ...")
            t = time.perf_counter()
            try:
                res["sections"][name] = fn()
            except Exception as e:  # noqa: BLE001 - one section's failure must not cost the others' numbers
                res["sections"][name] = {"error": f"{type(e).__name__}: {e}"[:500], "traceback":
                                         traceback.format_exc()[-4000:]}
            log(f"{name}: {time.perf_counter() - t:.1f} s")
        save()

    res["env"] = env_info()
    log(f"env: {res['env']}")
    save()
    section("fused_students", lambda: fused_students(z, device), optional=False)
    # the tests start their own Ray (the packing test through kdsweep.run): before ours, not beside it
    section("cuda_tests", lambda: cuda_tests(out_dir, z["tests_timeout"], args.cuda_tests), optional=False)
    gpus = torch.cuda.device_count() if mode == "gpu" else 0
    ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, _node_ip_address="127.0.0.2", include_dashboard=False,
             log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(percell)  # workers cannot import benchmarks/percell.py by name
    m = bench.machine()
    threads = 1  # what a seed-recipe trial runs with (resources.cpus_per_trial: 1)
    try:
        section("seed_grid", lambda: seed_grid(z["n1"], mode == "smoke", storage), optional=False)
        section("percell", lambda: percell_grid(z["n1"], mode == "smoke", storage))
        section("kd224", lambda: bench.bench_kd(224 if mode == "gpu" else 32, z["kd_n"], z["kd_batch"], device,
                                                z["repeats"], threads, m))
        kd = res["sections"].get("kd224", {})
        section("pipeline", lambda: bench.bench_pipeline(z["pipe_n"], z["pipe_batch"], device, z["repeats"],
                                                         z["pipe_workers"], threads, m, kd.get("ours")))
        section("packing", lambda: bench.bench_packing(z["pack_size"], z["pack_batch"], z["pack_subset"],
                                                       z["pack_window"], z["pack_subset"], z["repeats"], device,
                                                       mode == "gpu", m)[0])
        section("latency", lambda: latency_torch_vs_ort(224 if mode == "gpu" else 32, z["lat_warmup"],
                                                        z["lat_iters"], device, z["lat_archs"]))
        section("seed_grid_n2", lambda: seed_grid(z["n2"], mode == "smoke", storage))
    finally:
        ray.shutdown()
        runs = [v for k in ("seed_grid", "seed_grid_n2") if "wall_s" in (v := res["sections"].get(k, {}))]
        if runs:
            res["seed_grid_50k"] = extrapolate(runs)
        save()
        if args.keep:
            log(f"experiments kept in {storage}")
        else:
            shutil.rmtree(storage, ignore_errors=True)
    print(markdown(res))
    bad = [k for k, v in res["sections"].items() if "error" in v]
    if bad:
        log(f"sections with errors: {', '.join(bad)} (see gpu_acceptance.json)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
