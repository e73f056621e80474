"""`kdsweep plan --estimate`: what a sweep will cost here, from a few real training steps of each kind of task.

Every distinct (architecture, image size, batch, views, fused group size) of the plan trains two short epochs of the
real loop (`engine.train_group`: views, KD loss, AdamW, one sync per epoch) on synthetic images of the dataset's
stored size, on this machine's device with the trial's thread count; the second epoch gives seconds per image. One
eval pass and one checkpoint save per architecture give the per-epoch extras, one batch-1 forward the latency phase.
A list-scheduling simulation of the task graph (the searcher's priority order) on the trial slots turns those into a
wall time. What a few steps cannot see (Ray's start, a trial process's imports, ONNX export) are allowances measured on
the development machine, named below; the range is a rule-of-thumb band around the point estimate, not a CI.
"""
from __future__ import annotations

import heapq
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .config import Config, stage_augment
from .data import ViewSpec, load_dataset
from .dataset import Dataset
from .engine import Member, TrainSpec, train_group
from .fusion import fuse_limit, fused_groups
from .measure import predict
from .models import build_model
from .names import STAGES, STRUCTURED, TASK_PRIORITY
from .plan import Plan, Variant, logits_key, n_test_images, planned_epochs, teacher_of, train_size, variant_config
from .pruning import apply_pruning
from .stages import needs_onnx
from .status import duration
from .structured import structured_prune

# the size images are kept at in memory (the views resize them to data.image_size on the fly)
STORED = {"cifar10": 32, "cifar100": 32, "digits": 32, "tiny-imagenet": 64, "synthetic": 32}

# Allowances for what a few timed steps cannot see, measured on the 2-core dev Xeon (benchmarks/RESULTS.md,
# "Where the time goes" and "cost of export and runtimes"): Ray's start and the end-of-run analysis; a trial
# process's first imports (torch, Ray, kdsweep); Tune's hand-over between tasks; one dynamo ONNX export per
# architecture and the per-variant template fill, BN folding and ORT check.
RAY_START_S = 8.0
WORKER_START_S = 5.0
TASK_GAP_S = 0.5
EXPORT_ARCH_S = 8.0
EXPORT_VARIANT_S = 0.5
QUANTIZE_S = 3.0  # an INT8 variant: calibration and its ONNX Runtime accuracy pass (small models)
BAND = (0.75, 1.5)  # the printed range around the point estimate
TIMED_STEPS = 3  # steps of the second (timed) epoch
SMALL_IMAGE = 64  # px: up to here a CPU times steps at the real batch size


@dataclass
class Estimate:
    """Expected wall time of a sweep here (seconds), its range, and the per-stage seconds per epoch per trial."""

    seconds: float
    low: float
    high: float
    epoch_s: dict[str, float]  # stage -> seconds one trial spends per training epoch (train + eval + checkpoint)
    device: str
    slots: int
    timed_s: float  # how long the timing itself took
    parts: dict[str, float] = field(default_factory=dict)  # where the time goes (seconds of work, not wall)

    def line(self) -> str:
        return (f"  estimate: ~{duration(self.seconds)} wall ({duration(self.low)}-{duration(self.high)}), "
                f"{self.slots} trial(s) at once on {self.device}; from real training steps timed here in "
                f"{self.timed_s:.0f} s, plus allowances for Ray start, process start and ONNX export")

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "low": self.low, "high": self.high, "epoch_s": self.epoch_s,
                "device": self.device, "slots": self.slots, "parts": self.parts}


@dataclass(frozen=True)
class _Kind:
    """What a timed step depends on."""

    arch: str
    image_size: int
    batch: int
    augment: tuple[str, ...]
    kd: bool
    members: int
    prune: tuple[str, float] | None  # pruned variants recover masked (slower) or channel-pruned (faster) models


def _kind(cfg: Config, v: Variant, members: int = 1) -> _Kind:
    vc = variant_config(cfg, v)
    role = "teacher" if v.stage == "teacher" else "student"
    stage = vc.teacher if role == "teacher" else vc.student
    # unstructured masks cost the same at any amount; channel pruning's cost follows the amount
    prune = None if v.stage != "pruned" else \
        (v.prune_method, v.prune_amount if v.prune_method == STRUCTURED else 0.5)
    return _Kind(stage.arch, vc.data.image_size, stage.batch_size, tuple(stage_augment(vc, role)), bool(v.alpha),
                 members, prune)


