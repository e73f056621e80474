"""Config -> plan -> task graph of what is left -> one Ray Tune run (see `schedule`) -> result rows.

Finished variants (a result file with the same config hash) are never trained again; unfinished ones resume from
their last epoch checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator

import yaml

from . import storage as store
from .checkpoint import CheckpointError, load_checkpoint
from .config import Config, ConfigError, load_config
from .data import load_dataset
from .plan import Plan, Variant, describe, logits_key, make_plan, planned_epochs, teacher_of, variant_config
from .status import duration, eta_seconds
from .results import COLUMNS, ResultError, provenance, read_row, read_rows, write_rows
from .schedule import Task
from .stages import Paths, read_record, runtime_rows

if TYPE_CHECKING:
    import pandas as pd

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


def _rows(v: Variant, record: dict | None, status: str, error: str | None = None,
          latency: list[dict] | None = None) -> list[dict]:
    """A variant's result rows: one per (runtime, device) it was timed under, else one without latency."""
    row = {"variant": v.label, "stage": v.stage, "temperature": v.temperature, "alpha": v.alpha,
           "prune_amount": v.prune_amount, "seed": v.seed, "key": v.key, "parent": v.parent,
           "prune_method": v.prune_method, "precision": v.precision, "axes": v.axes or None}
    row |= {k: val for k, val in (record or {}).items() if k in COLUMNS}
    row |= provenance() | {"status": status, "error": error, "config_hash": v.config_hash}
    rows = []
    for entry in latency or []:
        r = row | {k: val for k, val in entry.items() if k in COLUMNS}
        # a runtime that could not run this model fails its own row; the variant's other rows stay ok
        rows.append(r | ({"status": "failed", "error": entry["error"]} if entry.get("error") else {}))
    return rows or [row]


def missing_runtimes(cfg: Config, v: Variant, rows: list[dict], devices: list[str] | None) -> set[str]:
    """The configured (runtime, device) pairs that a variant's result rows lack, as 'runtime' or 'runtime on device'.

    `devices` None: latency runs on whatever device the latency trial gets (`auto`), which the driver cannot know
    (logical GPUs, a CPU-only head node), so only the runtimes' names count.
    """
    from .runtimes import runtime_label

    if devices is None:
        want = {rt for rt, _ in runtime_rows(cfg, v, ["cpu"])}
        return want - {(r.get("runtime") or "").split("-")[0] for r in rows}
    want = {(runtime_label(rt, dev), dev) for rt, dev in runtime_rows(cfg, v, devices)}
    have = {(r.get("runtime"), (r.get("latency_device") or "").split(":")[0]) for r in rows}
    return {f"{rt} on {dev}" for rt, dev in want - have}


class _Progress:
    """One status line per finished task: what finished, trained/total per stage, failures, best accuracy, elapsed."""

    def __init__(self, echo: Echo, start: float, runtimes: list[str]):
        self.echo, self.start, self.runtimes = echo, start, runtimes
        self.best: float | None = None
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.failed = 0
        self.slots = 1
        self.pending: dict[str, tuple[str, int]] = {}  # train task id -> (stage, epochs), until it finishes
        self.finished: list[tuple[str, int, float]] = []  # (stage, epochs, seconds in the trial) of finished ones

    def event(self, task: "Task", status: str, result: dict) -> None:
        if status == "start":
            if task.kind == "logits":
                self.echo(f"[teacher logits] seed {task.payload['seed']}: one teacher pass over every student view")
            elif task.kind == "latency":
                self.echo(f"[latency] queued: {len(task.payload['keys'])} model(s) x {', '.join(self.runtimes)}, "
                          "interleaved on one device once all training has finished")
            return
        if task.kind == "train":
            self.done[task.stage] = self.done.get(task.stage, 0) + 1
            stage, epochs = self.pending.pop(task.id, (task.stage, 0))
            start, end = result.get("trial_start"), result.get("trial_end")
            if status == "ok" and isinstance(start, float) and isinstance(end, float):
                self.finished.append((stage, epochs, end - start))
        acc = result.get("test_acc")
        if status == "ok" and isinstance(acc, float) and (self.best is None or acc > self.best):
            self.best = acc
        self.failed += status != "ok"
        el = int(time.time() - self.start)
        counts = " ".join(f"{s} {self.done.get(s, 0)}/{n}" for s, n in self.total.items())
        best = f"{self.best:.4f}" if self.best is not None else "-"
        fail = f", {self.failed} not ok" if self.failed else ""
        what = status.split(":")[0]
        trained = f" · trained {counts}" if counts else ""
        eta = eta_seconds(self.finished, list(self.pending.values()), self.slots) if self.pending else None
        left = f" · ETA ~{duration(eta)} of training" if eta is not None else ""
        self.echo(f"[{task.id}] {what}{trained}{fail} · best acc {best} · {el // 60}m{el % 60:02d}s elapsed{left}")


