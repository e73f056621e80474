"""The dependency-aware searcher that feeds the single Tune run: order, waiting, failures, termination."""
from __future__ import annotations

import json
import threading
import time

from ray.tune.search import Searcher

from kdsweep.schedule import DagSearcher, Task, wait_for


def graph() -> list[Task]:
    return [
        Task("teacher-s0", "train", "teacher"),
        Task("baseline-s0", "train", "baseline"),
        Task("logits-s0", "logits", "logits", ("teacher-s0",), {"seed": 0}),
        Task("student-a", "train", "student", ("logits-s0",)),
        Task("student-b", "train", "student", ("logits-s0",)),
        Task("pruned-a1", "train", "pruned", ("student-a", "logits-s0")),
        Task("pruned-b1", "train", "pruned", ("student-b", "logits-s0")),
        Task("latency", "latency", "latency",
             ("teacher-s0", "baseline-s0", "student-a", "student-b", "pruned-a1", "pruned-b1"), {"keys": []}),
    ]


def make(tmp_path, slots: int, tasks=None):
    events = []
    s = DagSearcher(tasks or graph(), slots, str(tmp_path / "signals.json"), lambda t, st, r: events.append((t.id, st)))
    return s, events


def test_ready_tasks_first_in_priority_order_and_finished_at_the_end(tmp_path):
    s, _ = make(tmp_path, slots=1)  # one slot: no waiting, strictly one ready task at a time
    order, n = [], 0
    while (cfg := s.suggest(f"t{n}")) != Searcher.FINISHED:
        assert cfg is not None, "with nothing running, something must be ready"
        assert cfg["wait_for"] == []
        order.append(cfg["id"])
        s.on_trial_complete(f"t{n}", {"status": "ok"})
        n += 1
    assert order == ["teacher-s0", "logits-s0", "student-a", "student-b", "baseline-s0", "pruned-a1", "pruned-b1",
                     "latency"]
    assert json.loads((tmp_path / "signals.json").read_text()) == {k: "ok" for k in order}


def test_at_most_slots_minus_one_waiters(tmp_path):
    s, _ = make(tmp_path, slots=2)
    assert s.suggest("1")["id"] == "teacher-s0"
    assert s.suggest("2")["id"] == "baseline-s0"  # ready beats waiting
    third = s.suggest("3")
    assert third["id"] == "logits-s0" and third["wait_for"] == ["teacher-s0"]  # the one waiter allowed
    assert s.suggest("4") is None  # student-a would be a second waiter: one slot must stay free for real work
    s.on_trial_complete("1", {"status": "ok", "test_acc": 0.9})  # teacher done: logits no longer waits
    fourth = s.suggest("4")
    assert fourth["id"] == "student-a" and fourth["wait_for"] == ["logits-s0"]


def test_failure_skips_dependants_transitively_but_latency_still_runs(tmp_path):
    s, events = make(tmp_path, slots=1)
    assert s.suggest("1")["id"] == "teacher-s0"
    s.on_trial_complete("1", {"status": "failed", "error": "diverged: loss is nan"})
    assert s.suggest("2")["id"] == "baseline-s0"
    s.on_trial_complete("2", {"status": "ok"})
    last = s.suggest("3")
    assert last["id"] == "latency" and last["wait_for"] == []
    s.on_trial_complete("3", {"status": "ok"})
    assert s.suggest("4") == Searcher.FINISHED
    assert s.done["teacher-s0"] == "failed: diverged: loss is nan"
    assert s.done["logits-s0"] == "skipped: teacher-s0 failed"
    assert s.done["pruned-a1"].startswith("skipped: ")  # behind student-a, behind logits-s0
    assert {t for t, st in events if st.startswith("skipped")} == {"logits-s0", "student-a", "student-b",
                                                                  "pruned-a1", "pruned-b1"}


def test_crashed_trial_counts_as_failed(tmp_path):
    s, _ = make(tmp_path, slots=1, tasks=graph()[:3])
    s.suggest("1")
    s.on_trial_complete("1", error=True)
    assert s.done["teacher-s0"].startswith("failed")
    assert s.suggest("2")["id"] == "baseline-s0"


def test_wait_for_blocks_until_the_driver_signals(tmp_path):
    sig = tmp_path / "signals.json"
    sig.write_text("{}")
    got = {}
    th = threading.Thread(target=lambda: got.update(wait_for(["a", "b"], str(sig), poll=0.02)))
    th.start()
    time.sleep(0.2)
    sig.write_text(json.dumps({"a": "ok"}))
    time.sleep(0.2)
    assert th.is_alive() and not got
    sig.write_text(json.dumps({"a": "ok", "b": "failed: x", "c": "ok"}))
    th.join(5)
    assert got == {"a": "ok", "b": "failed: x"}



def test_every_stage_has_a_place_in_the_priority():
    from kdsweep.names import STAGES, TASK_PRIORITY

    assert sorted(TASK_PRIORITY) == sorted({*STAGES, "logits", "latency"})  # a new stage needs a slot in the schedule