def _synthetic(cfg: Config, n_train: int, n_test: int, classes: int) -> Dataset:
    size = STORED.get(cfg.data.dataset, cfg.data.stored_size)
    g = torch.Generator().manual_seed(0)
    img = lambda n: torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    lab = lambda n: torch.randint(0, classes, (n,), generator=g)
    return Dataset("estimate", img(n_train), lab(n_train), img(n_test), lab(n_test), tuple(map(str, range(classes))))


def _timing_batch(cfg: Config, batch: int, device: torch.device) -> int:
    """The batch a step is timed at: the real one, except on a CPU at large images (per-image cost is flat there,
    and a 224 px step of 128 images would take many seconds)."""
    return batch if device.type == "cuda" or cfg.data.image_size <= SMALL_IMAGE else min(batch, 8)


def _train_s(cfg: Config, k: _Kind, device: torch.device, classes: int) -> float:
    """Seconds per training image of one member, from the second of two short epochs of the real loop."""
    batch = _timing_batch(cfg, k.batch, device)
    data = _synthetic(cfg, batch * TIMED_STEPS, 8, classes)
    view = ViewSpec.from_config(cfg.data, list(k.augment))
    spec = TrainSpec(epochs=2, lr=1e-4, batch_size=batch, temperature=4.0 if k.kd else 1.0, alpha=0.5 if k.kd else 0.0)
    members = [Member(_model(cfg, k, classes), spec) for _ in range(k.members)]
    logits = torch.zeros(2, batch * TIMED_STEPS, classes, dtype=torch.float16) if k.kd else None
    hist = train_group(members, data, view, device, teacher_logits=logits, evaluate=False)[0]
    return float(hist[-1]["epoch_seconds"]) / (TIMED_STEPS * batch * k.members)


def _model(cfg: Config, k: _Kind, classes: int) -> torch.nn.Module:
    model = build_model(k.arch, classes, "none")
    if k.prune is not None:
        method, amount = k.prune
        if method == STRUCTURED:
            structured_prune(model, amount, cfg.data.image_size, cfg.prune.round_to, cfg.prune.scope, arch=k.arch)
        else:
            apply_pruning(model, amount, cfg.prune.scope)
    return model


def _eval_s(cfg: Config, arch: str, device: torch.device, classes: int) -> tuple[float, float, float]:
    """Seconds per test image (eval pass), per checkpoint save (model + AdamW state), per batch-1 forward."""
    model = build_model(arch, classes, "none")
    n = _timing_batch(cfg, 64, device)
    data = _synthetic(cfg, 1, n, classes)
    view = ViewSpec.from_config(cfg.data, [])
    predict(model, data.test_x, view, device)  # warm-up
    t0 = time.perf_counter()
    predict(model, data.test_x, view, device)
    eval_s = (time.perf_counter() - t0) / n
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():  # AdamW's two moments per parameter are what a real checkpoint carries
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "history": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        save_checkpoint(state, Path(tmp) / "c.pt")
        ckpt_s = time.perf_counter() - t0
    x = data.test_x[:1]
    predict(model, x, view, device)
    t0 = time.perf_counter()
    for _ in range(5):
        predict(model, x, view, device)
    return eval_s, ckpt_s, (time.perf_counter() - t0) / 5


