"""Config -> plan -> one Ray Tune run per wave of independent variants -> latency phase -> result rows.

Waves run in dependency order: (teacher, baseline) -> cached teacher logits -> KD students -> pruned. Finished
variants (a result file with the same config hash) are never trained again; unfinished ones resume from their
last epoch checkpoint.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from . import storage as store
from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, ConfigError, load_config
from .data import load_dataset
from .plan import Plan, Variant, describe, make_plan
from .results import COLUMNS, ResultError, provenance, read_row, write_row
from .stages import Paths, read_record

Echo = Callable[[str], None]


def say(msg: str) -> None:
    """Default output: a module-level function, so Tune can pickle the progress callback that holds it."""
    print(msg, flush=True)

LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"


def _check_storage(exp: "Path | str") -> None:
    """Fail before any work if the experiment folder could not be created or written (or its bucket reached)."""
    if isinstance(exp, Path):
        _writable_ancestor(exp)
        return
    try:
        store.check_reachable(exp)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError subclasses and ArrowException alike
        raise ConfigError(f"--storage: {exp!r} is not reachable ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _writable_ancestor(path: Path) -> None:
    """Fail before any work if the experiment folder could not be created or written."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"--storage: {str(p)!r} is not a writable directory")


def _row(v: Variant, record: dict | None, status: str, error: str | None = None, latency: dict | None = None) -> dict:
    row = {"variant": v.label, "stage": v.stage, "temperature": v.temperature, "alpha": v.alpha,
           "prune_amount": v.prune_amount, "seed": v.seed, "key": v.key, "parent": v.parent}
    row |= {k: val for k, val in (record or {}).items() if k in COLUMNS}
    row |= (latency or {}) | provenance()
    row |= {"status": status, "error": error, "config_hash": v.config_hash}
    return row


class _Progress:
    """One status line per event: stage, trials done/total, best accuracy so far, elapsed."""

    def __init__(self, echo: Echo, start: float):
        self.echo, self.start, self.best = echo, start, None

    def callback(self, wave: str, total: int):
        from ray import tune

        progress = self

        class Cb(tune.Callback):
            done = failed = 0

            def on_trial_result(self, iteration, trials, trial, result, **info):
                acc = result.get("test_acc")
                if acc is not None and (progress.best is None or acc > progress.best):
                    progress.best = acc

            def on_trial_complete(self, iteration, trials, trial, **info):
                self.done += 1
                progress.line(wave, self.done, total, self.failed)

            def on_trial_error(self, iteration, trials, trial, **info):
                self.done += 1
                self.failed += 1
                progress.line(wave, self.done, total, self.failed)

        return Cb()

    def line(self, wave: str, done: int, total: int, failed: int = 0) -> None:
        el = int(time.time() - self.start)
        best = f"{self.best:.4f}" if self.best is not None else "-"  # best test accuracy of this wave
        fail = f", {failed} failed" if failed else ""
        self.echo(f"[{wave}] {done}/{total} done{fail} · best acc so far {best} · {el // 60}m{el % 60:02d}s elapsed")


