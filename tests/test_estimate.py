"""`kdsweep plan --estimate`: real training steps timed here, a simulation of the task graph on the trial slots, and
the same per-stage seconds per epoch feeding `kdsweep status` and the progress lines before any trial has finished.
How close the estimate comes to a measured sweep is recorded in benchmarks/RESULTS.md (no timing asserts here)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kdsweep.cli import main
from kdsweep.config import load_config
from kdsweep.estimate import BAND, _simulate
from kdsweep.paths import Paths
from kdsweep.plan import make_plan, planned_epochs, trial_slots
from kdsweep.status import eta_seconds, experiment_status, format_status
from kdsweep.sweeper import save_experiment

from .conftest import SMOKE

TINY = ["kd.temperature=[4]", "kd.alpha=[0.9]", "prune.amount=[0.5]"]  # teacher, baseline, 1 student, 1 pruned


def test_simulation_follows_dependencies_priority_and_slots():
    # (priority, seconds, dependencies): b and d wait for a; c is free but of lowest priority
    tasks = {"a": (0, 10.0, set()), "b": (1, 5.0, {"a"}), "c": (2, 5.0, set()), "d": (1, 10.0, {"a"})}
    assert _simulate(tasks, 1) == 30.0  # everything in turn
    assert _simulate(tasks, 2) == 20.0  # a with c, then b with d
    assert _simulate(tasks, 4) == 20.0  # the chain a -> d bounds it
    assert _simulate({"x": (0, 3.0, {"gone"})}, 1) == 3.0  # a dependency outside the graph is already done


def test_a_measured_stage_replaces_the_estimate_and_the_rest_keeps_it():
    prior = {"student": 10.0, "pruned": 4.0}
    assert eta_seconds([], [("student", 4), ("pruned", 2)], 2, prior) == pytest.approx((40 + 8) / 2)
    # a student finished at 5 s/epoch: students now go by it, pruned variants still by the estimate
    assert eta_seconds([("student", 4, 20.0)], [("student", 4), ("pruned", 2)], 2, prior) == pytest.approx(
        (20 + 8) / 2)
    assert eta_seconds([], [("student", 4)], 1) is None  # nothing to go by


def test_plan_estimate_and_list_print_and_write_nothing_and_status_starts_from_a_runs_estimate(
        tmp_path: Path, capsys):
    args = ["plan", SMOKE, "--storage", str(tmp_path)] + [a for s in TINY for a in ("--set", s)]
    assert main(args + ["--list", "--estimate"]) == 0
    out = capsys.readouterr().out
    plan = make_plan(load_config(SMOKE, TINY))
    assert all(f"  {v.key} " in out for v in plan) and "pruned-T4-a0.9-p0.5-s0  pruned        2  student-T4-a0.9-s0" \
        in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  estimate: ~"))
    assert "trial(s) at once on CPU" in line and "timed here" in line
    assert not list(tmp_path.iterdir())  # planning writes nothing, with or without an estimate
    # what `run --estimate` keeps: kdsweep status gives an ETA before any trial has finished
    exp = tmp_path / "exp"
    cfg = load_config(SMOKE, TINY)
    save_experiment(exp, cfg, plan)
    assert "ETA: after the first trial finishes" in format_status(experiment_status(exp))
    epoch_s = {"teacher": 30.0, "baseline": 2.0, "student": 2.0, "pruned": 3.0}
    Path(Paths(exp).estimate).write_text(json.dumps({"seconds": 1.0, "epoch_s": epoch_s, "slots": 2}))
    st = experiment_status(exp)
    left = sum(planned_epochs(cfg, v) * epoch_s[v.stage] for v in plan)
    assert st.at_once == 2 and st.eta_s == pytest.approx(left / 2)
    assert "ETA: ~" in format_status(st)


def test_progress_lines_use_the_estimate_until_trials_finish():
    from kdsweep.progress import Progress
    from kdsweep.schedule import Task

    lines: list[str] = []
    prog = Progress(lines.append, time.time(), ["torch"])
    prog.total, prog.slots, prog.prior = {"student": 2, "pruned": 1}, 1, {"student": 10.0, "pruned": 3.0}
    prog.pending = {"a": ("student", 4), "b": ("student", 4), "p": ("pruned", 2)}
    prog.event(Task("a", "train", "student"), "ok", {"test_acc": 0.5, "trial_start": 0.0, "trial_end": 20.0})
    assert lines[-1].endswith("ETA ~0m26s of training")  # b at the measured 5 s/epoch, p at the estimated 3 s


def test_a_run_started_with_estimate_keeps_it_and_it_times_every_kind_of_task(smoke_exp: Path):
    cfg = load_config(smoke_exp / "config.yaml")
    plan = make_plan(cfg)
    est = json.loads(Path(Paths(smoke_exp).estimate).read_text())  # what `run --estimate` measured and kept
    assert set(est["epoch_s"]) == {"teacher", "baseline", "student", "pruned"} and min(est["epoch_s"].values()) > 0
    # ResNet-18 does ~30x the work of MobileNetV3-Small per image: its epochs cost more on any CPU
    assert est["epoch_s"]["teacher"] > est["epoch_s"]["student"]
    assert est["low"] == pytest.approx(est["seconds"] * BAND[0]) and est["high"] == pytest.approx(
        est["seconds"] * BAND[1])
    # not a timing bound: the simulation's own arithmetic on its own numbers. A makespan is at least its longest
    # chain (teacher -> logits -> student -> pruned), and latency and the allowances come on top
    chain = sum(planned_epochs(cfg, plan.stage(s)[0]) * est["epoch_s"][s] for s in ("teacher", "student", "pruned"))
    assert est["seconds"] > chain + est["parts"]["latency"]
    import torch

    if not torch.cuda.is_available():  # on a CPU machine: one trial per CPU, as the sweep ran them
        assert est["slots"] == trial_slots(cfg, os.cpu_count() or 1, 0) and est["device"] == "CPU"
    assert "training finished" in format_status(experiment_status(smoke_exp))  # measured rows take over
