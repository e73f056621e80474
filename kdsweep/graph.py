"""A sweep's state on disk and the work left: which variants are finished or trained, the task graph of what is
left (train tasks, teacher-logit tasks, one latency task), and the result rows written once the run is over.

Finished variants (result rows with the same config hash, ok, covering every configured runtime) are never trained
again; trained ones (an ok record and loadable weights) are only re-timed; the rest resume from their last epoch
checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import json
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from . import storage as store
from .checkpoint import load_checkpoint
from .config import Config
from .errors import CheckpointError, ResultError
from .fusion import fused_groups, group_id
from .names import runtime_label
from .paths import Paths, read_record
from .plan import Plan, Variant, logits_key, teacher_of, variant_config
from .results import COLUMNS, read_row, read_rows, write_rows
from .schedule import Task
from .stages import runtime_rows
from .version import __version__

Echo = Callable[[str], None]


def provenance() -> dict:
    """Versions and git sha that produced a row."""
    import ray
    import torch

    return {"kdsweep_version": __version__, "torch_version": torch.__version__, "ray_version": ray.__version__,
            "git_sha": _git_sha(), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@functools.cache  # one `git rev-parse` per driver, not one per result row
def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def rows(v: Variant, record: dict | None, status: str, error: str | None = None,
         latency: list[dict] | None = None) -> list[dict]:
    """A variant's result rows: one per (runtime, device) it was timed under, else one without latency."""
    row = {"variant": v.label, "stage": v.stage, "temperature": v.temperature, "alpha": v.alpha,
           "prune_amount": v.prune_amount, "seed": v.seed, "key": v.key, "parent": v.parent,
           "prune_method": v.prune_method, "precision": v.precision, "axes": v.axes or None}
    row |= {k: val for k, val in (record or {}).items() if k in COLUMNS}
    row |= provenance() | {"status": status, "error": error, "config_hash": v.config_hash}
    out = []
    for entry in latency or []:
        r = row | {k: val for k, val in entry.items() if k in COLUMNS}
        # a runtime that could not run this model fails its own row; the variant's other rows stay ok
        out.append(r | ({"status": "failed", "error": entry["error"]} if entry.get("error") else {}))
    return out or [row]


def missing_runtimes(cfg: Config, v: Variant, rows: list[dict], devices: list[str] | None) -> set[str]:
    """The configured (runtime, device) pairs that a variant's result rows lack, as 'runtime' or 'runtime on device'.

    `devices` None: latency runs on whatever device the latency trial gets (`auto`), which the driver cannot know
    (logical GPUs, a CPU-only head node), so only the runtimes' names count.
    """
    if devices is None:
        want = {rt for rt, _ in runtime_rows(cfg, v, ["cpu"])}
        return want - {(r.get("runtime") or "").split("-")[0] for r in rows}
    want = {(runtime_label(rt, dev), dev) for rt, dev in runtime_rows(cfg, v, devices)}
    have = {(r.get("runtime"), (r.get("latency_device") or "").split(":")[0]) for r in rows}
    return {f"{rt} on {dev}" for rt, dev in want - have}