@contextlib.contextmanager
def _stderr_to(file: "IO[bytes]") -> Iterator[None]:
    """Send file descriptor 2 (where Ray's C++ core logs) to `file` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _host_port(address: str) -> tuple[str, int | None]:
    """(host, port) of a Ray address, `ray://` ones too; port None for other forms ("auto")."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else (address.split("://")[-1], None)


def _listening(address: str, timeout: float = 5.0) -> bool:
    """Whether anything accepts a TCP connection at a HOST:PORT address; True for other forms."""
    host, port = _host_port(address)
    if port is None:
        return True  # "auto" and the like: Ray resolves those itself
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _connect(address: str, kw: dict, key: str = "--address") -> None:
    """`ray.init(address=...)` whose failures are one line (ConfigError): a cluster that refuses this driver's token,
    or none at the address. Ray itself retries, printing a gRPC warning a second; those stay off the terminal (shown
    if the connection succeeds, or fails some other way). With nothing listening at the address at all Ray waited
    more than 5 minutes; a TCP probe answers that case at once."""
    import tempfile

    import ray

    no_cluster = ConfigError(f"{key} {address}: no Ray cluster answered there (start one with `ray start "
                             "--head`, or leave --address and RAY_ADDRESS unset to run locally)")
    if not _listening(address):
        raise no_cluster
    with tempfile.TemporaryFile() as log:
        try:
            with _stderr_to(log):
                ray.init(address=address, **kw)
        except ConnectionError as exc:
            why = f"{exc} {exc.__cause__ or ''}"
            if "InvalidAuthToken" in why or "AuthenticationError" in why:
                raise ConfigError(
                    f"{key} {address}: the Ray cluster refused this driver's token: set RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, as on every node "
                    "(`ray get-auth-token` on the head prints it)") from None
            raise no_cluster from None
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))


