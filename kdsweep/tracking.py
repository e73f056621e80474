"""Experiment trackers fed by the driver: MLflow (one run per variant and seed, nested under one run per sweep) and
Weights & Biases (one run per variant, grouped by sweep; offline unless asked).

Tune's own logger callbacks do not fit: one trial process trains many variants in turn, so a run per trial would mix
them. Here the driver logs each variant from the experiment's files as they land: its settings, tags and per-epoch
history once its trial has written its record, its latency per runtime and its files once its result rows exist.
Trials never talk to a tracking server. What was logged is remembered next to the variant's record
(`artifacts/<key>-<hash>/tracking.json`, with the MLflow run id), so a resumed or re-submitted sweep logs nothing twice;
a server that is down or refuses costs one warning, and the next sync (the end of the run, or the next `kdsweep run`)
logs what is missing. Tracking never fails or loses a variant.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .config import Config
from .errors import ResultError, one_line
from .paths import Paths, read_record
from .plan import Plan, Variant, variant_config
from .results import read_rows

Echo = Callable[[str], None]
PHASES = ("trained", "final")  # a variant's record is written (trained), then its result rows (final)
RETRY_AFTER_S = 60.0  # after a failure, syncs during the run wait this long before trying the server again
# the settings a variant's run shows as params: what it trained with, not where it ran or how it was timed
PARAM_SECTIONS = ("data", "teacher", "student", "kd", "prune", "quantize")
METRICS = ("test_acc", "size_mb", "size_nonzero_mb", "size_compressed_mb", "size_bytes", "params", "nonzero_params",
           "sparsity", "macs", "train_seconds", "epochs_run", "top1_agreement")


@dataclass
class Entry:
    """What a tracker logs of one variant, read from the experiment's files."""

    key: str
    label: str
    params: dict[str, str]
    tags: dict[str, str]
    history: list[dict] = field(default_factory=list)  # the record's per-epoch rows
    metrics: dict[str, float] = field(default_factory=dict)  # final numbers; latency per runtime label
    status: str = "ok"
    onnx: str | None = None  # the variant's ONNX file (a path or URI)
    rows: list[dict] = field(default_factory=list)
    finished_ms: int = 0  # one timestamp for every final metric: logging them again writes the same points