class Sweep:
    """One `kdsweep run` over an experiment folder: what is done there, and the tasks and rows of what is not."""

    def __init__(self, cfg: Config, exp: Path | str, plan: Plan, echo: Echo, devices: list[str] | None):
        self.cfg, self.exp, self.plan, self.echo, self.devices = cfg, exp, plan, echo, devices
        self.paths = Paths(exp)
        self.by_key = plan.by_key()
        self._verified: dict[tuple, bool] = {}
        self._left: set[str] = set()  # keys of the variants this run trains or re-times
        self.fuse_limit, self.gpus = 1, 0.0  # members per fused task (1: none) and the cluster's GPUs; set by `run`

    # -- state ------------------------------------------------------------------------------------------
    def finished(self, v: Variant, explain: bool = False) -> bool:
        """Result rows with this variant's config hash exist, are ok, and cover every configured runtime and device.

        `explain`: tell why not, when rows exist. Rows of an experiment made before runtimes became rows have no
        `runtime`: such a variant is re-timed (never retrained, its trained record still holds).
        """
        echo = self.echo if explain else (lambda _msg: None)
        path = self.paths.result(v)
        if not store.exists(path):
            return False
        try:
            found = read_rows(path)
        except ResultError as exc:
            echo(f"warning: {exc}; recomputing {v.key}")
            return False
        row = found[0]
        if row["config_hash"] != v.config_hash:
            echo(f"config changed for {v.key} (hash {row['config_hash']} -> {v.config_hash}): recomputing")
            return False
        bad = next((r for r in found if r["status"] != "ok"), None)
        if bad:
            echo(f"retrying {v.key} (last run: {bad['status']}: {bad['error']})")
            return False
        missing = missing_runtimes(self.cfg, v, found, self.devices)
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
            with contextlib.suppress(ResultError):
                why = read_row(self.paths.result(parent))["error"]
        return f"skipped: parent {parent.key} has no trained model ({why or 'not trained'})"

    # -- work -------------------------------------------------------------------------------------------
    def tasks(self) -> list[Task]:
        """The task graph of what is left: untrained variants, the teacher logits they need, one latency task."""
        left = [v for v in self.plan if not self.finished(v, explain=True)]  # each result row read once
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
        tasks = self._fuse(tasks, todo)
        if left:
            # every model of the sweep is timed again, together: latencies from separate sessions are not comparable
            for v in self.plan:  # never read a latency measured for earlier weights of a variant
                if store.exists(self.paths.latency(v)):
                    store.remove(self.paths.latency(v))
            self._left = {v.key for v in left}
            tasks.append(Task("latency", "latency", "latency", tuple(t.id for t in tasks if t.kind != "logits"),
                              {"keys": [v.key for v in self.plan], "devices": self.devices}))
        return tasks

    def _fuse(self, tasks: list[Task], todo: list[Variant]) -> list[Task]:
        """Replace the train tasks of each fused group (`fusion.fused_groups`) by one fused task.

        A fused task waits for every member's dependencies to finish, ok or not; a member whose own dependency
        failed is skipped inside it, the others train (`member_deps`)."""
        groups = fused_groups(self.cfg, todo, self.fuse_limit, self.gpus)
        if not groups:
            return tasks
        by_id = {t.id: t for t in tasks}
        fused, out = set(), []
        for members in groups:
            keys = [v.key for v in members]
            fused |= set(keys)
            member_deps = {k: list(by_id[k].deps) for k in keys}
            deps = tuple(dict.fromkeys(d for k in keys for d in by_id[k].deps if d not in keys))
            gid = group_id(members)
            out.append(Task(gid, "fused", members[0].stage, deps, {
                "variants": [v.to_dict() for v in members], "group": gid, "member_deps": member_deps}))
        return [t for t in tasks if t.id not in fused] + out

    def write_rows(self, tasks: list[Task], done: dict[str, str], crashed: dict[str, str]) -> None:
        """Rows for this run's variants, parents first, so a skipped child can quote its parent's error."""
        crashed = dict(crashed)
        for t in tasks:  # a fused trial that raised even after its retries: every member it did not finish
            if t.kind == "fused" and t.id in crashed:
                for d in t.payload["variants"]:
                    crashed.setdefault(Variant.from_dict(d).key, crashed[t.id])
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
                write_rows(rows(v, rec, "ok", None, json.loads(store.read_text(self.paths.latency(v)))), out)
            elif v.key not in self._left:
                continue  # finished before this run and not re-timed (the latency task failed): keep its rows
            elif rec:
                why = crashed.get("latency") or done.get("latency") or "the latency task did not run"
                write_rows(rows(v, rec, "failed", f"latency not measured: {why}"), out)
            elif v.key in crashed:  # the trial raised even after its retries
                write_rows(rows(v, raw or None, "failed", crashed[v.key]), out)
            elif raw.get("config_hash") == v.config_hash and raw.get("status") == "failed":  # diverged
                write_rows(rows(v, raw, "failed", raw.get("error")), out)
            else:
                problem = self.parent_problem(v) or self._logits_problem(v, done, crashed)
                write_rows(rows(v, None, "skipped", problem or f"skipped: {done.get(v.key, 'not run')}"), out)

    def _logits_problem(self, v: Variant, done: dict[str, str], crashed: dict[str, str]) -> str | None:
        if not v.alpha:
            return None
        lid = logits_key(self.cfg, v)
        if lid in done and done[lid] != "ok":
            return f"skipped: teacher logits for seed {v.seed} failed ({crashed.get(lid) or done[lid]})"
        return None