def _init_ray(address: str | None, echo: Echo) -> bool:
    """Connect to `address` (or RAY_ADDRESS) or start Ray locally on loopback; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    key = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if (host := _host_port(address)[0]).startswith("127."):
            kw["_node_ip_address"] = host  # Ray would otherwise swap loopback for the routable address
        _connect(address, kw, key)
    else:
        # stay on loopback: a local sweep has no reason to open Ray's unauthenticated ports to the network
        ray.init(_node_ip_address=os.environ.get("KDSWEEP_NODE_IP", LOCAL_NODE_IP), **kw)
    return True


class Sweep:
    """One `kdsweep run`: state shared by its waves."""

    def __init__(self, cfg: Config, exp: "Path | str", plan: Plan, echo: Echo, devices: list[str] | None):
        self.cfg, self.exp, self.plan, self.echo, self.devices = cfg, exp, plan, echo, devices
        self.paths = Paths(exp)
        self.by_key = plan.by_key()
        self.progress = _Progress(echo, time.time(), cfg.measure.runtimes)
        self._verified: dict[tuple, bool] = {}
        self._left: set[str] = set()  # keys of the variants this run trains or re-times

    # -- state ------------------------------------------------------------------------------------------
    def finished(self, v: Variant, say: bool = False) -> bool:
        """Result rows with this variant's config hash exist, are ok, and cover every configured runtime and device.

        `say`: tell why not, when rows exist. Rows of an experiment made before runtimes became rows have no
        `runtime`: such a variant is re-timed (never retrained, its trained record still holds).
        """
        echo = self.echo if say else (lambda _msg: None)
        path = self.paths.result(v)
        if not store.exists(path):
            return False
        try:
            rows = read_rows(path)
        except ResultError as exc:
            echo(f"warning: {exc}; recomputing {v.key}")
            return False
        row = rows[0]
        if row["config_hash"] != v.config_hash:
            echo(f"config changed for {v.key} (hash {row['config_hash']} -> {v.config_hash}): recomputing")
            return False
        bad = next((r for r in rows if r["status"] != "ok"), None)
        if bad:
            echo(f"retrying {v.key} (last run: {bad['status']}: {bad['error']})")
            return False
        missing = missing_runtimes(self.cfg, v, rows, self.devices)
        if missing:
            echo(f"timing {v.key} under {', '.join(sorted(missing))}")
            return False
        return True

    def trained(self, v: Variant) -> dict | None:
        """The ok trained record of this exact variant, if its weights are on disk and load."""
        rec = read_record(self.paths.record(v))
        if not (rec and rec.get("status") == "ok" and rec.get("config_hash") == v.config_hash):
            return None
        if v.stage == "quantized":  # its model is the INT8 ONNX file (an empty one is a write that never happened)
            return rec if store.exists(self.paths.onnx(v)) and store.info(self.paths.onnx(v)).size > 0 else None
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
    def tasks(self) -> list[Task]:
        """The task graph of what is left: untrained variants, the teacher logits they need, one latency task."""
        left = [v for v in self.plan if not self.finished(v, say=True)]  # each result row read once
        todo = [v for v in left if not self.trained(v)]
        todo_keys = {v.key for v in todo}
        cached = self.cfg.kd.teacher_logits == "cached"
        # the logit cache each KD variant left reads (one per teacher and student views), keyed once per variant
        lkey = {v.key: logits_key(self.cfg, v) for v in todo if cached and v.stage in ("student", "pruned") and v.alpha}
        logits: dict[str, Variant] = {}  # one task per cache left to compute: its first KD user
        checked: set[str] = set()  # one existence check per cache (a round trip on S3), not per variant
        for v in todo:
            lid = lkey.get(v.key)
            if lid is not None and lid not in checked:
                checked.add(lid)
                if not store.exists(self.paths.teacher_logits(variant_config(self.cfg, v), v.seed)):
                    logits[lid] = v
        tasks = []
        for lid, v in logits.items():
            teacher = teacher_of(v, self.by_key).key
            tasks.append(Task(lid, "logits", "logits", tuple(k for k in [teacher] if k in todo_keys),
                              {"seed": v.seed, "teacher": teacher, "student": v.key}))
        for v in todo:
            deps = [v.parent] if v.parent else []
            if v.stage == "student" and v.key in lkey:
                deps = [lkey[v.key]]  # its teacher, through the logits
            elif v.stage == "pruned" and v.key in lkey:
                deps.append(lkey[v.key])  # recovery epochs distil too (usually implied by the parent)
            deps = [d for d in deps if d in todo_keys or d in logits]
            tasks.append(Task(v.key, "train", v.stage, tuple(deps), {"variant": v.to_dict()}))
        if left:
            # every model of the sweep is timed again, together: latencies from separate sessions are not comparable
            for v in self.plan:  # never read a latency measured for earlier weights of a variant
                if store.exists(self.paths.latency(v)):
                    store.remove(self.paths.latency(v))
            self._left = {v.key for v in left}
            tasks.append(Task("latency", "latency", "latency", tuple(t.id for t in tasks if t.kind == "train"),
                              {"keys": [v.key for v in self.plan], "devices": self.devices}))
        return tasks

    def execute(self, shared: list, gpus: float, slots: int) -> None:
        """Run every task left as one Ray Tune run; then write a result row for every variant it touched."""
        from ray import tune

        from .schedule import DagSearcher
        from .trainables import run_task

        tasks = self.tasks()
        if not tasks:
            return
        train = [t for t in tasks if t.kind == "train"]
        self.progress.total = {s: n for s in ("teacher", "baseline", "student", "pruned", "quantized")
                               if (n := sum(t.stage == s for t in train))}
        self.progress.slots = slots
        self.progress.pending = {t.id: (t.stage, planned_epochs(self.cfg, self.by_key[t.id])) for t in train}
        if train:
            self.echo(f"[sweep] training {len(train)} variant(s): "
                      + ", ".join(f"{s} {n}" for s, n in self.progress.total.items()) + f"; {slots} trial slot(s)")
        run_name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        searcher = DagSearcher(tasks, slots, self.paths.signals(run_name), self.progress.event)
        res = {"cpu": self.cfg.resources.cpus_per_trial, "gpu": gpus}
        trainable = tune.with_resources(tune.with_parameters(run_task, shared=shared), res)
        name_of = lambda t: t.config["id"]  # noqa: E731
        if isinstance(self.exp, Path):
            where = {"storage_path": str((self.exp / "tune").resolve())}
        else:  # hand Tune the filesystem itself, so it reaches the same endpoint (AWS_ENDPOINT_URL) as kdsweep
            fs, path = store.resolve(store.join(self.exp, "tune"))
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
        crashed = {r.config["id"]: str(r.error).strip().splitlines()[-1][:500] for r in grid if r.error is not None}
        self._write_rows(tasks, searcher.done, crashed)

    def _write_rows(self, tasks: list[Task], done: dict[str, str], crashed: dict[str, str]) -> None:
        """Rows for this run's variants, parents first, so a skipped child can quote its parent's error."""
        for t in tasks:
            if t.kind == "logits" and t.id in crashed:
                self.echo(f"warning: teacher logits for seed {t.payload['seed']} failed: {crashed[t.id]}")
        if not any(t.kind == "latency" for t in tasks):
            return
        for v in self.plan:
            rec = self.trained(v)
            raw = read_record(self.paths.record(v)) or {}
            if v.key in self._left:
                for w in raw.get("warnings", []) if raw.get("config_hash") == v.config_hash else []:
                    self.echo(f"warning [{v.key}]: {w}")
            out = self.paths.result(v)
            if rec and store.exists(self.paths.latency(v)):
                write_rows(_rows(v, rec, "ok", None, json.loads(store.read_text(self.paths.latency(v)))), out)
            elif v.key not in self._left:
                continue  # finished before this run and not re-timed (the latency task failed): keep its rows
            elif rec:
                why = crashed.get("latency") or done.get("latency") or "the latency task did not run"
                write_rows(_rows(v, rec, "failed", f"latency not measured: {why}"), out)
            elif v.key in crashed:  # the trial raised even after its retries
                write_rows(_rows(v, raw or None, "failed", crashed[v.key]), out)
            elif raw.get("config_hash") == v.config_hash and raw.get("status") == "failed":  # diverged
                write_rows(_rows(v, raw, "failed", raw.get("error")), out)
            else:
                problem = self.parent_problem(v) or self._logits_problem(v, done, crashed)
                write_rows(_rows(v, None, "skipped", problem or f"skipped: {done.get(v.key, 'not run')}"), out)

    def _logits_problem(self, v: Variant, done: dict[str, str], crashed: dict[str, str]) -> str | None:
        if not v.alpha:
            return None
        lid = logits_key(self.cfg, v)
        if lid in done and done[lid] != "ok":
            return f"skipped: teacher logits for seed {v.seed} failed ({crashed.get(lid) or done[lid]})"
        return None


def measure_devices(cfg: Config, gpus_total: float) -> list[str] | None:
    """The devices latency is measured on (None: whatever the latency trial has, `auto`); a device or runtime the
    cluster cannot provide is a ConfigError."""
    m = cfg.measure
    if m.latency_device == "cuda" and gpus_total == 0:
        raise ConfigError("measure.latency_device: 'cuda' but the Ray cluster has no GPU; use auto or cpu")
    if m.devices is not None:
        devices: list[str] | None = list(m.devices)
        if "cuda" in devices and gpus_total == 0:
            raise ConfigError("measure.devices: 'cuda' but the Ray cluster has no GPU; use [cpu] or leave it unset")
    else:
        devices = None if m.latency_device == "auto" else [m.latency_device]
    may_cuda = "cuda" in (devices or ["cuda" if gpus_total > 0 else "cpu"])
    if "tensorrt" in m.runtimes and not may_cuda:
        raise ConfigError("measure.runtimes: tensorrt runs only on a CUDA GPU, but latency is measured on cpu"
                          + ("" if devices else " (the Ray cluster has no GPU)"))
    # `auto` on a machine with a real GPU times on cuda: without this check a GPU box with pip's default (CPU-only)
    # onnxruntime would fail every variant's ORT row after the whole sweep (seen on an H200)
    import torch

    auto_cuda = devices is None and gpus_total > 0 and torch.cuda.is_available()
    if "onnxruntime" in m.runtimes and ("cuda" in (devices or []) or auto_cuda):
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            how = " (measure.latency_device: auto on a machine with a GPU)" if auto_cuda else ""
            raise ConfigError(f"measure.runtimes: onnxruntime would time models on cuda{how}, but this onnxruntime has "
                              "no CUDAExecutionProvider: install onnxruntime-gpu, or set measure.devices=[cpu] or "
                              "measure.runtimes=[torch]")
    return devices


def _slots(cfg: Config, gpus: float) -> int:
    """How many trials the Ray cluster can run at once with each trial's resources (at least 1)."""
    import ray

    have = ray.cluster_resources()
    n = have.get("CPU", 1) / cfg.resources.cpus_per_trial
    if gpus:
        n = min(n, have.get("GPU", 0) / gpus)
    return max(1, int(n + 1e-9))


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
                      json.dumps([v.to_dict() | {"key": v.key, "variant": v.label} for v in plan], indent=1).encode())


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
    # Tune's own tables would drown the one-line progress; its CSV/JSON/TensorBoard logs are still written
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    from .trainables import dataset_to_arrays

    started = _init_ray(address, echo)
    lock = None
    try:
        gpus_total = float(ray.cluster_resources().get("GPU", 0))
        gpus = cfg.resources.gpus_per_trial if gpus_total > 0 else 0.0
        devices = measure_devices(cfg, gpus_total)  # checked before the experiment folder exists
        if gpus_total == 0 and cfg.resources.gpus_per_trial > 0:
            echo("no GPU in the Ray cluster: every trial runs on CPU (resources.gpus_per_trial is ignored)")
        if local:
            exp.mkdir(parents=True, exist_ok=True)
            lock = _lock(exp)
        else:
            echo(f"note: {exp} is object storage: nothing stops two kdsweep drivers from running this experiment "
                 "at once")
        _save_experiment(exp, cfg, plan)
        shared = [{"config": cfg.model_dump(mode="json"), "root": str(exp.resolve()) if local else exp,
                   "data": ray.put(dataset_to_arrays(data)),
                   "plan": [{"key": v.key, "variant": v.to_dict()} for v in plan],
                   "cpus_per_trial": cfg.resources.cpus_per_trial}]
        sweep = Sweep(cfg, exp, plan, echo, devices)
        sweep.execute(shared, gpus, _slots(cfg, gpus))
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


