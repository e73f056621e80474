#!/usr/bin/env python
"""kdsweep benchmarks: every comparison runs baseline and ours alternately (>= 3 times) and reports medians.

    python benchmarks/bench.py --quick --json bench.json          # CPU, <= 10 min on 2 cores
    python benchmarks/bench.py --json bench-gpu.json               # full mode: configs/seed.yaml, meant for a GPU
    python benchmarks/bench.py --config configs/seed.yaml --set data.train_limit=10000 --only sweep

Entries (JSON: a list of {name, baseline, ours, unit, ratio, params, device, date}; `ratio` is always "how many
times better ours is": baseline/ours for times and memory, ours/baseline for throughputs, dense/pruned for latency):

  sweep_vs_percell_full            wall time of `kdsweep run` vs a plain Ray Tune grid, one full recipe per cell
  sweep_vs_percell_shared_teacher  same, the grid's teacher trained once up front and loaded by every cell
  kd_cached_vs_online_224          one KD epoch, cached teacher logits vs online teacher forward, 224 px, images/s
  kd_cached_vs_online_32           the same at 32 px
  input_pipeline_224               make_views (uint8 in memory, batched) vs a PIL transforms DataLoader, images/s
  packing                          aggregate student-training images/s, 4 vs 1 trials per device (2 in params)
  latency_pruned_vs_dense          batch-1 latency, dense vs 50 %-pruned MobileNetV3-Small (expect ratio ~ 1)
  fused_students                   B in {1, 3, 9} KD students: fused (torch.func, HFTA-style) vs one after another
                                   vs B packed processes, aggregate images/s (benchmarks/fused.py); ratio at B = 9
  memory                           peak RSS of one trial process, per-cell grid vs kdsweep; driver, tree, sharing

Timings belong here, never in tests. Ray is started once, on loopback, and shut down at the end.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # what kdsweep run sets too: Tune's console tables off, for both arms

import percell  # noqa: E402 - importable once sys.path holds benchmarks/

# --quick: the smoke grid (3x3x3 on digits @32) with data and epochs shrunk so that 3 alternations fit in minutes.
# The 3x3x3 grid does not fit: the per-cell grid alone starts 27 fresh trial processes per run (9 runs in all), so
# --quick sweeps T x p = 3 x 3 at alpha 0.9 (9 cells: the teacher reused 9x, each KD student 3x); add
# --set "kd.alpha=[0.5,0.7,0.9]" for the full smoke grid (about 20 min on 2 cores).
QUICK_SWEEP = ["data.train_limit=128", "data.test_limit=64", "teacher.epochs=1", "student.epochs=2",
               "prune.recovery_epochs=1", "measure.warmup=2", "measure.iters=10", "kd.alpha=[0.9]"]
# micro-benchmark sizes per mode
SIZES = {
    True: dict(kd224_n=128, kd224_batch=64, kd32_n=512, kd32_batch=64, pipe_n=512, pipe_batch=64,
               pack_size=32, pack_batch=64, pack_subset=128, pack_window=2.0, pack_dataset_n=50_000,
               lat_size=224, lat_warmup=10, lat_iters=50, lat_repeats=5, fused_size=32, fused_batch=64,
               fused_steps=10),
    False: dict(kd224_n=4096, kd224_batch=128, kd32_n=16384, kd32_batch=128, pipe_n=8192, pipe_batch=128,
                pack_size=224, pack_batch=128, pack_subset=1024, pack_window=20.0, pack_dataset_n=50_000,
                lat_size=224, lat_warmup=20, lat_iters=200, lat_repeats=5, fused_size=224, fused_batch=128,
                fused_steps=20),
}
GOALS = {
    "sweep_vs_percell_full": "CPU smoke grid >= 3x; GPU seed grid >= 5x",
    "sweep_vs_percell_shared_teacher": ">= 2x",
    "kd_cached_vs_online_224": ">= 2.5x",
    "kd_cached_vs_online_32": "(none)",
    "input_pipeline_224": "GPU >= 10x; pipeline <= 5 % of a 224 px training step",
    "packing": "GPU >= 1.5x",
    "latency_pruned_vs_dense": "~1 (unstructured pruning keeps dense kernels)",
    "memory": "dataset memory flat in the number of trials",
    "fused_students": "GPU: 9 fused >= 3x 4 packed trials and >= 1.5x one student alone; CPU: measured, decides auto",
}
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> dict:
    return {"median": med(xs), "min": min(xs), "max": max(xs), "runs": [round(x, 4) for x in xs]}


# --- machine ----------------------------------------------------------------------------------------------------

def machine() -> dict:
    import psutil
    import ray
    import torch

    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": gpu, "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version()}


def device_label(m: dict, threads: int | None = None) -> str:
    if m["gpu"]:
        return f"cuda: {m['gpu']}"
    t = f", torch threads {threads}" if threads else ""
    return f"cpu: {m['cpu']} ({m['cores']} cores){t}"


# --- memory sampling --------------------------------------------------------------------------------------------

class TreeSampler:
    """Peak RSS of this process, of each Ray worker process (`ray::...`) and of the whole process tree, every ~0.2 s.

    `ray.init` starts Ray's processes as children of this driver and trial workers as children of the raylet, so the
    tree holds everything the benchmark runs.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.driver = 0
        self.worker = 0
        self.worker_title = ""
        self.tree = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval):
            try:
                procs = [me] + me.children(recursive=True)
            except psutil.Error:
                continue
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    title = (p.cmdline() or [p.name()])[0] if p.pid != me.pid else "driver"
                except psutil.Error:
                    continue
                total += rss
                if p.pid == me.pid:
                    self.driver = max(self.driver, rss)
                elif title.startswith("ray::") and rss > self.worker:
                    self.worker, self.worker_title = rss, title
            self.tree = max(self.tree, total)
            self.samples += 1

    def summary(self) -> dict:
        mb = lambda b: round(b / 1e6, 1)
        return {"driver_peak_rss_mb": mb(self.driver), "trial_peak_rss_mb": mb(self.worker),
                "trial_peak_title": self.worker_title, "tree_peak_rss_mb": mb(self.tree), "samples": self.samples}


