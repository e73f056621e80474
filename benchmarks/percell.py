"""The baseline kdsweep is compared against: a plain Ray Tune grid with one trial per (T, alpha, p) cell.

Written the way the Ray Tune docs show it (a function trainable, `tune.with_parameters` for the dataset,
`tune.with_resources`, `tune.Tuner(param_space={"T": tune.grid_search(...), ...})`, Tuner defaults otherwise), and
using kdsweep's own engine, models, pruning and measurement, so that only the orchestration differs from
`kdsweep run`:

- `full`: every cell fine-tunes its own teacher, trains its KD student with the teacher online (a teacher forward in
  every KD step), prunes, recalibrates BN, recovers (online KD again), and measures accuracy and batch-1 latency of
  its pruned model.
- `shared_teacher`: the teacher is trained once up front (in the driver, as a user would, with a trial's thread
  count) and saved; each cell loads it and does online KD + prune + recover + measure.

Deliberate differences, all in the baseline's favour: no per-epoch checkpoints, no compressed-size measurement, no
Parquet rows or analysis, and only the 27 pruned models are measured (kdsweep measures all 38 variants: teacher,
no-KD baseline, 9 KD students, 27 pruned). Tuner defaults include `reuse_actors=False` (kdsweep sets True), so
each cell starts a fresh worker process; each trial reports how long that start took (`actor_start_s`).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def epoch_images(n: int, batch_size: int) -> int:
    """Training images of one epoch (kdsweep's batches drop a trailing batch of one sample)."""
    from kdsweep.data import train_batches

    return sum(len(b) for b in train_batches(n, batch_size, 0, 0))


def recipe_of(cfg) -> dict:  # a kdsweep Config
    """The plain-dict recipe a trial needs (what a user would pass to tune.with_parameters)."""
    d = cfg.model_dump(mode="json")
    return {"view": {"image_size": cfg.data.image_size, "normalize": cfg.data.normalize,
                     "augment": tuple(cfg.data.augment)},
            "teacher": d["teacher"], "student": d["student"], "kd": d["kd"], "prune": d["prune"],
            "measure": d["measure"], "cpus_per_trial": cfg.resources.cpus_per_trial}


def percell_trial(config: dict, data: dict, recipe: dict, teacher_path: str | None = None) -> None:
    """One grid cell: (teacher fine-tune) -> online-teacher KD student -> L1 prune -> BN recalibration -> recovery."""
    import sys

    fresh_process = "torch" not in sys.modules  # reuse_actors=False (Tuner default): every cell imports torch anew
    import psutil
    import ray
    import torch
    from ray import tune

    from kdsweep.data import ViewSpec
    from kdsweep.dataset import from_arrays
    from kdsweep.engine import TrainSpec, recalibrate_bn, train
    from kdsweep.measure import accuracy
    from kdsweep.models import build_model, count_params
    from kdsweep.pruning import apply_pruning, make_permanent
    from kdsweep.runtimes import time_interleaved, torch_runner

    entered = time.time()
    actor_start_s = entered - psutil.Process().create_time()
    torch.set_num_threads(max(1, int(recipe["cpus_per_trial"])))
    device = torch.device("cuda", 0) if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")
    ds = from_arrays(data)
    view = ViewSpec(**recipe["view"])
    tc, sc, kc, pc, mc = (recipe[k] for k in ("teacher", "student", "kd", "prune", "measure"))
    seed = int(config.get("seed", 0))
    n_cls = ds.num_classes

    def reporter(phase: str):
        return lambda row: tune.report({**row, "phase": phase})

    t0 = time.perf_counter()
    if teacher_path is None:
        teacher = build_model(tc["arch"], n_cls, tc["weights"], tc["bn_momentum"], key="teacher")
        th = train(teacher, ds, view, TrainSpec(tc["epochs"], tc["lr"], tc["weight_decay"], tc["batch_size"],
                                                tc["schedule"], seed), device, on_epoch=reporter("teacher"))
    else:
        teacher = build_model(tc["arch"], n_cls, teacher_path, tc["bn_momentum"], key="teacher")
        th = []
    t_teacher = time.perf_counter() - t0
    kd = dict(temperature=float(config["T"]), alpha=float(config["alpha"]), label_smoothing=kc["label_smoothing"])
    student = build_model(sc["arch"], n_cls, sc["weights"], sc["bn_momentum"], key="student")
    sh = train(student, ds, view, TrainSpec(sc["epochs"], sc["lr"], sc["weight_decay"], sc["batch_size"],
                                            sc["schedule"], seed, **kd), device, teacher=teacher,
               on_epoch=reporter("student"))
    t_student = time.perf_counter() - t0 - t_teacher
    apply_pruning(student, float(config["p"]), pc["scope"])
    if pc["recalibrate_bn"]:
        recalibrate_bn(student, ds, view, device, batch_size=sc["batch_size"], seed=seed)
    rh = train(student, ds, view, TrainSpec(pc["recovery_epochs"], pc["recovery_lr"] or sc["lr"], sc["weight_decay"],
                                            sc["batch_size"], "constant", seed, epoch_offset=sc["epochs"], **kd),
               device, teacher=teacher, on_epoch=reporter("recovery"))
    make_permanent(student)
    acc = accuracy(student, ds.test_x, ds.test_y, view, device)
    runner = torch_runner(student, view.image_size, device)
    lat = time_interleaved({"student": runner}, mc["warmup"], mc["iters"])["student"]
    nonzero = sum(int(p.count_nonzero()) for p in student.parameters())
    tune.report({
        "final": True, "test_acc": acc, "latency_ms": lat.median_ms, "latency_device": runner.device,
        "params": count_params(student), "nonzero_params": nonzero,
        "teacher_acc": th[-1]["test_acc"] if th else None, "student_acc": sh[-1]["test_acc"] if sh else None,
        "teacher_epochs": len(th), "student_epochs": len(sh) + len(rh),
        "teacher_forward_images": sum(r["teacher_forward_images"] for r in sh + rh),
        "teacher_seconds": t_teacher, "student_seconds": t_student, "trial_seconds": time.perf_counter() - t0,
        "actor_start_s": actor_start_s, "fresh_process": fresh_process, "trial_entered": entered,
        "trial_end": time.time(), "pid": os.getpid(),
    })


def train_teacher_once(cfg, data, storage: Path) -> tuple[str, float]:
    """The shared-teacher variant's up-front teacher, trained in the driver; returns its path and the seconds taken.

    Threads as a trial gets them (`cpus_per_trial`, like kdsweep's teacher trial): on a CPU shared with other work,
    two OpenMP threads on two busy cores can run several times slower than one (see the packing benchmark).
    """
    import torch

    from kdsweep.data import ViewSpec
    from kdsweep.engine import TrainSpec, pick_device, train
    from kdsweep.models import build_model

    t0 = time.perf_counter()
    device = pick_device("auto")
    tc = cfg.teacher
    teacher = build_model(tc.arch, data.num_classes, tc.weights, tc.bn_momentum, key="teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_trial)))
    try:
        train(teacher, data, ViewSpec.from_config(cfg.data),
              TrainSpec(tc.epochs, tc.lr, tc.weight_decay, tc.batch_size, tc.schedule, cfg.seeds[0]), device)
    finally:
        torch.set_num_threads(threads)
    path = storage / "teacher.pt"
    torch.save({k: v.cpu() for k, v in teacher.state_dict().items()}, path)
    return str(path), time.perf_counter() - t0


def run_percell(cfg, storage: Path, shared_teacher: bool, gpus_per_trial: float) -> dict:
    """Run the per-cell grid into `storage`; returns wall time, teacher time, and every trial's final metrics.

    The timed region starts before the dataset is loaded, as `kdsweep run`'s does.
    """
    from ray import tune

    from kdsweep.data import load_dataset
    from kdsweep.dataset import to_arrays as dataset_to_arrays

    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    storage.mkdir(parents=True, exist_ok=True)
    teacher_path, teacher_s = (train_teacher_once(cfg, data, storage) if shared_teacher else (None, 0.0))
    trainable = tune.with_parameters(percell_trial, data=dataset_to_arrays(data), recipe=recipe_of(cfg),
                                     teacher_path=teacher_path)
    trainable = tune.with_resources(trainable, {"cpu": cfg.resources.cpus_per_trial, "gpu": gpus_per_trial})
    space = {"T": tune.grid_search(list(cfg.kd.temperature)), "alpha": tune.grid_search(list(cfg.kd.alpha)),
             "p": tune.grid_search(list(cfg.prune.amount)), "seed": tune.grid_search(list(cfg.seeds))}
    tuner = tune.Tuner(trainable, param_space=space,
                       run_config=tune.RunConfig(name="percell-shared" if shared_teacher else "percell",
                                                 storage_path=str(storage.resolve()), verbose=0))
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    rows, errors = [], []
    for r in grid:
        if r.error is not None:
            errors.append(str(r.error).strip().splitlines()[-1][:300])
        else:
            rows.append({**{k: r.config[k] for k in ("T", "alpha", "p", "seed")}, **r.metrics})
    return {"wall_s": wall, "teacher_s": teacher_s, "rows": rows, "errors": errors}


def expected_passes(cfg, n_train: int, kind: str) -> dict:
    """Image passes through each network, counted from epochs x images x trials (training passes only)."""
    nT, nA, nP, nS = len(cfg.kd.temperature), len(cfg.kd.alpha), len(cfg.prune.amount), len(cfg.seeds)
    et, es, er = cfg.teacher.epochs, cfg.student.epochs, cfg.prune.recovery_epochs
    ti, si = epoch_images(n_train, cfg.teacher.batch_size), epoch_images(n_train, cfg.student.batch_size)
    cells = nT * nA * nP * nS
    if kind == "full":
        return {"teacher_train": cells * et * ti, "teacher_forward": cells * (es + er) * si,
                "student_train": cells * (es + er) * si}
    if kind == "shared_teacher":
        return {"teacher_train": et * ti, "teacher_forward": cells * (es + er) * si,
                "student_train": cells * (es + er) * si}
    # kdsweep: 1 teacher + 1 no-KD baseline per seed, 1 KD student per (T, alpha, seed), 1 pruned per cell;
    # the cached-logits pass is one eval-mode forward over every view of epochs 0..es+er-1 (all n images)
    return {"teacher_train": nS * et * ti, "teacher_forward": nS * (es + er) * n_train,
            "student_train": nS * ((1 + nT * nA) * es * si + nT * nA * nP * er * si)}


def tmpdir(root: str | None, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
