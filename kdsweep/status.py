"""`kdsweep status`: how far an experiment is, read from its files alone (no Ray, no torch): works while its driver
runs, after the driver died, and on a finished experiment, on local/NFS paths and s3:// URIs alike.

A variant is `ok`, `failed` or `skipped` once its result file exists (written after the sweep's latency timing),
`trained` (or `failed`) once its trial wrote its record. Before that, the trial training it rewrites its
`trial.json` (pid, node, epoch) every `heartbeat.HEARTBEAT_S` seconds: a fresh heartbeat means `running`, a stale
one (or, on this machine, a process that is gone) `interrupted` (its driver or node died; a rerun resumes it from its
last epoch checkpoint), none `pending`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import storage
from .analysis.load import load_experiment
from .config import load_config
from .errors import ConfigError, StatusError
from .heartbeat import is_running
from .paths import Paths, read_record
from .plan import Variant, planned_epochs

DONE = ("ok", "trained", "failed", "skipped")  # trained: its latency is timed once all training has finished
STATES = (*DONE, "running", "interrupted", "pending")


@dataclass
class VariantState:
    key: str
    label: str
    stage: str
    state: str  # one of STATES (or "unreadable" for a damaged result file)
    epochs: int  # planned training epochs
    epoch: int = 0  # epochs finished (running / interrupted)
    node: str = ""
    error: str = ""


@dataclass
class Status:
    uri: str
    variants: list[VariantState]
    best: tuple[str, float] | None  # (variant, test accuracy) of the best ok non-teacher variant
    eta_s: float | None  # training time left, from the finished trials' durations (or the run's estimate)
    at_once: int  # trials that ran at the same time, as observed
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for v in self.variants:
            out[v.state] = out.get(v.state, 0) + 1
        return {s: n for s, n in out.items() if n}


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most [start, end] intervals open at one moment (an end before a start at the same instant)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def eta_seconds(finished: list[tuple[str, int, float]], remaining: list[tuple[str, int]], at_once: int,
                prior: dict[str, float] | None = None) -> float | None:
    """Training time left: each remaining (stage, epochs left) at its stage's mean seconds per epoch over the
    finished (stage, epochs, seconds), else at `prior`'s seconds per epoch for that stage (`run --estimate`'s, kept
    in the experiment), else all stages' mean, spread over `at_once` trials. None when there is nothing to go by."""
    per_stage: dict[str, list[float]] = {}
    for stage, epochs, seconds in finished:
        if epochs > 0 and seconds > 0:
            per_stage.setdefault(stage, []).append(seconds / epochs)
    samples = [x for v in per_stage.values() for x in v] or list((prior or {}).values())
    if not samples:
        return None
    overall = sum(samples) / len(samples)
    known = {**(prior or {}), **{s: sum(v) / len(v) for s, v in per_stage.items()}}  # measured beats estimated
    work = sum(known.get(stage, overall) * left for stage, left in remaining)
    return work / max(1, at_once)


def read_estimate(experiment: str) -> dict:
    """The experiment's `run --estimate` result ({} when the run was started without it)."""
    return read_record(Paths(str(experiment)).estimate) or {}