# --- 1. sweep vs per-cell grid -------------------------------------------------------------------------------------

DONE_RE = re.compile(r"^\[([^\]]+)\] (ok|failed|skipped)")
MILESTONES = {"teacher": "teacher-", "teacher logits": "logits-", "students": "student-", "pruned": "pruned-",
              "latency": "latency"}


def wave_breakdown(lines: list[tuple[float, str]], wall: float) -> dict:
    """Seconds from the start of `kdsweep run` until each milestone, from the timestamps of its progress lines.

    One Tune run serves the whole sweep and stages overlap (a pruned variant starts as soon as its own student is
    trained), so these are cumulative times ("all students done at 41 s"), not per-stage durations.
    """
    out = {"setup done (config, dataset, Ray, first task queued)": next(
        (t for t, m in lines if m.startswith("[sweep] training") or m.startswith("[latency]")), 0.0)}
    last: dict[str, float] = {}
    for t, msg in lines:
        m = DONE_RE.match(msg)
        if m:
            for name, prefix in MILESTONES.items():
                if m.group(1).startswith(prefix):
                    last[name] = t
    out |= {f"all {k} done": round(last[k], 2) for k in MILESTONES if k in last}
    report = next((t for t, m in lines if m.startswith("variant ")), None)
    if report is not None:
        out["report (tables, analysis, figure)"] = round(wall - report, 2)
    return out


