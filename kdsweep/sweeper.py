"""`kdsweep run`: config -> preflight -> plan -> Ray -> task graph of what is left -> one Ray Tune run (`schedule`)
-> result rows -> the end-of-run tables. Where each job lives: the Ray connection in `cluster`, the task graph and
result rows in `graph`, progress lines in `progress`, machine checks in `preflight`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO

import yaml

from . import cluster, preflight
from . import storage as store
from .config import Config, load_config
from .data import load_dataset
from .dataset import to_arrays
from .errors import ConfigError, last_line, one_line
from .fusion import describe_fusion, fuse_limit
from .graph import Sweep
from .names import STAGES
from .paths import Paths, read_record
from .plan import Plan, describe, listing, make_plan, planned_epochs, trial_slots
from .progress import Echo, Progress, say
from .status import duration, eta_seconds
from .tracking import trackers


def experiment_location(storage: str | Path, name: str) -> Path | str:
    """`<storage>/<name>`: a Path for a local folder (a file:// URI too), the URI string for an object store."""
    if store.is_local(storage):
        return Path(store.local_path(storage)) / name
    return store.join(str(storage), name)


def _check_storage(exp: Path | str) -> None:
    """Fail before any work if the experiment folder could not be created or written (or its bucket reached)."""
    if isinstance(exp, Path):
        p = exp.resolve()
        while not p.exists():
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"--storage: {str(p)!r} is not a writable directory")
        return
    try:
        store.check_reachable(exp)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError subclasses and ArrowException alike
        raise ConfigError(f"--storage: {exp!r} is not reachable ({one_line(exc)})") from None


def _lock(exp: Path) -> IO[str]:
    """Hold an exclusive lock on the experiment so two drivers never train into it at once (freed at exit/kill);
    the open lock file is returned and must stay referenced."""
    import fcntl

    f = open(exp / ".kdsweep.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        raise ConfigError(f"--name: experiment {str(exp)!r} is in use by another kdsweep run "
                          f"(pid {f.read().strip() or '?'}); wait for it or choose another --name") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def save_experiment(exp: Path | str, cfg: Config, plan: Plan) -> None:
    """The experiment's config.yaml and plan.json (what `kdsweep status` and `analyze` read)."""
    store.write_bytes(store.join(exp, "config.yaml"),
                      yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())
    store.write_bytes(store.join(exp, "plan.json"),
                      json.dumps([v.to_dict() | {"key": v.key, "variant": v.label} for v in plan], indent=1).encode())