def estimate(plan: Plan, cfg: Config, slots: int, gpus: int = 0, device: torch.device | None = None) -> Estimate:
    """Time the plan's kinds of training step here and simulate the sweep on `slots` trial slots (`gpus` GPUs)."""
    t_start = time.perf_counter()
    device = device or torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
    classes = {"cifar100": 100, "tiny-imagenet": 200}.get(cfg.data.dataset, 10)
    n_train, n_test = train_size(cfg), n_test_images(cfg)
    if n_train is None or n_test is None:  # imagefolder: counted by reading it (its cache, after the first time)
        data = load_dataset(cfg.data)
        n_train, n_test, classes = len(data.train_y), len(data.test_y), data.num_classes
    cached = cfg.kd.teacher_logits == "cached"
    trained = [v for v in plan if v.stage != "quantized"]
    groups = fused_groups(cfg, trained, fuse_limit(cfg.resources.fuse, gpus), gpus)
    group_of = {m.key: f"fused-{i}" for i, g in enumerate(groups) for m in g}
    size = {m.key: len(g) for g in groups for m in g}
    kinds = {v.key: _kind(cfg, v, size.get(v.key, 1)) for v in trained}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_trial)))
    try:
        rate = {k: _train_s(cfg, k, device, classes) for k in dict.fromkeys(kinds.values())}
        per_arch = {a: _eval_s(cfg, a, device, classes) for a in dict.fromkeys(k.arch for k in kinds.values())}
    finally:
        torch.set_num_threads(threads)
    timed_s = time.perf_counter() - t_start

    by_key = plan.by_key()

    def epoch_s(v: Variant) -> float:  # one trial's epoch: all its members' images, eval passes and checkpoints
        k = kinds[v.key]
        eval_s, ckpt_s, _ = per_arch[k.arch]
        online = per_arch[kinds[teacher_of(v, by_key).key].arch][0] if k.kd and not cached else 0.0
        return k.members * (n_train * (rate[k] + online) + n_test * eval_s + ckpt_s)

    def once_s(v: Variant) -> float:  # per variant: final test pass, weights saved, export; pruned: BN re-estimate
        k = kinds[v.key]
        eval_s, ckpt_s, _ = per_arch[k.arch]
        recal = 20 * k.batch * eval_s if v.stage == "pruned" and cfg.prune.recalibrate_bn else 0.0
        return n_test * eval_s + ckpt_s + recal + (EXPORT_VARIANT_S if needs_onnx(cfg) else 0.0)

    task_of = lambda key: group_of.get(key, key)
    tasks: dict[str, tuple[int, float, set[str]]] = {}  # id -> (priority, seconds, dependencies)
    parts = dict.fromkeys((*STAGES, "logits", "latency"), 0.0)
    for v in plan:
        deps = {task_of(v.parent)} if v.parent else set()
        if v.stage == "quantized":
            secs = QUANTIZE_S
        else:
            if v.alpha and cached:  # KD waits for its teacher's cached logits
                lk, teacher = logits_key(cfg, v), teacher_of(v, by_key)
                if lk not in tasks:
                    secs = variant_config(cfg, v).student.epochs * n_train * per_arch[kinds[teacher.key].arch][0]
                    tasks[lk] = (TASK_PRIORITY.index("logits"), secs + TASK_GAP_S, {teacher.key})
                    parts["logits"] += secs
                deps.add(lk)
            secs = planned_epochs(cfg, v) * epoch_s(v) / kinds[v.key].members + once_s(v)
        parts[v.stage] += secs
        tid = task_of(v.key)
        prio, before, had = tasks.get(tid, (TASK_PRIORITY.index(v.stage), TASK_GAP_S, set()))
        tasks[tid] = (prio, before + secs, (had | deps) - {tid})
    iters = cfg.measure.warmup + cfg.measure.iters
    runtimes = len(cfg.measure.runtimes) * max(1, len(cfg.measure.devices or ()))
    arch = lambda v: kinds[v.parent if v.stage == "quantized" else v.key].arch
    parts["latency"] = iters * runtimes * sum(per_arch[arch(v)][2] for v in plan)
    exports = EXPORT_ARCH_S * len(per_arch) if needs_onnx(cfg) else 0.0
    parallel = slots if device.type == "cpu" else max(1, min(slots, gpus))  # packed trials share one GPU's compute

    def wall(n: int) -> float:
        return RAY_START_S + WORKER_START_S + _simulate(tasks, n) + exports / n + parts["latency"]

    seconds = wall(parallel)
    low = (wall(slots) if slots > parallel else seconds) * BAND[0]  # on a GPU: if packing overlapped perfectly
    # one trial's seconds per epoch per stage (a fused task's: all its members'), the unit of status.eta_seconds
    stage_s = {s: epoch_s(vs[0]) for s in STAGES if (vs := [v for v in plan.stage(s) if v.key in kinds])}
    return Estimate(seconds, low, seconds * BAND[1], stage_s, _device_name(device), parallel, timed_s,
                    parts)


def _simulate(tasks: dict[str, tuple[int, float, set[str]]], slots: int) -> float:
    """Makespan of the tasks on `slots` workers, a free worker always taking the ready task of best priority."""
    left = {t: set(deps) & tasks.keys() for t, (_, _, deps) in tasks.items()}
    ready = [(tasks[t][0], t) for t, d in left.items() if not d]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []
    now, free = 0.0, slots
    while ready or running:
        while ready and free:
            _, t = heapq.heappop(ready)
            heapq.heappush(running, (now + tasks[t][1], t))
            free -= 1
        now, t = heapq.heappop(running)
        free += 1
        for other, deps in left.items():
            if t in deps:
                deps.discard(t)
                if not deps:
                    heapq.heappush(ready, (tasks[other][0], other))
    return now


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "CPU"