def run_ours(cfg, storage: Path) -> dict:
    from kdsweep.sweeper import run as kd_run

    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    exp = kd_run(cfg, storage=storage, name="ours", echo=lambda m: lines.append((time.perf_counter() - t0, m)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "exp": exp, "waves": wave_breakdown(lines, wall)}


def ours_rows_analysis(cfg, exp: Path, n_train: int) -> dict:
    """Image passes counted from kdsweep's result rows, and per-stage trial timing from trial_start/trial_end."""
    import torch

    from kdsweep.results import read_results

    # one row per (variant, seed, latency runtime): training is counted once per trained variant
    df = read_results(exp / "results").drop_duplicates("key")
    ti = percell.epoch_images(n_train, cfg.teacher.batch_size)
    si = percell.epoch_images(n_train, cfg.student.batch_size)
    teacher = df[df.stage == "teacher"]
    students = df[df.stage != "teacher"]
    logits = 0
    for f in (exp / "artifacts").glob("teacher_logits-*.pt"):
        t = torch.load(f, weights_only=True)
        logits += int(t.shape[0] * t.shape[1])
    passes = {"teacher_train": int(teacher.epochs_run.sum()) * ti,
              "teacher_forward": int(df.teacher_forward_images.fillna(0).sum()) + logits,
              "student_train": int(students.epochs_run.sum()) * si}
    stages = {}
    for stage, g in df.groupby("stage"):
        dur = (g.trial_end - g.trial_start)
        stages[stage] = {"trials": len(g), "train_s_sum": round(float(g.train_seconds.sum()), 2),
                         "trial_s_sum": round(float(dur.sum()), 2),
                         "in_trial_overhead_s_mean": round(float((dur - g.train_seconds).mean()), 3),
                         "trial_span_s": round(float(g.trial_end.max() - g.trial_start.min()), 2)}
    return {"status": df.status.value_counts().to_dict(), "passes_from_rows": passes,
            "cached_logit_views": logits, "stages": stages, "rows": len(df)}


def percell_passes_from_rows(cfg, rows: list[dict], n_train: int, shared: bool) -> dict:
    ti = percell.epoch_images(n_train, cfg.teacher.batch_size)
    si = percell.epoch_images(n_train, cfg.student.batch_size)
    teacher_epochs = sum(int(r["teacher_epochs"]) for r in rows) + (cfg.teacher.epochs if shared else 0)
    return {"teacher_train": teacher_epochs * ti,
            "teacher_forward": int(sum(r["teacher_forward_images"] for r in rows)),
            "student_train": sum(int(r["student_epochs"]) for r in rows) * si}


def bench_sweep(cfg, storage_root: Path, repeats: int, keep: bool, m: dict) -> tuple[list[dict], dict]:
    import ray

    from kdsweep.data import load_dataset

    n_train = len(load_dataset(cfg.data).train_y)
    gpus_total = float(ray.cluster_resources().get("GPU", 0))
    gpus = cfg.resources.gpus_per_trial if gpus_total else 0.0
    arms = {"full": [], "shared_teacher": [], "ours": []}
    for r in range(repeats):
        for arm in arms:
            d = percell.tmpdir(str(storage_root), f"{arm}-{r}-")
            log(f"sweep round {r + 1}/{repeats}: {arm} ...")
            with TreeSampler() as mem:
                if arm == "ours":
                    out = run_ours(cfg, d)
                else:
                    out = percell.run_percell(cfg, d, arm == "shared_teacher", gpus)
            out["mem"] = mem.summary()
            if arm == "ours":
                out |= ours_rows_analysis(cfg, out.pop("exp"), n_train)
            else:
                out["passes_from_rows"] = percell_passes_from_rows(cfg, out["rows"], n_train, arm == "shared_teacher")
                durs = [r_["trial_seconds"] for r_ in out["rows"]]
                out["trial_s_sum"] = round(sum(durs), 2)
                out["actor_start_s_mean"] = round(med([r_["actor_start_s"] for r_ in out["rows"]]), 2) if durs else None
                out["fresh_processes"] = sum(bool(r_.get("fresh_process")) for r_ in out["rows"])
                out["test_acc_median"] = med([r_["test_acc"] for r_ in out["rows"]]) if durs else None
                out["cells"] = len(out.pop("rows"))
            log(f"  {arm}: {out['wall_s']:.1f} s")
            arms[arm].append(out)
            if not keep:
                shutil.rmtree(d, ignore_errors=True)

    concurrency = max(1, int(float(ray.cluster_resources().get("CPU", 1)) // cfg.resources.cpus_per_trial))
    grid = f"{len(cfg.kd.temperature)}x{len(cfg.kd.alpha)}x{len(cfg.prune.amount)} (T x alpha x p), seeds {cfg.seeds}"
    common = {"grid": grid, "dataset": cfg.data.dataset, "image_size": cfg.data.image_size, "n_train": n_train,
              "n_test": cfg.data.test_limit, "epochs": {"teacher": cfg.teacher.epochs, "student": cfg.student.epochs,
                                                        "recovery": cfg.prune.recovery_epochs},
              "cpus_per_trial": cfg.resources.cpus_per_trial, "gpus_per_trial": gpus, "concurrent_trials": concurrency,
              "repeats": repeats, "order": "full, shared_teacher, ours, repeated (each arm into a fresh storage dir)"}
    ours_wall = [o["wall_s"] for o in arms["ours"]]
    o_last = arms["ours"][-1]
    ours_info = {"wall_s": spread(ours_wall), "variants": o_last["rows"], "status": o_last["status"],
                 "passes_analytic": percell.expected_passes(cfg, n_train, "ours"),
                 "passes_from_rows": o_last["passes_from_rows"], "cached_logit_views": o_last["cached_logit_views"],
                 "milestones_s_median": {k: round(med([o["waves"].get(k, 0.0) for o in arms["ours"]]), 2)
                                    for k in o_last["waves"]},
                 "milestones_s_runs": [o["waves"] for o in arms["ours"]], "stages_last_run": o_last["stages"],
                 "memory_runs": [o["mem"] for o in arms["ours"]]}
    entries = []
    for arm, name in (("full", "sweep_vs_percell_full"), ("shared_teacher", "sweep_vs_percell_shared_teacher")):
        runs = arms[arm]
        walls = [o["wall_s"] for o in runs]
        base = {"wall_s": spread(walls), "cells": runs[-1]["cells"], "errors": runs[-1]["errors"],
                "teacher_once_s": round(med([o["teacher_s"] for o in runs]), 2) if arm == "shared_teacher" else None,
                "trial_s_sum_median": round(med([o["trial_s_sum"] for o in runs]), 2),
                "actor_start_s_median": runs[-1]["actor_start_s_mean"], "fresh_processes": runs[-1]["fresh_processes"],
                "pruned_test_acc_median": runs[-1]["test_acc_median"],
                "passes_analytic": percell.expected_passes(cfg, n_train, arm),
                "passes_from_rows": runs[-1]["passes_from_rows"], "memory_runs": [o["mem"] for o in runs]}
        entries.append(make_entry(name, med(walls), med(ours_wall), "s", False,
                                  {**common, "baseline": base, "ours": ours_info}, m))
    mem = {"percell_full": [o["mem"] for o in arms["full"]], "ours": [o["mem"] for o in arms["ours"]]}
    return entries, mem


# --- 2. cached vs online teacher logits -------------------------------------------------------------------------------

def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_kd(size: int, n: int, batch: int, device, repeats: int, threads: int, m: dict) -> dict:
    import torch

    from kdsweep.config import DataConfig
    from kdsweep.data import ViewSpec, load_dataset
    from kdsweep.engine import TrainSpec, teacher_logits, train
    from kdsweep.models import build_model

    torch.set_num_threads(threads)
    data = load_dataset(DataConfig(dataset="synthetic", train_limit=n, test_limit=8))
    view = ViewSpec(size, "imagenet", ("flip",))
    torch.manual_seed(0)
    teacher = build_model("resnet18", data.num_classes)  # weights do not change the cost; offline-safe
    spec = TrainSpec(1, 3e-4, batch_size=batch, seed=0, temperature=4.0, alpha=0.9, label_smoothing=0.05)
    # warm-up (allocator, oneDNN/cuDNN kernel choice) on one small batch, not timed
    small = type(data)(data.name, data.train_x[:8], data.train_y[:8], data.test_x, data.test_y, data.classes)
    warm_logits = teacher_logits(teacher, small, view, 0, 1, device, batch_size=batch)
    train(build_model("mobilenet_v3_small", 10), small, view, spec, device, teacher_logits=warm_logits, evaluate=False)
    train(build_model("mobilenet_v3_small", 10), small, view, spec, device, teacher=teacher, evaluate=False)
    sync(device)
    t = time.perf_counter()
    logits = teacher_logits(teacher, data, view, 0, 1, device, batch_size=batch)
    sync(device)
    precompute = time.perf_counter() - t
    imgs = percell.epoch_images(n, batch)
    ips = {"online": [], "cached": []}
    for _ in range(repeats):
        for arm in ("online", "cached"):
            torch.manual_seed(0)
            student = build_model("mobilenet_v3_small", data.num_classes)
            kw = {"teacher": teacher} if arm == "online" else {"teacher_logits": logits}
            sync(device)
            t = time.perf_counter()
            hist = train(student, data, view, spec, device, evaluate=False, **kw)
            sync(device)
            ips[arm].append(imgs / (time.perf_counter() - t))
            assert (hist[0]["teacher_forward_images"] > 0) == (arm == "online")
    on, ca = med(ips["online"]), med(ips["cached"])
    per_epoch_saving = imgs / on - imgs / ca
    params = {"image_size": size, "n_images": n, "batch_size": batch, "teacher": "resnet18", "student":
              "mobilenet_v3_small", "dataset": "synthetic uint8 32 px (cost does not depend on content)",
              "torch_threads": threads, "repeats": repeats, "order": "online, cached, repeated",
              "online_images_per_s": spread(ips["online"]), "cached_images_per_s": spread(ips["cached"]),
              "precompute_s_one_epoch": round(precompute, 3),
              "precompute_images_per_s": round(n / precompute, 1),
              "precompute_vs_online_saving_per_kd_epoch": round(precompute / per_epoch_saving, 3)
              if per_epoch_saving > 0 else None,
              "note": "the precompute is one eval-mode teacher pass per epoch of views, shared by every KD trial that "
                      "trains on that epoch (9 KD students per student epoch, 27 pruned per recovery epoch in the "
                      "reference grid); it is not in the cached timing"}
    return make_entry(f"kd_cached_vs_online_{size}", on, ca, "images/s", True, params, m, threads)


# --- 3. input pipeline ------------------------------------------------------------------------------------------------

def bench_pipeline(n: int, batch: int, device, repeats: int, workers: int, threads: int, m: dict,
                   kd224_cached_ips: float | None) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset
    from torchvision import transforms

    from kdsweep.config import DataConfig
    from kdsweep.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        ViewSpec,
        augment_params,
        load_dataset,
        train_batches,
        train_views,
    )

    torch.set_num_threads(threads)
    data = load_dataset(DataConfig(dataset="synthetic", train_limit=n, test_limit=8))
    view = ViewSpec(224, "imagenet", ("flip",))

    class PILImages(TorchDataset):
        """torchvision.datasets.CIFAR10-style: HWC uint8 numpy in memory, a PIL image per item, then transforms."""

        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
            self.data = np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1))
            self.targets = y.tolist()
            self.transform = transform

        def __len__(self) -> int:
            return len(self.targets)

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.data[i])), self.targets[i]

    tf = transforms.Compose([transforms.Resize(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = DataLoader(PILImages(data.train_x, data.train_y, tf), batch_size=batch, shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda")
    x_all = data.train_x.to(device)
    y_all = data.train_y.to(device)

    def reference() -> float:
        seen = 0
        sync(device)
        t = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            seen += len(y)
        sync(device)
        return seen / (time.perf_counter() - t)

    def ours() -> float:  # what engine.train does per step, minus the model
        seen = 0
        sync(device)
        t = time.perf_counter()
        aug = augment_params(0, 0, n)
        for idx in train_batches(n, batch, 0, 0):
            _ = train_views(x_all, idx, view, aug, device), y_all[idx.to(device)]
            seen += len(idx)
        sync(device)
        return seen / (time.perf_counter() - t)

    reference(), ours()  # warm-up
    ips = {"reference": [], "ours": []}
    for _ in range(repeats):
        ips["reference"].append(reference())
        ips["ours"].append(ours())
    ref, our = med(ips["reference"]), med(ips["ours"])
    params = {"image_size": 224, "stored": "uint8 32 px (CIFAR-like, synthetic)", "n_images": n, "batch_size": batch,
              "reference": "Dataset (PIL per item) + Compose([Resize(224), RandomHorizontalFlip(), ToTensor(), "
                           "Normalize(imagenet)]) + DataLoader(shuffle=True)",
              "ours": "kdsweep.data.train_views (what engine.train calls) on the uint8 training set kept on the "
                      "device: gather, flip, /255, bilinear 32->224, normalise",
              "num_workers": workers, "torch_threads": threads, "repeats": repeats,
              "order": "reference, ours, repeated", "reference_images_per_s": spread(ips["reference"]),
              "ours_images_per_s": spread(ips["ours"])}
    if kd224_cached_ips:
        # a cached-KD epoch at 224 px is pipeline + student forward/backward/step: the pipeline's share of it
        params["share_of_224_train_step"] = round(kd224_cached_ips / our, 4)
        params["share_basis"] = ("(1 / pipeline images/s) / (1 / kd_cached_vs_online_224 cached images/s), same "
                                 "device, threads and batch size; goal <= 0.05")
    return make_entry("input_pipeline_224", ref, our, "images/s", True, params, m, threads)


# --- 4. packing and 6. dataset sharing ----------------------------------------------------------------------------

def bench_packing(size: int, batch: int, subset: int, window: float, dataset_n: int, repeats: int, device,
                  gpu: bool, m: dict) -> tuple[dict, dict]:
    import ray

    from kdsweep.config import DataConfig
    from kdsweep.data import load_dataset
    from kdsweep.dataset import to_arrays as dataset_to_arrays

    @ray.remote(num_cpus=0, num_gpus=0)
    class Trial:
        """A student-training trial: the dataset from the object store (kdsweep's zero-copy path), KD from cached
        logits, threads as kdsweep sets them (max(1, int(cpus_per_trial))). Zero logical resources so that every
        packing level's trials can stay alive (warm) while another level runs; only one level trains at a time."""

        def __init__(self, shared: list, device: str, size: int, batch: int, subset: int):
            import psutil
            import torch

            from kdsweep.data import ViewSpec
            from kdsweep.dataset import Dataset
            from kdsweep.dataset import from_arrays as dataset_from_arrays
            from kdsweep.engine import TrainSpec
            from kdsweep.models import build_model

            self.proc = psutil.Process()
            full = dataset_from_arrays(ray.get(shared[0]))
            self.full = full
            self.dataset_mb = full.train_x.numel() / 1e6
            self.checksum = int(full.train_x.view(-1)[::4096].sum())  # map every page of the shared array
            self.data = Dataset(full.name, full.train_x[:subset], full.train_y[:subset], full.test_x, full.test_y,
                                full.classes)
            self.logits = torch.randn(1, subset, full.num_classes).half()
            self.model = build_model("mobilenet_v3_small", full.num_classes)
            self.view = ViewSpec(size, "imagenet", ("flip",))
            self.spec = TrainSpec(1, 1e-3, batch_size=batch, schedule="constant", temperature=4.0, alpha=0.9,
                                  label_smoothing=0.05)
            self.device = torch.device(device)
            self.per_epoch = percell.epoch_images(subset, batch)
            self.copy = None

        def run(self, seconds: float, start_at: float, threads: int) -> dict:
            import torch

            from kdsweep.engine import train

            torch.set_num_threads(threads)
            while time.time() < start_at:
                time.sleep(0.002)
            t0 = time.perf_counter()
            images = 0
            while time.perf_counter() - t0 < seconds:
                train(self.model, self.data, self.view, self.spec, self.device, teacher_logits=self.logits,
                      evaluate=False)
                images += self.per_epoch
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return {"images": images, "seconds": time.perf_counter() - t0}

        def memory(self) -> dict:
            import resource

            mi = self.proc.memory_full_info()
            return {"rss_mb": mi.rss / 1e6, "uss_mb": mi.uss / 1e6, "pss_mb": mi.pss / 1e6,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
                    "dataset_mb": self.dataset_mb}

        def private_copy(self) -> dict:
            """Control: what a trial that holds its own copy of the dataset costs (e.g. one that loads it itself)."""
            self.copy = self.full.train_x.clone()
            return self.memory()

    data = load_dataset(DataConfig(dataset="synthetic", train_limit=dataset_n, test_limit=64))
    shared = [ray.put(dataset_to_arrays(data))]
    del data
    dev = "cuda" if gpu else "cpu"
    # trials per device -> torch threads per trial (kdsweep's max(1, int(cpus_per_trial))); "1t1": one trial with one
    # thread, a reference that separates the gain of packing from that of single-threaded trials
    levels = {1: (2 if not gpu else 1), 2: 1, 4: 1, "1t1": 1}
    per_device = {1: "1", 2: "1/2", 4: "1/4", "1t1": "1, 1 thread"}
    count = lambda k: 1 if k == "1t1" else k
    if gpu:
        levels.pop("1t1")
    n_actors = max(map(count, levels))
    log(f"packing: starting {n_actors} warm trial processes")
    # one pool of warm trial processes: level k trains on the first k of them, with its torch threads, while the others
    # idle (as a Tune pool with reuse_actors does); only one level trains at a time. On a GPU each actor holds a share
    # of it, as a Tune trial does (Ray then sets CUDA_VISIBLE_DEVICES; with RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 it
    # hides the GPUs from an actor that asks for none)
    opts = {"num_gpus": 0.1} if gpu else {}
    pool = [Trial.options(**opts).remote(shared, dev, size, batch, subset) for _ in range(n_actors)]
    actors = {k: pool[:count(k)] for k in levels}
    ray.get([a.memory.remote() for a in pool])
    for k, acts in actors.items():  # warm-up, one level at a time
        ray.get([a.run.remote(0.5, time.time() + 0.2, levels[k]) for a in acts])
    agg = {k: [] for k in levels}
    per_trial = {k: [] for k in levels}
    for _ in range(repeats):
        for k, acts in actors.items():
            res = ray.get([a.run.remote(window, time.time() + 0.3, levels[k]) for a in acts])
            agg[k].append(sum(r["images"] / r["seconds"] for r in res))
            per_trial[k].append([r["images"] / r["seconds"] for r in res])
    mem = {k: ray.get([a.memory.remote() for a in acts]) for k, acts in actors.items()}
    control = ray.get(actors[1][0].private_copy.remote())
    for a in pool:
        ray.kill(a)
    del shared
    one, two, four = med(agg[1]), med(agg[2]), med(agg[4])
    resources = "gpus_per_trial 1, 0.5, 0.25" if gpu else "cpus_per_trial 2, 1, 0.5 on 2 cores"
    params = {"trials_per_device": {str(k): spread(v) for k, v in agg.items()},
              "ratio_2_vs_1": round(two / one, 3), "ratio_4_vs_1": round(four / one, 3),
              "best": max((one, "1"), (two, "2"), (four, "4"))[1],
              "per_trial_images_per_s_last": {str(k): [round(x, 1) for x in v[-1]] for k, v in per_trial.items()},
              "resources": resources + ("; 1t1: one trial, cpus_per_trial 1" if not gpu else ""),
              "torch_threads": {str(k): v for k, v in levels.items()},
              "share": per_device,
              "workload": f"MobileNetV3-Small KD from cached logits, {size} px, batch {batch}, {subset} images/epoch, "
                          f"{window:g} s window per level after a common start time",
              "trials": "one pool of warm Ray actors (Tune trials are function actors too); level k trains on k of "
                        "them, one level at a time",
              "repeats": repeats, "order": "1, 2, 4 trials (then 1 trial with 1 thread on CPU), repeated",
              "peak_rss_mb_per_trial": {str(k): [round(x["peak_rss_mb"], 1) for x in v] for k, v in mem.items()}}
    share = {"dataset_mb": round(mem[1][0]["dataset_mb"], 1),
             "per_trial_1": {kk: round(mem[1][0][kk], 1) for kk in ("rss_mb", "uss_mb", "pss_mb")},
             "per_trial_4": [{kk: round(x[kk], 1) for kk in ("rss_mb", "uss_mb", "pss_mb")} for x in mem[4]],
             "uss_sum_4_trials_mb": round(sum(x["uss_mb"] for x in mem[4]), 1),
             "control_private_copy": {kk: round(control[kk], 1) for kk in ("rss_mb", "uss_mb", "pss_mb")},
             "note": "every trial process maps (touches) the whole shared dataset; USS (private memory) excludes "
                     "it, RSS counts it in every process, PSS splits it among all the mapping processes; the control "
                     "adds a private copy to the 1-trial process: its USS grows by the dataset size"}
    params["dataset_sharing"] = share
    return make_entry("packing", one, four, "images/s", True, params, m), share


# --- 5. latency honesty -------------------------------------------------------------------------------------------

def bench_latency(size: int, warmup: int, iters: int, repeats: int, device, threads: int, m: dict) -> dict:
    import torch

    from kdsweep.models import build_model
    from kdsweep.pruning import apply_pruning, make_permanent, sparsity_report
    from kdsweep.runtimes import time_interleaved, torch_runner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dense = build_model("mobilenet_v3_small", 10).to(device)
    pruned = copy.deepcopy(dense)
    apply_pruning(pruned, 0.5, "layer")
    make_permanent(pruned)
    sparsity = sparsity_report(pruned).sparsity
    runs = {"dense": [], "pruned": []}
    p90 = {"dense": [], "pruned": []}
    for _ in range(repeats):
        for arm, model in (("dense", dense), ("pruned", pruned)):
            lat = time_interleaved({arm: torch_runner(model, size, device)}, warmup, iters)[arm]
            runs[arm].append(lat.median_ms)
            p90[arm].append(lat.p90_ms)
    d, p = med(runs["dense"]), med(runs["pruned"])
    rel = lambda xs: round((max(xs) - min(xs)) / med(xs), 4)
    params = {"model": "mobilenet_v3_small, 10 classes", "pruning": "L1 unstructured, layer scope, 50 %, permanent",
              "conv_sparsity": round(sparsity, 4), "image_size": size, "batch": 1, "warmup": warmup, "iters": iters,
              "torch_threads": threads, "repeats": repeats, "order": "dense, pruned, repeated",
              "dense_median_ms": spread(runs["dense"]), "pruned_median_ms": spread(runs["pruned"]),
              "dense_p90_ms": spread(p90["dense"]), "pruned_p90_ms": spread(p90["pruned"]),
              "run_to_run_spread": {"dense": rel(runs["dense"]), "pruned": rel(runs["pruned"])},
              "note": "(max - min) / median of the per-run medians; a ratio within that spread of 1 means no speed-up"}
    return make_entry("latency_pruned_vs_dense", d, p, "ms", False, params, m, threads)


def bench_fused(sizes: dict, device, threads: int, m: dict) -> dict:
    """fused_students: benchmarks/fused.py's arms at B in {1, 3, 9}; the entry's ratio is fused vs sequential at 9."""
    import fused

    rows = fused.bench_fused_students(sizes["fused_size"], sizes["fused_batch"], sizes["fused_steps"], [1, 3, 9],
                                      device, threads)
    ips = {(r["arm"], r["B"]): r["images_per_s"] for r in rows if "error" not in r}
    best = max(ips.get(("fused_torchfunc", 9), 0.0), ips.get(("fused_hfta", 9), 0.0))
    params = {"what": "aggregate KD-student training images/s (MobileNetV3-Small, AdamW, fixed teacher logits), "
                      "steady state after warm-up; baseline: the 9 students one after another in one process",
              "image_size": sizes["fused_size"], "batch": sizes["fused_batch"], "steps": sizes["fused_steps"],
              "threads": threads, "rows": rows, "decisive": fused.decisive(rows)}
    return make_entry("fused_students", ips[("sequential", 9)], best, "images/s", True, params, m, threads)


# --- entries, table ------------------------------------------------------------------------------------------------

def make_entry(name: str, baseline: float, ours: float, unit: str, higher_is_better: bool, params: dict, m: dict,
               threads: int | None = None) -> dict:
    ratio = (ours / baseline) if higher_is_better else (baseline / ours)
    return {"name": name, "baseline": round(baseline, 4), "ours": round(ours, 4), "unit": unit,
            "ratio": round(ratio, 3), "params": {"goal": GOALS[name], **params},
            "device": device_label(m, threads), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def table(entries: list[dict]) -> str:
    lines = ["| name | baseline | ours | unit | ratio | goal |", "| --- | ---: | ---: | --- | ---: | --- |"]
    for e in entries:
        lines.append(f"| {e['name']} | {e['baseline']:.4g} | {e['ours']:.4g} | {e['unit']} | {e['ratio']:.2f}x | "
                     f"{e['params']['goal']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU sizes, <= 10 min on 2 cores")
    p.add_argument("--config", default=None, help="sweep config (default: configs/smoke.yaml with --quick, else "
                                                  "configs/seed.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the sweep comparison (after the --quick reductions)")
    p.add_argument("--repeats", type=int, default=3, help="alternations of baseline and ours (>= 3)")
    p.add_argument("--only", default="sweep,kd224,kd32,pipeline,latency,packing,fused_students",
                   help="comma-separated subset of sweep,kd224,kd32,pipeline,latency,packing,fused_students")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference input pipeline")
    p.add_argument("--storage", default=None, help="where the sweeps write (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the sweeps' experiment folders")
    p.add_argument("--json", default=None, help="write the entries to this file")
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be >= 3")
    only = set(args.only.split(","))

    import ray
    import torch

    from kdsweep.config import load_config

    config = args.config or str(ROOT / "configs" / ("smoke.yaml" if args.quick else "seed.yaml"))
    cfg = load_config(config, (QUICK_SWEEP if args.quick else []) + args.overrides)
    sizes = SIZES[args.quick]
    m = machine()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    threads = max(1, int(cfg.resources.cpus_per_trial))  # what a kdsweep trial runs with
    storage = Path(args.storage) if args.storage else percell.tmpdir(None, "kdsweep-bench-")
    storage.mkdir(parents=True, exist_ok=True)
    log(f"machine: {m}; storage {storage}")
    ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.2", include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(percell)  # workers cannot import benchmarks/percell.py by name
    entries: list[dict] = []
    try:
        if "sweep" in only:
            sweep_entries, sweep_mem = bench_sweep(cfg, storage, args.repeats, args.keep, m)
            entries += sweep_entries
        kd224 = None
        if "kd224" in only:
            log("kd_cached_vs_online_224 ...")
            kd224 = bench_kd(224, sizes["kd224_n"], sizes["kd224_batch"], device, args.repeats, threads, m)
            entries.append(kd224)
        if "kd32" in only:
            log("kd_cached_vs_online_32 ...")
            entries.append(bench_kd(32, sizes["kd32_n"], sizes["kd32_batch"], device, args.repeats, threads, m))
        if "pipeline" in only:
            log("input_pipeline_224 ...")
            entries.append(bench_pipeline(sizes["pipe_n"], sizes["pipe_batch"], device, args.repeats, args.workers,
                                          threads, m, kd224["ours"] if kd224 else None))
        if "latency" in only:
            log("latency_pruned_vs_dense ...")
            entries.append(bench_latency(sizes["lat_size"], sizes["lat_warmup"], sizes["lat_iters"],
                                         sizes["lat_repeats"], device, 1 if not gpu else threads, m))
        share = None
        if "packing" in only:
            log("packing ...")
            pack, share = bench_packing(sizes["pack_size"], sizes["pack_batch"], sizes["pack_subset"],
                                        sizes["pack_window"], sizes["pack_dataset_n"], args.repeats, device, gpu, m)
            entries.append(pack)
        if "fused_students" in only:
            log("fused_students ...")
            entries.append(bench_fused(sizes, device, threads if gpu else os.cpu_count() or 1, m))
        if "sweep" in only:
            b = [x["trial_peak_rss_mb"] for x in sweep_mem["percell_full"]]
            o = [x["trial_peak_rss_mb"] for x in sweep_mem["ours"]]
            both = lambda key: {arm: med([x[key] for x in sweep_mem[arm]]) for arm in ("percell_full", "ours")}
            params = {"what": "peak RSS of one Ray worker (trial) process during the sweep comparison's runs, "
                              "sampled with psutil every 0.2 s over the driver's process tree",
                      "percell_full_runs": sweep_mem["percell_full"], "ours_runs": sweep_mem["ours"],
                      "driver_peak_rss_mb": both("driver_peak_rss_mb"), "tree_peak_rss_mb": both("tree_peak_rss_mb"),
                      "dataset_sharing": share}
            entries.append(make_entry("memory", med(b), med(o), "MB", False, params, m))
    finally:
        ray.shutdown()
        if not args.keep and not args.storage:
            shutil.rmtree(storage, ignore_errors=True)
    total = time.perf_counter() - T0
    print(table(entries))
    print(f"\ntotal {total:.0f} s ({total / 60:.1f} min); machine: {m}")
    if args.json:
        Path(args.json).write_text(json.dumps(entries, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