def execute(sweep: Sweep, progress: Progress, shared: list, gpus: float, slots: int) -> None:
    """Run every task left as one Ray Tune run; then write a result row for every variant it touched."""
    from ray import tune

    from .schedule import DagSearcher
    from .trainables import run_task

    cfg, tasks = sweep.cfg, sweep.tasks()
    if not tasks:
        return
    train = [t for t in tasks if t.kind in ("train", "fused")]
    progress.total = {s: n for s in STAGES if (n := sum(len(t.members) for t in train if t.stage == s))}
    progress.slots = slots
    progress.pending = {t.id: (t.stage, planned_epochs(cfg, sweep.by_key[t.members[0]])) for t in train}
    if train:
        sweep.echo(f"[sweep] training {sum(len(t.members) for t in train)} variant(s): "
                   + ", ".join(f"{s} {n}" for s, n in progress.total.items()) + f"; {slots} trial slot(s)")
        if progress.prior:
            eta = eta_seconds([], list(progress.pending.values()), slots, progress.prior)
            sweep.echo(f"[sweep] ETA ~{duration(eta)} of training (estimated; measured trials take over as they "
                       "finish)")
    cpus = cfg.resources.cpus_per_trial
    fused_gpus = min(cfg.resources.gpus_per_fused, sweep.gpus)  # never more than the cluster has
    fused = [t for t in train if t.kind == "fused"]
    if fused:
        sizes = ", ".join(f"{t.stage} {len(t.members)}" for t in fused)
        sweep.echo(f"[sweep] fused training: {len(fused)} task(s) of one model each ({sizes} members), "
                   f"{fused_gpus:g} GPU each")
    run_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    searcher = DagSearcher(tasks, slots, sweep.paths.signals(run_name), progress.event)

    def resources(config: dict) -> tune.PlacementGroupFactory:
        """A fused task gets `gpus_per_fused` (a whole GPU by default); every other task `gpus_per_trial`."""
        gpu = fused_gpus if config["task"] == "fused" else gpus
        return tune.PlacementGroupFactory([{"CPU": cpus} | ({"GPU": gpu} if gpu else {})])

    trainable = tune.with_resources(tune.with_parameters(run_task, shared=shared), resources)

    def name_of(trial: tune.experiment.Trial) -> str:
        return trial.config["id"]

    if isinstance(sweep.exp, Path):
        where = {"storage_path": str((sweep.exp / "tune").resolve())}
    else:  # hand Tune the filesystem itself, so it reaches the same endpoint (AWS_ENDPOINT_URL) as kdsweep
        fs, path = store.resolve(store.join(sweep.exp, "tune"))
        where = {"storage_path": path, "storage_filesystem": fs}
    tuner = tune.Tuner(
        trainable,
        # reuse_actors: a trial process keeps torch imported and the dataset mapped for the next task;
        # max_concurrent_trials: one queued task beyond the slots, so a finishing trial always has a successor
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=slots + 1,
                                    trial_name_creator=name_of, trial_dirname_creator=name_of,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=run_name, **where, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    grid = tuner.fit()
    crashed = {r.config["id"]: last_line(str(r.error), 500) for r in grid if r.error is not None}
    sweep.write_rows(tasks, searcher.done, crashed)


def _finished(exp: Path | str, plan: Plan) -> int:
    """Variants of `plan` whose trained record in `exp` is ok and of the same settings (what a run keeps)."""
    paths = Paths(exp)
    recs = ((v, read_record(paths.record(v))) for v in plan)
    return sum(bool(r and r.get("status") == "ok" and r.get("config_hash") == v.config_hash) for v, r in recs)


def run(config: str | Path | dict | Config, overrides: list[str] | None = None, storage: str | Path = "./runs",
        name: str | None = None, address: str | None = None, dry_run: bool = False,
        echo: Echo = say, estimate: bool = False, list_variants: bool = False) -> Path | str:
    """Run (or resume) a sweep and return its experiment folder `<storage>/<name>`.

    `storage` is a local/NFS path (the return value is then a Path) or a URI such as s3://bucket/prefix (returned as
    the experiment's URI string). Every check that can fail on input (config, this machine, storage) runs before Ray
    starts and before anything is written.
    """
    cfg = load_config(config, overrides)
    if name:
        cfg = load_config(cfg.model_dump(mode="json") | {"name": name})
    preflight.check(cfg)
    exp = experiment_location(storage, cfg.name)
    _check_storage(exp)
    plan = make_plan(cfg)
    import torch

    local = not (address or os.environ.get("RAY_ADDRESS"))
    size, where = None, "here"
    if local:
        size = os.cpu_count() or 1, torch.cuda.device_count()
    elif dry_run:  # plan --address: ask the cluster (a run learns it once it is connected)
        size, where = cluster.cluster_size(address), f"cluster at {address or os.environ['RAY_ADDRESS']}"
    echo(describe(plan, cfg, size[1] if size else None, size[0] if size else None, where))
    echo(describe_fusion(plan, cfg))
    echo(f"  output: {exp} ({_finished(exp, plan)} of {len(plan)} variants already trained there)")
    if list_variants:
        echo(listing(plan, cfg))
    guess = None
    if estimate:
        from .estimate import estimate as time_it

        cpus, gpus_there = size or (os.cpu_count() or 1, torch.cuda.device_count())  # timed here, slots there
        guess = time_it(plan, cfg, trial_slots(cfg, cpus, gpus_there), int(gpus_there))
        echo(guess.line())
    if dry_run:
        return exp
    data = load_dataset(cfg.data)  # missing/corrupt data fails here, before Ray starts or anything is written
    # Tune's own tables would drown the one-line progress; its CSV/JSON/TensorBoard logs are still written
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    started = cluster.init_ray(address)
    lock = None
    try:
        gpus_total = cluster.gpus_total()
        gpus = cfg.resources.gpus_per_trial if gpus_total > 0 else 0.0
        devices = preflight.measure_devices(cfg, gpus_total)  # checked before the experiment folder exists
        echo(preflight.latency_line(cfg, devices, gpus_total))
        if gpus_total == 0 and cfg.resources.gpus_per_trial > 0:
            echo("no GPU in the Ray cluster: every trial runs on CPU (resources.gpus_per_trial is ignored)")
        if isinstance(exp, Path):
            exp.mkdir(parents=True, exist_ok=True)
            lock = _lock(exp)
        else:
            echo(f"note: {exp} is object storage: nothing stops two kdsweep drivers from running this experiment "
                 "at once")
        save_experiment(exp, cfg, plan)
        if guess is not None:  # `kdsweep status` and the progress lines start from it until trials have finished
            store.write_bytes(Paths(exp).estimate, json.dumps(guess.to_dict(), indent=1).encode())
        shared = [{"config": cfg.model_dump(mode="json"), "root": str(exp.resolve()) if isinstance(exp, Path) else exp,
                   "data": ray.put(to_arrays(data)),
                   "plan": [{"key": v.key, "variant": v.to_dict()} for v in plan],
                   "cpus_per_trial": cfg.resources.cpus_per_trial}]
        progress = Progress(echo, time.time(), cfg.measure.runtimes)
        progress.prior = guess.epoch_s if guess is not None else None
        track = trackers(cfg, exp, plan, echo)
        if track is not None:
            track.sync()  # what earlier runs finished but could not log
            progress.after_train = track.sync
        sweep = Sweep(cfg, exp, plan, echo, devices)
        sweep.gpus = gpus_total
        sweep.fuse_limit = fuse_limit(cfg.resources.fuse, gpus_total)
        execute(sweep, progress, shared, gpus, cluster.trial_slots(cfg.resources.cpus_per_trial, gpus))
        if track is not None:
            track.sync(force=True)  # the result rows of this run: latency, files, and anything that failed before
    finally:
        if started:
            ray.shutdown()
        if lock is not None:
            lock.close()
    from .analysis import analyze, headline_table, load_experiment, summary_table

    loaded = load_experiment(exp)  # tolerant: a damaged result file shows up as `unreadable`, not a crash
    echo(summary_table(loaded.rows))
    echo(headline_table(loaded))
    echo(f"analysis: {analyze(exp)}")
    echo(f"experiment: {exp}")
    return exp