def summary_table(df: "pd.DataFrame") -> str:
    """A short fixed-width table, one line per variant and seed: status, accuracy, latency per runtime, sizes."""
    import pandas as pd

    if df.empty:
        return "(no results)"
    order = {s: i for i, s in enumerate(("teacher", "baseline", "student", "pruned", "quantized"))}
    df = df.assign(_o=df["stage"].map(order), _rt=df["runtime"].fillna("") + "@" + df["latency_device"].fillna(""))
    rts = [r for r in dict.fromkeys(df["_rt"]) if r != "@"]
    names = {r: r.split("@")[0].replace("onnxruntime", "ort") + ("" if r.endswith("@cpu") else "@gpu") for r in rts}
    f = lambda x, p: "-" if pd.isna(x) else f"{x:.{p}f}"  # noqa: E731
    w = max(32, int(df["variant"].str.len().max()) + 1)
    lines = [f"{'variant':<{w}}{'seed':>5} {'status':<11}{'acc':>7}" + "".join(f"{names[r] + ' ms':>16}" for r in rts)
             + f"{'MB':>8}{'nz MB':>8}{'file MB':>8}"]
    for (_, _, _, _, _, seed, label), g in df.groupby(["_o", "temperature", "alpha", "prune_amount", "prune_method",
                                                        "seed", "variant"], dropna=False, sort=True):
        r = g.iloc[0]
        status = "ok" if (g["status"] == "ok").all() else g.loc[g["status"] != "ok", "status"].iloc[0]
        lat = {x: y for x, y in zip(g["_rt"], g["latency_ms"])}
        lines.append(f"{label:<{w}}{seed:>5} {status:<11}{f(r.test_acc, 4):>7}"
                     + "".join(f"{f(lat.get(x), 2):>16}" for x in rts)
                     + f"{f(r.size_mb, 2):>8}{f(r.size_nonzero_mb, 2):>8}{f(r.size_bytes / 1e6, 2):>8}")
    return "\n".join(lines)
