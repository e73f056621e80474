"""Crashes, divergence, damaged files and changed configs: nothing is lost, nothing is trained twice."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kdsweep
from kdsweep.checkpoint import load_checkpoint
from kdsweep.cli import main
from kdsweep.paths import read_record
from kdsweep.results import read_results
from kdsweep.status import experiment_status, format_status

from .conftest import SMOKE

TINY = ["data.train_limit=256", "data.test_limit=64", "teacher.epochs=1", "student.epochs=2",
        "prune.recovery_epochs=1", "kd.temperature=[4]", "kd.alpha=[0.9]", "prune.amount=[0.3]",
        "measure.iters=5", "measure.warmup=1", "measure.runtimes=[torch]"]  # one row per variant, no ONNX export


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, _node_ip_address="127.0.0.2", include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


def _cli(storage: Path, *overrides: str, name: str = "rel") -> list[str]:
    args = [sys.executable, "-m", "kdsweep", "run", SMOKE, "--storage", str(storage), "--name", name]
    for o in overrides:
        args += ["--set", o]
    return args


def _descendants(pid: int) -> set[int]:
    """All live descendants of `pid`, from /proc (so the test can clean up what a killed driver left)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _kill_all(pids: set[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _wait_for(pred, timeout: float, proc: subprocess.Popen):
    """Poll `pred` until it returns a truthy value; fail if the process ends first or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        assert proc.poll() is None, f"sweep ended before the crash point:\n{proc.stdout.read() if proc.stdout else ''}"
        time.sleep(0.05)
    raise AssertionError("crash point never reached")


def _artifact(exp: Path, key: str) -> Path | None:
    found = sorted((exp / "artifacts").glob(f"{key}-*"))
    return found[0] if found else None


def _pid_mid_training(exp: Path, key: str, epochs: int) -> int | None:
    """The pid of the trial training `key` once it has saved an epoch and has epochs left (of `epochs`), else None."""
    art = _artifact(exp, key)
    if art and (art / "checkpoint.pt").is_file() and (art / "trial.json").is_file():
        try:
            epoch = load_checkpoint(art / "checkpoint.pt")["epoch"]
        except Exception:  # noqa: BLE001 - mid-rename; poll again
            return None
        if 1 <= epoch < epochs:
            return int(json.loads((art / "trial.json").read_text())["pid"])
    return None


@pytest.mark.slow
def test_killed_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    over = [*TINY, "data.train_limit=512", "student.epochs=8"]
    proc = subprocess.Popen(_cli(tmp_path, *over), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "rel"
    try:
        mid_training = lambda: _pid_mid_training(exp, "student-T4-a0.9-s0", 7)
        os.kill(_wait_for(mid_training, 240, proc), signal.SIGKILL)  # the trial's worker process dies
        out, _ = proc.communicate(timeout=300)
    finally:
        _kill_all(_descendants(proc.pid) | {proc.pid})
    assert proc.returncode == 0, out
    df = read_results(exp / "results")
    assert len(df) == 4 and df.key.is_unique and (df.status == "ok").all()
    rec = read_record(_artifact(exp, "student-T4-a0.9-s0") / "trained.json")
    epochs = [h["epoch"] for h in rec["history"]]
    runs = [h["run"] for h in rec["history"]]
    assert epochs == list(range(1, 9))  # every epoch exactly once: resumed, not restarted
    assert runs[0] == 1 and runs[-1] == 2 and runs == sorted(runs)
    assert df.set_index("key").loc["student-T4-a0.9-s0", "train_runs"] == 2


@pytest.mark.slow
def test_killed_driver_rerun_finishes_without_retraining(tmp_path):
    over = [*TINY, "prune.amount=[0.3,0.5]", "prune.recovery_epochs=3"]
    proc = subprocess.Popen(_cli(tmp_path, *over), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    exp = tmp_path / "rel"
    try:
        def student_done():
            art = _artifact(exp, "student-T4-a0.9-s0")
            return art and (art / "trained.json").is_file()

        _wait_for(student_done, 240, proc)
        live = experiment_status(exp)  # kdsweep status while the driver runs
        left = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all(_descendants(proc.pid) | left if "left" in dir() else {proc.pid})
    end = time.monotonic() + 10  # SIGKILL is asynchronous: the killed trials' processes take a moment to go
    killed = experiment_status(exp)
    while any(v.state == "running" for v in killed.variants) and time.monotonic() < end:
        time.sleep(0.2)
        killed = experiment_status(exp)
    for st in (live, killed):
        assert len(st.variants) == 5 and sum(st.counts().values()) == 5
        # trained; their result rows come after the sweep's latency timing
        assert {v.key for v in st.variants if v.state in ("ok", "trained")} >= {"teacher-s0", "baseline-s0"}
    assert not [v for v in killed.variants if v.state == "running"]  # its processes are gone, whatever the heartbeat
    assert {v.state for v in killed.variants if v.stage == "pruned"} <= {"interrupted", "pending"}
    done = {k: (_artifact(exp, k) / "trained.json").stat().st_mtime_ns
            for k in ("teacher-s0", "baseline-s0", "student-T4-a0.9-s0")}
    rerun = subprocess.run(_cli(tmp_path, *over), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    df = read_results(exp / "results")
    assert len(df) == 5 and df.key.is_unique and (df.status == "ok").all()
    finished = experiment_status(exp)
    assert finished.counts() == {"ok": 5} and "training finished" in format_status(finished)
    assert {k: (_artifact(exp, k) / "trained.json").stat().st_mtime_ns for k in done} == done
    assert (df.set_index("key").loc[list(done), "train_runs"] == 1).all()
    # only pruned variants (the one the driver was killed in, and any not started) are left to train
    assert all(re.match(r"\[sweep\] training \d variant\(s\): pruned \d;", line)
               for line in rerun.stdout.splitlines() if line.startswith("[sweep] training"))


@pytest.mark.slow
def test_diverging_student_fails_alone_and_dependents_are_skipped(ray_local, tmp_path, capsys):
    rc = main(["run", SMOKE, "--storage", str(tmp_path), "--name", "nan", *sum([["--set", o] for o in TINY], []),
               "--set", "student.lr=1e4"])
    assert rc == 1
    df = read_results(tmp_path / "nan" / "results").set_index("key")
    assert df.loc["teacher-s0", "status"] == "ok" and df.loc["teacher-s0", "test_acc"] > 0
    for k in ("baseline-s0", "student-T4-a0.9-s0"):
        assert df.loc[k, "status"] == "failed" and "diverged" in df.loc[k, "error"]
    pruned = df.loc["pruned-T4-a0.9-p0.3-s0"]
    assert pruned.status == "skipped" and "student-T4-a0.9-s0" in pruned.error and "diverged" in pruned.error
    assert "did not finish ok" in capsys.readouterr().err


@pytest.mark.slow
def test_damaged_result_and_weights_are_reported_and_recomputed(ray_local, smoke_exp, tmp_path, capsys):
    exp = tmp_path / "copy"
    shutil.copytree(smoke_exp, exp, ignore=shutil.ignore_patterns("tune", ".kdsweep.lock"))
    bad_row = exp / "results" / "pruned-T4-a0.9-p0.5-s0.parquet"
    bad_row.write_bytes(bad_row.read_bytes()[:100])
    student = _artifact(exp, "student-T4-a0.5-s0")
    (student / "model.pt").write_bytes((student / "model.pt").read_bytes()[:1000])
    (student / "checkpoint.pt").write_bytes(b"garbage")  # its training state too: it must train from scratch
    (exp / "results" / "student-T4-a0.5-s0.parquet").unlink()
    (exp / "results" / "pruned-T4-a0.5-p0.5-s0.parquet").unlink()
    from .conftest import REDUCED

    kdsweep.run(SMOKE, overrides=REDUCED, storage=tmp_path, name="copy")
    out = capsys.readouterr().out
    assert str(bad_row) in out and str(student / "model.pt") in out
    assert f"warning [student-T4-a0.5-s0]: {student / 'checkpoint.pt'}" in out and "from scratch" in out
    df = read_results(exp / "results")
    df = df[df.runtime == "torch"].set_index("key")
    assert len(df) == 6 and (df.status == "ok").all()
    assert df.loc["student-T4-a0.5-s0", "train_runs"] == 2  # retrained: its weights were damaged
    assert df.loc["teacher-s0", "train_runs"] == 1 and df.loc["pruned-T4-a0.9-p0.5-s0", "train_runs"] == 1


@pytest.mark.slow
def test_changed_config_reuses_what_it_can_and_invalidates_dependents(ray_local, tmp_path, capsys):
    def run(*extra):
        kdsweep.run(SMOKE, overrides=[*TINY, *extra], storage=tmp_path, name="grow")
        return capsys.readouterr().out, read_results(tmp_path / "grow" / "results").set_index("key")

    _, first = run()
    assert len(first) == 4
    out, grown = run("kd.alpha=[0.5,0.9]")  # a new grid value: only the new variants train
    assert len(grown) == 6 and (grown.status == "ok").all()
    for k in first.index:  # not retrained (its rows are rewritten: every model is re-timed together)
        assert grown.loc[k, "trial_end"] == first.loc[k, "trial_end"] and grown.loc[k, "train_runs"] == 1
    assert "[sweep] training 2 variant(s): student 1, pruned 1;" in out

    out, changed = run("kd.alpha=[0.5,0.9]", "teacher.epochs=2")  # upstream change: dependents recomputed
    for k in ("teacher-s0", "student-T4-a0.9-s0", "student-T4-a0.5-s0", "pruned-T4-a0.9-p0.3-s0"):
        assert f"config changed for {k}" in out
        assert changed.loc[k, "config_hash"] != grown.loc[k, "config_hash"]
    assert "config changed for baseline-s0" not in out  # the no-KD baseline does not depend on the teacher
    assert changed.loc["baseline-s0", "trial_end"] == grown.loc["baseline-s0", "trial_end"]


def test_second_driver_on_the_same_experiment_is_refused(tmp_path, capsys):
    import fcntl

    exp = tmp_path / "busy"
    exp.mkdir()
    with open(exp / ".kdsweep.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", SMOKE, "--storage", str(tmp_path), "--name", "busy"]) == 2
    assert "in use by another kdsweep run" in capsys.readouterr().err
    assert not (exp / "results").exists()


def test_cuda_latency_without_a_gpu_exits_2_and_writes_nothing(ray_local, tmp_path, capsys):
    assert main(["run", SMOKE, "--storage", str(tmp_path / "runs"), "--set", "measure.latency_device=cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "measure.latency_device" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before the experiment folder was created