def _init_ray(address: str | None, echo: Echo) -> bool:
    """Connect to `address` (or RAY_ADDRESS) or start Ray locally on loopback; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if host.startswith("127."):
            kw["_node_ip_address"] = host  # Ray would otherwise swap loopback for the routable address
        ray.init(address=address, **kw)
    else:
        # stay on loopback: a local sweep has no reason to open Ray's unauthenticated ports to the network
        ray.init(_node_ip_address=os.environ.get("KDSWEEP_NODE_IP", LOCAL_NODE_IP), **kw)
    return True


class Sweep:
    """One `kdsweep run`: state shared by its waves."""

    def __init__(self, cfg: Config, exp: "Path | str", plan: Plan, echo: Echo):
        self.cfg, self.exp, self.plan, self.echo = cfg, exp, plan, echo
        self.paths = Paths(exp)
        self.by_key = plan.by_key()
        self.progress = _Progress(echo, time.time())
        self._verified: dict[tuple, bool] = {}

    # -- state ------------------------------------------------------------------------------------------
    def finished(self, v: Variant, say: bool = False) -> bool:
        """A result row with this variant's config hash exists and is ok (`say`: tell why not, when it exists)."""
        echo = self.echo if say else (lambda _msg: None)
        path = self.paths.result(v)
        if not store.exists(path):
            return False
        try:
            row = read_row(path)
        except ResultError as exc:
            echo(f"warning: {exc}; recomputing {v.key}")
            return False
        if row["config_hash"] != v.config_hash:
            echo(f"config changed for {v.key} (hash {row['config_hash']} -> {v.config_hash}): recomputing")
            return False
        if row["status"] != "ok":
            echo(f"retrying {v.key} (last run: {row['status']}: {row['error']})")
            return False
        return True

    def trained(self, v: Variant) -> dict | None:
        """The ok trained record of this exact variant, if its weights are on disk and load."""
        rec = read_record(self.paths.record(v))
        if not (rec and rec.get("status") == "ok" and rec.get("config_hash") == v.config_hash):
            return None
        return rec if self._weights_ok(self.paths.model(v)) else None

    def _weights_ok(self, path: str) -> bool:
        """Whether a final-weights file exists and loads (checked once per file version)."""
        if not store.exists(path):
            return False
        st = store.info(path)
        sig = (str(path), st.mtime_ns, st.size)
        if sig not in self._verified:
            try:
                load_checkpoint(path)
                self._verified[sig] = True
            except CheckpointError as exc:
                self.echo(f"warning: {exc}; retraining that variant")
                store.remove(path)
                return False
        return True

    def parent_problem(self, v: Variant) -> str | None:
        """Why `v` cannot be trained (its parent failed or was skipped), else None."""
        if v.parent is None:
            return None
        parent = self.by_key[v.parent]
        if self.trained(parent):
            return None
        rec = read_record(self.paths.record(parent))
        why = rec.get("error") if rec else None
        if not why and store.exists(self.paths.result(parent)):
            try:
                why = read_row(self.paths.result(parent))["error"]
            except ResultError:
                pass
        return f"skipped: parent {parent.key} has no trained model ({why or 'not trained'})"

    # -- work -------------------------------------------------------------------------------------------
    def run_wave(self, name: str, variants: list[Variant], shared: list, gpus: float) -> None:
        """Train `variants` concurrently as one Tuner run; failures become failed rows."""
        from ray import tune

        from .trainables import train_trial

        todo = []
        for v in variants:
            if self.finished(v, say=True) or self.trained(v):
                continue
            problem = self.parent_problem(v)
            if problem:
                write_row(_row(v, None, "skipped", problem), self.paths.result(v))
                continue
            todo.append(v)
        if not todo:
            return
        res = {"cpu": self.cfg.resources.cpus_per_trial, "gpu": gpus}
        trainable = tune.with_resources(tune.with_parameters(train_trial, shared=shared), res)
        key_of = lambda t: Variant.from_dict(t.config["variant"]).key  # noqa: E731
        if isinstance(self.exp, Path):
            where = {"storage_path": str((self.exp / "tune").resolve())}
        else:  # hand Tune the filesystem itself, so it reaches the same endpoint (AWS_ENDPOINT_URL) as kdsweep
            fs, path = store.resolve(store.join(self.exp, "tune"))
            where = {"storage_path": path, "storage_filesystem": fs}
        tuner = tune.Tuner(
            trainable,
            param_space={"variant": tune.grid_search([v.to_dict() for v in todo])},
            # reuse_actors: a trial process keeps torch imported and the dataset mapped for the next trial
            tune_config=tune.TuneConfig(trial_name_creator=key_of, trial_dirname_creator=key_of, reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", **where,
                failure_config=tune.FailureConfig(max_failures=2), verbose=0,
                callbacks=[self.progress.callback(name, len(todo))]),
        )
        self.echo(f"[{name}] training {len(todo)} variant(s)")
        self.progress.best = None
        grid = tuner.fit()
        crashed = {Variant.from_dict(r.config["variant"]).key: str(r.error).strip().splitlines()[-1][:500]
                   for r in grid if r.error is not None}
        for v in todo:
            rec = read_record(self.paths.record(v))
            for w in (rec or {}).get("warnings", []):
                self.echo(f"warning [{v.key}]: {w}")
            if v.key in crashed:  # the trial raised even after its retries
                write_row(_row(v, rec, "failed", crashed[v.key]), self.paths.result(v))
            elif rec and rec.get("config_hash") == v.config_hash and rec.get("status") == "failed":  # diverged
                write_row(_row(v, rec, "failed", rec.get("error")), self.paths.result(v))

    def ensure_logits(self, shared: list, gpus: float) -> None:
        """One pass of each seed's teacher over every student view, before any KD student trains."""
        import ray

        from .trainables import logits_task

        if self.cfg.kd.teacher_logits != "cached":
            return
        kd = self.plan.stage("student")
        seeds = sorted({v.seed for v in kd if not self.finished(v) or any(
            not self.finished(p) for p in self.plan.stage("pruned") if p.parent == v.key)})
        seeds = [s for s in seeds if self.trained(self.by_key[f"teacher-s{s}"])
                 and not store.exists(self.paths.teacher_logits(self.cfg, s))]
        if seeds:
            self.echo(f"[teacher logits] one pass per seed for seeds {seeds}")
            # nothing else runs between waves: give each pass a whole device
            opts = {"num_cpus": self.cfg.resources.cpus_per_trial, "num_gpus": 1 if gpus else 0}
            ray.get([logits_task.options(**opts).remote(shared, s) for s in seeds])

    def measure(self, shared: list, gpus_total: float, num_classes: int) -> None:
        """Latency of every trained variant without a result yet, each device used by one measurement at a time."""
        import ray

        from .trainables import measure_task

        todo = [v for v in self.plan if not self.finished(v) and self.trained(v)]
        if not todo:
            return
        on_gpu = gpus_total >= 1 and self.cfg.measure.latency_device != "cpu"
        workers = int(gpus_total) if on_gpu else 1  # a CPU is one device: several timers would share its cores
        self.echo(f"[latency] measuring {len(todo)} variant(s) on {workers} device(s), one at a time per device")
        opts = {"num_cpus": self.cfg.resources.cpus_per_trial, "num_gpus": 1 if on_gpu else 0}
        shards = [[v.key for v in todo[i::workers]] for i in range(workers)]
        lat: dict[str, dict] = {}
        for part in ray.get([measure_task.options(**opts).remote(shared, s, num_classes) for s in shards if s]):
            lat |= part
        for v in todo:
            write_row(_row(v, self.trained(v), "ok", None, lat[v.key]), self.paths.result(v))


