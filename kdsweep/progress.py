"""What the driver prints while a sweep runs: one status line per finished task (what finished, trained/total per
stage, failures, best accuracy, elapsed time, ETA of the training left)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from .schedule import Task
from .status import duration, eta_seconds

Echo = Callable[[str], None]


def say(msg: str) -> None:
    """Default output: a module-level function, so Tune can pickle the progress callback that holds it."""
    print(msg, flush=True)


class Progress:
    """The searcher's event callback: one line per finished task, with running counts, best accuracy and an ETA."""

    def __init__(self, echo: Echo, start: float, runtimes: list[str]):
        self.echo, self.start, self.runtimes = echo, start, runtimes
        self.best: float | None = None
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.failed = 0
        self.slots = 1
        self.pending: dict[str, tuple[str, int]] = {}  # train task id -> (stage, epochs), until it finishes
        self.finished: list[tuple[str, int, float]] = []  # (stage, epochs, seconds in the trial) of finished ones
        self.prior: dict[str, float] | None = None  # `run --estimate`'s seconds per epoch per stage, until measured
        self.after_train: Callable[[list[str]], object] | None = None  # given the keys of a finished training task

    def event(self, task: Task, status: str, result: dict) -> None:
        if status == "start":
            if task.kind == "logits":
                self.echo(f"[teacher logits] seed {task.payload['seed']}: one teacher pass over every student view")
            elif task.kind == "latency":
                self.echo(f"[latency] queued: {len(task.payload['keys'])} model(s) x {', '.join(self.runtimes)}, "
                          "interleaved on one device once all training has finished")
            return
        failed = status != "ok"
        if task.kind in ("train", "fused"):
            self.done[task.stage] = self.done.get(task.stage, 0) + len(task.members)
            if task.kind == "fused":  # count the members that did not train, not the task
                failed = sum(s != "ok" for s in json.loads(result.get("members") or "{}").values()) or failed
            if self.after_train is not None:  # e.g. the trackers log the variants whose records just landed
                self.after_train(list(task.members))
            stage, epochs = self.pending.pop(task.id, (task.stage, 0))
            start, end = result.get("trial_start"), result.get("trial_end")
            if status == "ok" and isinstance(start, float) and isinstance(end, float):
                self.finished.append((stage, epochs, end - start))
        acc = result.get("test_acc")
        if status == "ok" and isinstance(acc, float) and (self.best is None or acc > self.best):
            self.best = acc
        self.failed += failed
        el = int(time.time() - self.start)
        counts = " ".join(f"{s} {self.done.get(s, 0)}/{n}" for s, n in self.total.items())
        best = f"{self.best:.4f}" if self.best is not None else "-"
        fail = f", {self.failed} not ok" if self.failed else ""
        what = status.split(":")[0]
        trained = f" · trained {counts}" if counts else ""
        eta = eta_seconds(self.finished, list(self.pending.values()), self.slots, self.prior) if self.pending else None
        left = f" · ETA ~{duration(eta)} of training" if eta is not None else ""
        self.echo(f"[{task.id}] {what}{trained}{fail} · best acc {best} · {el // 60}m{el % 60:02d}s elapsed{left}")
