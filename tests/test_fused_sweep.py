"""Fused tasks in a real sweep (real local Ray, digits on CPU): the same variants and rows as unfused training,
per-member faults, a killed fused trial that resumes every member, and an unfused experiment that is not retrained."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from kdsweep import sweeper
from kdsweep.cli import main
from kdsweep.paths import read_record
from kdsweep.results import read_results

from .conftest import REDUCED, SMOKE
from .test_reliability import TINY, _artifact, _descendants, _kill_all, _pid_mid_training, _wait_for, ray_local  # noqa: F401 - fixture

STUDENTS = ["student-T4-a0.5-s0", "student-T4-a0.9-s0"]


@pytest.mark.slow
def test_fused_smoke_sweep_matches_unfused_and_a_killed_fused_task_resumes(smoke_exp, tmp_path):
    # the unfused experiment with its students and pruned variants taken out: the fused run trains those four (its
    # teacher, baseline and teacher logits are the same work, kept: 2-core CI time)
    exp = tmp_path / "smoke"
    shutil.copytree(smoke_exp, exp, ignore=shutil.ignore_patterns("tune", "analysis"))
    for d in (exp / "artifacts").glob("*"):
        if d.name.startswith(("student-", "pruned-")):
            shutil.rmtree(d)
    for f in (exp / "results").glob("*"):
        if f.name.startswith(("student-", "pruned-")):
            f.unlink()
    args = [sys.executable, "-m", "kdsweep", "run", SMOKE, "--storage", str(tmp_path)]
    for o in [*REDUCED, "resources.fuse=9"]:
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        mid_training = lambda: _pid_mid_training(exp, STUDENTS[1], 5)
        os.kill(_wait_for(mid_training, 300, proc), signal.SIGKILL)  # the fused trial's worker process dies
        out, _ = proc.communicate(timeout=400)
    finally:
        _kill_all(_descendants(proc.pid) | {proc.pid})
    assert proc.returncode == 0, out
    assert "[sweep] fused training: 2 task(s)" in out and "[sweep] training 4 variant(s)" in out
    fused = read_results(exp / "results")
    plain = read_results(smoke_exp / "results")
    # the same variants and rows (one per runtime), and the same science: accuracy within 1 point for what trained
    # fused from the same start; a pruned child also starts from a fused parent that differs by float noise, and
    # 50 % pruning + one recovery epoch amplify that: the unfused sweep itself moves by up to 1.1 points there with
    # 2 threads per trial instead of 1 (benchmarks/RESULTS.md, "Fused students"), so 2 points
    assert sorted(zip(fused.key, fused.runtime)) == sorted(zip(plain.key, plain.runtime))
    assert (fused.status == "ok").all()
    diff = (fused.groupby("key").test_acc.first() - plain.groupby("key").test_acc.first()).abs()
    pruned = diff.index.str.startswith("pruned")
    assert (diff[~pruned] <= 0.01).all() and (diff[pruned] <= 0.02).all(), diff
    by_key = fused.groupby("key").first()
    groups = by_key.fused_group
    assert groups[["teacher-s0", "baseline-s0"]].isna().all() and plain.fused_group.isna().all()
    assert groups[STUDENTS].nunique() == 1 and groups[STUDENTS].iloc[0].startswith("fused-student-x2-")
    assert groups.filter(like="pruned").nunique() == 1
    # the kill: every member resumed from its own last epoch, each epoch trained exactly once
    for k in STUDENTS:
        history = read_record(_artifact(exp, k) / "trained.json")["history"]
        assert [h["epoch"] for h in history] == list(range(1, 7))
        runs = [h["run"] for h in history]
        assert runs[0] == 1 and runs[-1] == 2 and runs == sorted(runs)
        assert by_key.loc[k, "train_runs"] == 2
    assert (by_key.loc[["teacher-s0", "baseline-s0"], "train_runs"] == 1).all()


@pytest.mark.slow
def test_a_diverging_member_fails_alone_and_its_group_finishes(ray_local, tmp_path, capsys):  # noqa: F811 - fixture
    over = [*TINY, "resources.fuse=9", "kd.temperature=[4, 1.0e-39]"]  # T underflows: that student's loss is NaN
    rc = main(["run", SMOKE, "--storage", str(tmp_path), "--name", "nan", *sum([["--set", o] for o in over], [])])
    assert rc == 1
    df = read_results(tmp_path / "nan" / "results").set_index("key")
    bad, good = "student-T1e-39-a0.9-s0", "student-T4-a0.9-s0"
    assert df.loc[bad, "status"] == "failed" and "diverged" in df.loc[bad, "error"]
    assert df.loc[good, "status"] == "ok" and df.loc[good, "fused_group"] == df.loc[bad, "fused_group"]
    child = df.loc["pruned-T1e-39-a0.9-p0.3-s0"]
    assert child.status == "skipped" and bad in child.error
    assert df.loc["pruned-T4-a0.9-p0.3-s0", "status"] == "ok"  # its fused task trained the member it could
    assert "did not finish ok" in capsys.readouterr().err


@pytest.mark.slow
def test_an_unfused_experiment_is_not_retrained_by_a_fused_run(smoke_exp, tmp_path):
    shutil.copytree(smoke_exp, tmp_path / "smoke")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "smoke" / "artifacts").glob("*/trained.json")}
    lines: list[str] = []
    sweeper.run(SMOKE, overrides=[*REDUCED, "resources.fuse=9"], storage=tmp_path, echo=lines.append)
    assert not [ln for ln in lines if ln.startswith("[sweep] training")]
    assert f"  output: {tmp_path / 'smoke'} (6 of 6 variants already trained there)" in lines
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    df = read_results(tmp_path / "smoke" / "results")
    assert (df.status == "ok").all() and (df.train_runs == 1).all() and df.fused_group.isna().all()