def _lock(exp: Path):  # noqa: ANN202 - returns the open lock file, which must stay referenced
    """Hold an exclusive lock on the experiment so two drivers never train into it at once (freed at exit/kill)."""
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


def _save_experiment(exp: "Path | str", cfg: Config, plan: Plan) -> None:
    import json

    store.write_bytes(store.join(exp, "config.yaml"),
                      yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())
    store.write_bytes(store.join(exp, "plan.json"),
                      json.dumps([v.to_dict() | {"key": v.key} for v in plan], indent=1).encode())


def run(config: "str | Path | dict | Config", overrides: list[str] | None = None, storage: str | Path = "./runs",
        name: str | None = None, address: str | None = None, dry_run: bool = False,
        echo: Echo = say) -> "Path | str":
    """Run (or resume) a sweep and return its experiment folder `<storage>/<name>`.

    `storage` is a local/NFS path (the return value is then a Path) or a URI such as s3://bucket/prefix (returned as
    the experiment's URI string).
    """
    cfg = load_config(config, overrides)
    if name:
        cfg = load_config(cfg.model_dump(mode="json") | {"name": name})
    local = store.is_local(storage)
    if local:  # a file:// URI is a local path too
        exp: Path | str = Path(store.resolve(storage)[1] if str(storage).startswith("file://") else storage)
        exp = exp.expanduser() / cfg.name
    else:
        exp = store.join(str(storage), cfg.name)
    _check_storage(exp)
    plan = make_plan(cfg)
    echo(describe(plan, cfg))
    if dry_run:
        return exp
    data = load_dataset(cfg.data)  # missing/corrupt data fails here, before Ray starts or anything is written
    if local:
        exp.mkdir(parents=True, exist_ok=True)
        lock = _lock(exp)
    else:
        lock = None
        echo(f"note: {exp} is object storage: nothing stops two kdsweep drivers from running this experiment at once")
    _save_experiment(exp, cfg, plan)
    # Tune's own tables would drown the one-line progress; its CSV/JSON/TensorBoard logs are still written
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    from .trainables import dataset_to_arrays

    started = _init_ray(address, echo)
    try:
        gpus_total = float(ray.cluster_resources().get("GPU", 0))
        gpus = cfg.resources.gpus_per_trial if gpus_total > 0 else 0.0
        if gpus_total == 0 and cfg.measure.latency_device == "cuda":
            raise ConfigError("measure.latency_device: 'cuda' but the Ray cluster has no GPU; use auto or cpu")
        if gpus_total == 0 and cfg.resources.gpus_per_trial > 0:
            echo("no GPU in the Ray cluster: every trial runs on CPU (resources.gpus_per_trial is ignored)")
        shared = [{"config": cfg.model_dump(mode="json"), "root": str(exp.resolve()) if local else exp,
                   "data": ray.put(dataset_to_arrays(data)),
                   "plan": [{"key": v.key, "variant": v.to_dict()} for v in plan],
                   "cpus_per_trial": cfg.resources.cpus_per_trial}]
        sweep = Sweep(cfg, exp, plan, echo)
        sweep.run_wave("teacher+baseline", plan.stage("teacher") + plan.stage("baseline"), shared, gpus)
        sweep.ensure_logits(shared, gpus)
        sweep.run_wave("student", plan.stage("student"), shared, gpus)
        sweep.run_wave("pruned", plan.stage("pruned"), shared, gpus)
        sweep.measure(shared, gpus_total, data.num_classes)
    finally:
        if started:
            ray.shutdown()
        if lock is not None:
            lock.close()
    from .analysis import analyze, headline_table, load_experiment

    loaded = load_experiment(exp)  # tolerant: a damaged result file shows up as `unreadable`, not a crash
    echo(summary_table(loaded.rows))
    echo(headline_table(loaded))
    echo(f"analysis: {analyze(exp)}")
    echo(f"experiment: {exp}")
    return exp


def summary_table(df) -> str:
    """A short fixed-width table of the rows: variant, seed, status, accuracy, latency, sizes."""
    if df.empty:
        return "(no results)"
    order = {"teacher": 0, "baseline": 1, "student": 2, "pruned": 3}
    df = df.assign(_o=df["stage"].map(order)).sort_values(["_o", "temperature", "alpha", "prune_amount", "seed"])
    lines = [f"{'variant':<32}{'seed':>5} {'status':<11}{'acc':>7}{'lat ms':>9}{'MB':>8}{'nz MB':>8}{'zst MB':>8}"]
    f = lambda x, p: "-" if x is None or x != x else f"{x:.{p}f}"  # noqa: E731
    for r in df.itertuples():
        lines.append(f"{r.variant:<32}{r.seed:>5} {r.status:<11}{f(r.test_acc, 4):>7}{f(r.latency_ms, 2):>9}"
                     f"{f(r.size_mb, 2):>8}{f(r.size_nonzero_mb, 2):>8}{f(r.size_compressed_mb, 2):>8}")
    return "\n".join(lines)
