"""`kdsweep status`: states read from an experiment's files (results, heartbeats), best so far, ETA; bad paths exit 2.
The live case (a running sweep, its driver killed, then finished) is in tests/test_reliability.py."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kdsweep.cli import main
from kdsweep.config import load_config
from kdsweep.heartbeat import Heartbeat, hostname
from kdsweep.paths import Paths
from kdsweep.plan import make_plan, planned_epochs
from kdsweep.results import write_rows
from kdsweep.status import eta_seconds, experiment_status, format_status, most_at_once
from kdsweep.sweeper import save_experiment

from .conftest import SMOKE


def test_eta_is_each_stages_seconds_per_epoch_times_epochs_left_over_the_trials_at_once():
    finished = [("student", 4, 40.0), ("student", 2, 30.0), ("teacher", 2, 100.0), ("pruned", 0, 5.0)]
    # student 12.5 s/epoch (mean of 10 and 15); pruned has none finished with epochs: all stages' mean, 25 s/epoch
    assert eta_seconds(finished, [("student", 4), ("pruned", 2)], 2) == pytest.approx((12.5 * 4 + 25 * 2) / 2)
    assert eta_seconds([], [("student", 4)], 1) is None
    assert most_at_once([(0, 10), (5, 15), (10, 20), (12, 13)]) == 3  # an end and a start at 10 do not overlap


def _row(v, label: str, status: str = "ok", acc: float | None = None, span: tuple[float, float] = (0.0, 10.0),
         epochs: int = 1, error: str | None = None) -> dict:
    return {"key": v.key, "variant": label, "stage": v.stage, "seed": v.seed, "status": status, "test_acc": acc,
            "error": error, "epochs_run": epochs, "trial_start": span[0], "trial_end": span[1]}


def test_status_of_every_state_and_the_command(tmp_path: Path, capsys):
    cfg = load_config(SMOKE, ["kd.alpha=[0.9]"])
    plan = make_plan(cfg)
    exp = tmp_path / "exp"
    save_experiment(exp, cfg, plan)
    paths = Paths(str(exp))
    students = [x for x in plan if x.stage == "student"]
    pruned = [x for x in plan if x.stage == "pruned"]
    teacher = next(x for x in plan if x.stage == "teacher")
    baseline = next(x for x in plan if x.stage == "baseline")
    te, se = planned_epochs(cfg, teacher), planned_epochs(cfg, students[0])
    put = lambda x, **kw: write_rows([_row(x, x.label, **kw)], paths.result(x))
    put(teacher, acc=0.95, span=(0, 100), epochs=te)  # the teacher is never "best so far"
    put(baseline, acc=0.5, span=(100, 150), epochs=se)
    put(students[0], acc=0.8, span=(100, 160), epochs=se)
    put(students[1], status="failed", span=(100, 130), epochs=1, error="diverged: non-finite loss\nmore")
    kids = [p for p in pruned if p.parent == students[1].key]
    put(kids[0], status="skipped", error="student failed")
    now = time.time()
    beat = lambda x, **t: Path(paths.trial(x)).parent.mkdir(parents=True, exist_ok=True) or \
        Path(paths.trial(x)).write_text(json.dumps(t))
    beat(students[2], pid=os.getpid(), node=hostname(), epoch=1, beat=now - 5)  # this process: alive
    stale = next(p for p in pruned if p.parent == students[0].key)
    beat(stale, pid=os.getpid(), node=hostname(), epoch=1, beat=now - 1000)  # heartbeat stopped long ago
    gone = next(p for p in pruned if p.parent == students[0].key and p is not stale)
    beat(gone, pid=2**22 + 12345, node=hostname(), epoch=0, beat=now - 1)  # fresh, but its process is gone
    # trained, but its result row waits for the sweep's latency timing: its record is what says so
    done = next(p for p in pruned if p.parent == students[0].key and p not in (stale, gone))
    Path(paths.record(done)).parent.mkdir(parents=True)
    Path(paths.record(done)).write_text(json.dumps({"status": "ok", "test_acc": 0.85, "epochs_run": 1,
                                                    "trial_start": 160.0, "trial_end": 170.0}))
    st = experiment_status(exp, now=now)
    states = {s.key: s.state for s in st.variants}
    assert len(states) == len(plan) and sum(st.counts().values()) == len(plan)
    assert states[teacher.key] == states[baseline.key] == states[students[0].key] == "ok"
    assert states[students[1].key] == "failed" and states[kids[0].key] == "skipped"
    assert states[students[2].key] == "running" and states[stale.key] == states[gone.key] == "interrupted"
    assert states[done.key] == "trained" and st.counts()["pending"] == len(plan) - 9
    assert st.best == (done.label, 0.85)
    assert st.at_once == 3 and st.eta_s is not None and st.eta_s > 0
    text = format_status(st)
    assert text.splitlines()[0].endswith(f"{len(plan)} planned · 3 ok, 1 trained, 1 failed, 1 skipped, 1 running, "
                                         f"2 interrupted, {len(plan) - 9} pending")
    assert f"running: {students[2].label} (epoch 1/{se} on {hostname()})" in text
    assert f"failed: {students[1].label}: diverged: non-finite loss" in text and "more" not in text
    assert "ETA: ~" in text and "resume from their last epoch" in text
    assert main(["status", str(exp)]) == 0
    assert capsys.readouterr().out.strip() == format_status(experiment_status(exp)).strip()


def test_status_of_no_experiment_exits_2_with_one_line(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    for where in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["status", str(where)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a kdsweep experiment (no plan.json)" in err


def test_heartbeat_writes_on_entry_each_epoch_and_periodically_then_stops(tmp_path: Path):
    path = str(tmp_path / "a" / "trial.json")
    read = lambda: json.loads(Path(path).read_text())
    with Heartbeat(path, {"pid": 1, "epochs": 3}, every=0.05) as hb:
        first = read()
        assert first["epoch"] == 0 and first["epochs"] == 3
        time.sleep(0.3)
        assert read()["beat"] > first["beat"]
        hb.epoch(2)
        assert read()["epoch"] == 2
    last = read()["beat"]
    time.sleep(0.2)
    assert read()["beat"] == last


def test_driver_progress_lines_carry_the_same_eta():
    from kdsweep.progress import Progress
    from kdsweep.schedule import Task

    lines: list[str] = []
    prog = Progress(lines.append, time.time(), ["torch"])
    prog.total, prog.slots = {"student": 3}, 2
    prog.pending = {"a": ("student", 4), "b": ("student", 4), "c": ("student", 4)}
    prog.event(Task("a", "train", "student"), "ok", {"test_acc": 0.5, "trial_start": 0.0, "trial_end": 40.0})
    assert prog.pending == {"b": ("student", 4), "c": ("student", 4)}
    assert lines[-1].endswith("ETA ~0m40s of training")  # 2 x 4 epochs x 10 s/epoch over 2 slots
    prog.event(Task("b", "train", "student"), "failed: boom", {})
    prog.event(Task("c", "train", "student"), "ok", {"test_acc": 0.6, "trial_start": 0.0, "trial_end": 20.0})
    assert "ETA" not in lines[-1] and "student 3/3" in lines[-1]