def _flat(prefix: str, value: object, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def entry(cfg: Config, v: Variant, paths: Paths, phase: str) -> Entry | None:
    """The variant's entry for `phase`, or None while its files for that phase are not there yet."""
    record = read_record(paths.record(v))
    if record is not None and record.get("config_hash") != v.config_hash:
        record = None  # an older setting's record: not this variant
    rows: list[dict] = []
    if phase == "final":
        try:
            rows = read_rows(paths.result(v)) if storage.exists(paths.result(v)) else []
        except ResultError:
            rows = []
        rows = [r for r in rows if r.get("config_hash") == v.config_hash]
        if not rows:
            return None
    elif record is None:
        return None
    vc = variant_config(cfg, v).model_dump(mode="json")
    params: dict[str, str] = {}
    for section in PARAM_SECTIONS:
        _flat(section, vc[section], params)
    coords = {"stage": v.stage, "seed": v.seed, "temperature": v.temperature, "alpha": v.alpha,
              "prune_amount": v.prune_amount, "prune_method": v.prune_method, "precision": v.precision}
    params |= {k: str(val) for k, val in coords.items() if val is not None} | {f"axis.{k}": json.dumps(val)
                                                                             for k, val in v.values.items()}
    first = rows[0] if rows else {}
    status = str(first.get("status") or (record or {}).get("status") or "ok")
    tags = {"kdsweep.key": v.key, "kdsweep.variant": v.label, "kdsweep.stage": v.stage,
            "kdsweep.config_hash": v.config_hash, "kdsweep.parent": v.parent or "", "kdsweep.status": status,
            "kdsweep.git_sha": str(first.get("git_sha") or ""), "kdsweep.error": str(first.get("error") or "")[:4000]}
    e = Entry(v.key, v.label, params, tags, list((record or {}).get("history") or []), status=status)
    source = first or record or {}
    e.metrics = {m: float(source[m]) for m in METRICS if isinstance(source.get(m), (int, float))}
    for r in rows:
        if r.get("runtime") and isinstance(r.get("latency_ms"), float):
            # as results.csv labels them: torch-cpu / torch-cuda (torch may time on both), onnxruntime-<device>
            device = str(r.get("latency_device") or "cpu").split(":")[0]
            label = f"torch-{device}" if r["runtime"] == "torch" else r["runtime"]
            e.metrics[f"latency_ms/{label}"] = r["latency_ms"]
            if isinstance(r.get("latency_ci95_ms"), float):
                e.metrics[f"latency_ci95_ms/{label}"] = r["latency_ci95_ms"]
    e.rows = rows
    e.onnx = paths.onnx(v) if rows and storage.exists(paths.onnx(v)) else None
    end = first.get("trial_end") or (record or {}).get("trial_end")
    e.finished_ms = int(float(end) * 1000) if isinstance(end, (int, float)) else 0
    return e


class MLflow:
    """One MLflow run per variant under one parent run per sweep, through `MlflowClient` (no global active run)."""

    name = "mlflow"

    def __init__(self, cfg: Config, exp: str):
        # a dead server must cost seconds, not MLflow's default minutes of retries; the user's settings win
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = cfg.tracking.mlflow.uri
        if "://" not in self.uri or self.uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance and refuses it unless asked; a `file:` URI in the config
            # is that request (MLflow suggests sqlite:///mlflow.db instead, which works as is)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.experiment = cfg.tracking.mlflow.experiment or cfg.name
        self.artifacts = cfg.tracking.mlflow.artifacts
        self.client = MlflowClient(tracking_uri=self.uri)
        self.exp = exp
        self.sweep_state = storage.join(exp, "tracking.json")
        self.parent: str | None = None
        self.experiment_id: str | None = None

    def start(self) -> None:
        """Find or create the experiment and the sweep's parent run (remembered in `<exp>/tracking.json`)."""
        if self.parent is not None:
            return
        found = self.client.get_experiment_by_name(self.experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        state = read_record(self.sweep_state) or {}
        parent = state.get("mlflow", {}).get("parent_run_id") if state.get("mlflow", {}).get("uri") == self.uri \
            else None
        if parent is None:
            runs = self.client.search_runs([self.experiment_id], f"tags.`kdsweep.sweep` = '{self.exp}'",
                                           max_results=1)
            parent = runs[0].info.run_id if runs else self.client.create_run(
                self.experiment_id, run_name=Path(str(self.exp)).name,
                tags={"kdsweep.sweep": str(self.exp)}).info.run_id
            storage.write_bytes(self.sweep_state, json.dumps(state | {"mlflow": {"uri": self.uri,
                                                                                "parent_run_id": parent}}).encode())
        self.parent = parent

    def log(self, e: Entry, phases: list[str], state: dict) -> None:
        """Log the `phases` of a variant not logged yet; `state` (its tracking.json entry here) keeps the run id."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = state.get("run_id") or self._find(e) or self.client.create_run(
            self.experiment_id, run_name=e.label,
            tags=e.tags | {"mlflow.parentRunId": self.parent}).info.run_id
        state["run_id"] = run_id
        if "trained" in phases:
            params = [Param(k, v[:6000]) for k, v in e.params.items()]
            metrics = [Metric(k, float(row[k]), e.finished_ms, int(row["epoch"])) for row in e.history
                       for k in ("train_loss", "train_acc", "test_acc", "epoch_seconds")
                       if isinstance(row.get(k), (int, float))]
            for i in range(0, len(params), 100):  # MLflow's limits per batch: 100 params, 1000 metrics
                self.client.log_batch(run_id, params=params[i:i + 100])
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if "final" in phases:
            self.client.log_batch(run_id, metrics=[Metric(k, v, e.finished_ms, 0) for k, v in e.metrics.items()],
                                  tags=[RunTag(k, v) for k, v in e.tags.items()])
            if self.artifacts:
                self._artifacts(run_id, e)
            self.client.set_terminated(run_id, "FINISHED" if e.status == "ok" else "FAILED")

    def _find(self, e: Entry) -> str | None:
        """A run for this variant that a crash kept from being remembered (created, not yet written down)."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent}' and "
                                       f"tags.`kdsweep.key` = '{e.key}' and tags.`kdsweep.config_hash` = "
                                       f"'{e.tags['kdsweep.config_hash']}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _artifacts(self, run_id: str, e: Entry) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            rows = Path(tmp) / "result_rows.json"
            rows.write_text(json.dumps(e.rows, indent=1, default=str))
            self.client.log_artifact(run_id, str(rows))
            if e.onnx is not None:
                onnx = Path(tmp) / "model.onnx"
                onnx.write_bytes(storage.read_bytes(e.onnx))
                self.client.log_artifact(run_id, str(onnx))


class Wandb:
    """One W&B run per variant, grouped by sweep, written when its result rows exist; offline unless asked."""

    name = "wandb"

    def __init__(self, cfg: Config, exp: str):
        import wandb

        self.wandb = wandb
        self.cfg = cfg.tracking.wandb
        self.group = Path(str(exp)).name
        self.dir = str(exp) if storage.is_local(exp) else tempfile.gettempdir()

    def start(self) -> None:
        pass

    def log(self, e: Entry, phases: list[str], state: dict) -> None:
        """A W&B run is written once, whole, when its result rows exist: settings, history and results together."""
        if "final" not in phases:
            return
        run = self.wandb.init(project=self.cfg.project, entity=self.cfg.entity, mode=self.cfg.mode, dir=self.dir,
                              group=self.group, name=e.label, id=state.get("run_id") or _wandb_id(e),
                              config=e.params, tags=[e.tags["kdsweep.stage"], e.status], reinit="create_new",
                              settings=self.wandb.Settings(silent=True, x_disable_stats=True))
        state["run_id"] = run.id
        for row in e.history:
            run.log({k: row[k] for k in ("train_loss", "train_acc", "test_acc", "epoch_seconds") if k in row},
                    step=int(row["epoch"]))
        run.summary.update(e.metrics | {k: v for k, v in e.tags.items() if k.startswith("kdsweep.")})
        run.finish(exit_code=0 if e.status == "ok" else 1)


def _wandb_id(e: Entry) -> str:
    return f"{e.key}-{e.tags['kdsweep.config_hash'][:8]}"[-64:]


@dataclass
class Trackers:
    """The sweep's trackers and what they still owe; `sync` is safe to call at any time, as often as wanted."""

    cfg: Config
    exp: str
    plan: Plan
    echo: Echo
    active: list = field(default_factory=list)
    failed_at: dict[str, float] = field(default_factory=dict)

    def sync(self, keys: list[str] | None = None, force: bool = False) -> int:
        """Log every phase not yet logged of the variants `keys` (default: all); returns how many phases it logged.
        A tracker that fails is warned about and skipped until RETRY_AFTER_S has passed (or `force`)."""
        paths, logged = Paths(self.exp), 0
        chosen = [v for v in self.plan if keys is None or v.key in keys]
        for t in self.active:
            if not force and time.time() - self.failed_at.get(t.name, -1e18) < RETRY_AFTER_S:
                continue
            try:
                t.start()
                for v in chosen:
                    logged += self._one(t, v, paths)
                self.failed_at.pop(t.name, None)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure (network, server, auth) never stops a sweep
                first = t.name not in self.failed_at
                self.failed_at[t.name] = time.time()
                if first or force:
                    self.echo(f"warning: {t.name} tracking failed ({one_line(exc)[:300]}); nothing is lost: what is "
                              "missing is logged by a later sync (the end of this run, or the next `kdsweep run`)")
        return logged

    def _one(self, t: MLflow | Wandb, v: Variant, paths: Paths) -> int:
        """Log what this tracker still owes of one variant: its record once trained, its rows once timed (a skipped
        variant has rows only). Returns the phases logged."""
        where = storage.join(paths.artifact_dir(v), "tracking.json")
        state = read_record(where) or {}
        mine = state.setdefault(t.name, {})
        done = set(mine.get("logged", []))
        if "final" in done:
            return 0
        e = entry(self.cfg, v, paths, "final")
        phases = [p for p in PHASES if p not in done] if e is not None else []
        if e is None and "trained" not in done and (e := entry(self.cfg, v, paths, "trained")) is not None:
            phases = ["trained"]
        if not phases:
            return 0
        t.log(e, phases, mine)
        mine["logged"] = sorted(done | set(phases), key=PHASES.index)
        storage.write_bytes(where, json.dumps(state).encode())
        return len(phases)


def trackers(cfg: Config, exp: str, plan: Plan, echo: Echo) -> Trackers | None:
    """The trackers `cfg.tracking` asks for (None when it asks for none). A missing package is a ConfigError."""
    t = cfg.tracking
    if t.mlflow.uri is None and t.wandb.project is None:
        return None
    out = Trackers(cfg, str(exp), plan, echo)
    if t.mlflow.uri is not None:
        out.active.append(MLflow(cfg, str(exp)))
    if t.wandb.project is not None:
        out.active.append(Wandb(cfg, str(exp)))
    return out
