"""The sweep as one task graph, fed to a single Ray Tune run by a dependency-aware searcher.

One Tuner for the whole sweep (instead of one per stage) keeps trial processes warm from the first trial to the
last (`reuse_actors`), and lets a pruned variant start as soon as its own student is trained instead of after
all students. A task may be handed out a little before its dependencies finish ("waiter": it then blocks on the
driver's signal file), so that a finishing trial always finds a queued successor and Tune keeps its process
instead of starting a new one. At most `slots - 1` waiters exist at once, so one slot always does real work and a
dependency that Tune retries after a crash always gets a slot: waiting can never deadlock.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ray.tune.search import Searcher

from . import storage
from .errors import last_line
from .names import TASK_PRIORITY

RANK = {kind: i for i, kind in enumerate(TASK_PRIORITY)}  # names.py says why this order


@dataclass(frozen=True)
class Task:
    """One unit of work: train a variant (or a fused group of them), compute teacher logits, or time every model."""

    @property
    def members(self) -> list[str]:
        """The variant keys this task trains: a fused task's members, a train task's own key, else none."""
        if self.kind == "fused":
            return list(self.payload["member_deps"])
        return [self.id] if self.kind == "train" else []

    id: str
    kind: str  # train | fused | logits | latency
    stage: str  # teacher | baseline | student | pruned | quantized | logits | latency
    deps: tuple[str, ...] = ()
    payload: dict = field(default_factory=dict, hash=False, compare=False)


class DagSearcher(Searcher):
    """Hands out ready tasks in priority order (teacher, logits, students, baseline, pruned, latency).

    `done` maps a task id to "ok" or "failed: why" / "skipped: why"; tasks already done before this run are "ok"
    and never appear as tasks. Completions are written to `signals` (one small JSON file) for waiting trials.
    """

    def __init__(self, tasks: list[Task], slots: int, signals: str, on_event: Callable[[Task, str, dict], None]):
        super().__init__()
        self.pending = sorted(tasks, key=lambda t: RANK[t.stage])  # stable: plan order within a stage
        self.by_id = {t.id: t for t in tasks}
        self.max_waiters = max(0, slots - 1)
        self.signals, self.on_event = signals, on_event
        self.outstanding: dict[str, str] = {}  # Tune trial id -> task id
        self.done: dict[str, str] = {}  # task ids and (for fused tasks) their members' keys -> status
        storage.write_bytes(signals, b"{}")

    # Tune's Searcher interface ---------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: object) -> bool:
        return True

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to save: a rerun rebuilds the graph from what the experiment folder holds."""

    def suggest(self, trial_id: str) -> dict | str | None:
        self._drop_blocked()
        running = {m for t in self.outstanding.values() for m in [t, *self.by_id[t].members]}
        pick = next((t for t in self.pending if self._ready(t)), None)
        if pick is None and self._waiters() < self.max_waiters:
            pick = next((t for t in self.pending if all(self._met(t, d) or d in running for d in t.deps)), None)
        if pick is None:
            return Searcher.FINISHED if not self.pending and not self.outstanding else None
        self.pending.remove(pick)
        self.outstanding[trial_id] = pick.id
        self.on_event(pick, "start", {})
        # a fused task hears every dependency's status (it skips the members behind a failed one)
        wait = [d for d in pick.deps if pick.kind == "fused" or not self._met(pick, d)]
        return {"task": pick.kind, "id": pick.id, "wait_for": wait,
                "signals": self.signals, **pick.payload}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        task_id = self.outstanding.pop(trial_id, None)
        if task_id is None:
            return
        result = result or {}
        if error:
            status = "failed: the trial raised an error (its row has the message)"
        elif result.get("status") == "ok":
            status = "ok"
        else:
            status = f"{result.get('status', 'failed')}: {last_line(str(result.get('error') or 'no reason given'))}"
        self._finish(self.by_id[task_id], status, result)

    # internals ------------------------------------------------------------------------------------------------
    def _finish(self, task: Task, status: str, result: dict) -> None:
        self.done[task.id] = status
        if task.kind == "fused":  # each member has its own outcome; without one (skipped, crashed) the task's
            members = json.loads(result.get("members") or "{}")
            for key in task.members:
                self.done[key] = members.get(key, status)
        storage.write_bytes(self.signals, json.dumps(self.done).encode())
        self.on_event(task, status, result)

    def _met(self, task: Task, dep: str) -> bool:
        # latency times whatever did train, and a fused task skips only the members behind a failed dependency,
        # so for them a failed dependency is a finished one
        return self.done.get(dep) == "ok" or (task.kind in ("latency", "fused") and dep in self.done)

    def _ready(self, task: Task) -> bool:
        return all(self._met(task, d) for d in task.deps)

    def _waiters(self) -> int:
        return sum(1 for t in self.outstanding.values() if not self._ready(self.by_id[t]))

    def _drop_blocked(self) -> None:
        """Tasks behind a failed dependency will never run: mark them skipped (transitively)."""
        changed = True
        while changed:
            changed = False
            for t in list(self.pending):
                bad = next((d for d in t.deps if d in self.done and self.done[d] != "ok"), None)
                if t.kind == "fused":  # skipped only when every member is
                    bad = bad if all(any(d in self.done and self.done[d] != "ok" for d in deps)
                                     for deps in t.payload["member_deps"].values()) else None
                if bad and t.kind != "latency":
                    self.pending.remove(t)
                    self._finish(t, f"skipped: {bad} {self.done[bad].split(':')[0]}", {})
                    changed = True


def wait_for(deps: list[str], signals: str, poll: float = 0.2) -> dict[str, str]:
    """Block until the driver has signalled every task in `deps` done; return their statuses."""
    while True:
        done = json.loads(storage.read_text(signals)) if deps else {}
        if all(d in done for d in deps):
            return {d: done[d] for d in deps}
        time.sleep(poll)