def experiment_status(experiment: str, now: float | None = None) -> Status:
    """The state of every planned variant of `experiment` (a folder or URI), the best accuracy so far and an ETA."""
    now = time.time() if now is None else now
    try:
        if not storage.exists(storage.join(str(experiment), "plan.json")):
            raise StatusError(f"{experiment}: not a kdsweep experiment (no plan.json)")
        cfg = load_config(storage.join(str(experiment), "config.yaml"))
    except ConfigError as exc:
        raise StatusError(f"{experiment}: its config.yaml does not load ({exc})") from None
    exp = load_experiment(experiment)
    paths = Paths(str(experiment))
    rows = exp.rows
    by_key = {k: g.iloc[0].to_dict() | {"ok": bool((g["status"] == "ok").any())}
              for k, g in rows.groupby("key")} if len(rows) else {}
    states: list[VariantState] = []
    finished: list[tuple[str, int, float]] = []
    spans: list[tuple[float, float]] = []
    accs: list[tuple[float, str]] = []
    for entry in exp.planned:
        v = Variant.from_dict({k: val for k, val in entry.items() if k not in ("key", "variant")})
        st = VariantState(v.key, entry.get("variant", v.key), v.stage, "pending", planned_epochs(cfg, v))
        # result rows are written once the sweep's latency is timed; until then a trained variant has its record
        rec = by_key.get(v.key)
        if rec is not None:
            st.state = "ok" if rec["ok"] else str(rec["status"])
        elif (rec := read_record(paths.record(v))) is not None:
            st.state = "trained" if rec.get("status") == "ok" else "failed"
        elif (t := read_record(paths.trial(v))) is not None:
            st.state = "running" if is_running(t, now) else "interrupted"
            st.epoch, st.node = int(t.get("epoch", 0)), str(t.get("node", ""))
        if rec is not None:
            st.error = rec["error"] if isinstance(rec.get("error"), str) else ""
            st.epoch = st.epochs if st.state in ("ok", "trained") else 0
            start, end = rec.get("trial_start"), rec.get("trial_end")
            if st.state in ("ok", "trained", "failed") and isinstance(start, float) and isinstance(end, float) \
                    and start == start and end == end:  # not NaN
                finished.append((v.stage, int(rec.get("epochs_run") or 0), end - start))
                spans.append((start, end))
            acc = rec.get("test_acc")
            if st.state in ("ok", "trained") and v.stage != "teacher" and isinstance(acc, float) and acc == acc:
                accs.append((acc, st.label))
        states.append(st)
    best = max(accs) if accs else None
    running = sum(s.state == "running" for s in states)
    guess = read_estimate(experiment)
    at_once = max(most_at_once(spans), running, 1 if spans else int(guess.get("slots", 1)))
    remaining = [(s.stage, max(0, s.epochs - s.epoch)) for s in states if s.state not in DONE]
    eta = eta_seconds(finished, remaining, at_once, guess.get("epoch_s")) if remaining else 0.0
    notes = [f"unreadable: {u}" for u in exp.unreadable]
    return Status(exp.uri, states, (best[1], best[0]) if best else None, eta, at_once, notes)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_status(st: Status, width: int = 12) -> str:
    """What `kdsweep status` prints: counts, per-stage progress, what is running or interrupted, best, ETA."""
    counts = st.counts()
    lines = [f"{st.uri}: {len(st.variants)} planned · " + ", ".join(f"{n} {s}" for s, n in counts.items())]
    for stage in dict.fromkeys(v.stage for v in st.variants):
        vs = [v for v in st.variants if v.stage == stage]
        done = sum(v.state in DONE for v in vs)
        lines.append(f"  {stage:<{width}}{done:>4}/{len(vs):<4} done"
                     + "".join(f" · {n} {s}" for s in STATES[1:] if (n := sum(v.state == s for v in vs))))
    for v in st.variants:
        if v.state in ("running", "interrupted"):
            where = f" on {v.node}" if v.node else ""
            lines.append(f"  {v.state}: {v.label} (epoch {v.epoch}/{v.epochs}{where})")
    for v in st.variants:
        if v.state == "failed":
            lines.append(f"  failed: {v.label}: {v.error.splitlines()[0][:160] if v.error else '?'}")
    lines.append(f"  best so far: {st.best[0]} {st.best[1]:.4f}" if st.best else "  best so far: -")
    if st.eta_s is None:
        lines.append("  ETA: after the first trial finishes (or start the run with --estimate)")
    elif st.eta_s == 0 and not any(v.state not in DONE for v in st.variants):
        timing = " (latency timing not finished)" if counts.get("trained") else ""
        lines.append("  training finished" + timing + ("" if counts.get("ok") or counts.get("trained") else
                                                       " (nothing ok)"))
    else:
        lines.append(f"  ETA: ~{duration(st.eta_s)} of training left ({st.at_once} trial(s) at once; latency "
                     "timing comes after)")
    if any(v.state == "interrupted" for v in st.variants):
        lines.append("  interrupted variants resume from their last epoch when the same `kdsweep run` is started again")
    return "\n".join(lines + [f"  warning: {n}" for n in st.notes])
