"""End-to-end sweeps on a real local Ray (logical GPUs, CPU training) on offline digits."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import kdsweep
from kdsweep.cli import main
from kdsweep.results import read_results
from kdsweep.status import most_at_once

from .conftest import REDUCED, ROOT, SMOKE, free_port


@pytest.fixture(scope="module")
def ray_2gpu():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, num_gpus=2, _node_ip_address="127.0.0.2", include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_reduced_smoke_sweep_end_to_end_and_rerun_trains_nothing(smoke_exp, capsys):
    exp = smoke_exp
    rows = read_results(exp / "results")
    assert (rows.status == "ok").all(), rows[["key", "runtime", "status", "error"]]
    # one row per variant and runtime: eager PyTorch and ONNX Runtime on the CPU, timed interleaved
    assert len(rows) == 12 and rows.groupby("key").runtime.apply(set).eq({"torch", "onnxruntime-cpu"}).all()
    df = rows[rows.runtime == "torch"]
    assert len(df) == 6
    assert df.stage.value_counts().to_dict() == {"teacher": 1, "baseline": 1, "student": 2, "pruned": 2}
    by = df.set_index("key")
    assert set(by.index) == {"teacher-s0", "baseline-s0", "student-T4-a0.5-s0", "student-T4-a0.9-s0",
                             "pruned-T4-a0.5-p0.5-s0", "pruned-T4-a0.9-p0.5-s0"}
    # coordinates
    assert by.loc["pruned-T4-a0.9-p0.5-s0", ["temperature", "alpha", "prune_amount"]].tolist() == [4.0, 0.9, 0.5]
    assert pd.isna(by.loc["teacher-s0", "temperature"]) and by.loc["baseline-s0", "alpha"] == 0.0
    assert by.loc["pruned-T4-a0.9-p0.5-s0", "parent"] == "student-T4-a0.9-s0"
    # accuracy bounds on real data
    assert by.loc["teacher-s0", "test_acc"] >= 0.95
    assert df[df.stage == "student"].test_acc.max() >= 0.90
    assert df[df.stage == "pruned"].test_acc.min() >= 0.80
    # sizes three ways; unstructured pruning keeps dense size, halves conv weights
    assert by.loc["teacher-s0", "size_mb"] == pytest.approx(44.73, abs=0.01)
    assert by.loc["student-T4-a0.9-s0", "size_mb"] == pytest.approx(6.11, abs=0.01)
    p = by.loc["pruned-T4-a0.9-p0.5-s0"]
    assert p.conv_sparsity == pytest.approx(0.5, abs=0.01) and p.size_nonzero_mb < 0.8 * p.size_mb
    assert p.size_compressed_mb < by.loc["student-T4-a0.9-s0", "size_compressed_mb"]
    # sharing: one teacher training, cached logits (no teacher forward in KD trials), each variant trained once
    assert (df.train_runs == 1).all()
    assert (df[df.stage.isin(["student", "pruned"])].teacher_forward_images == 0).all()
    assert (df[df.stage == "student"].teacher_logits.str.startswith("teacher_logits-s0")).all()
    assert (df.latency_ms > 0).all() and (df.latency_p90_ms >= df.latency_ms).all()
    assert (df.latency_device == "cpu").all()
    assert df.node_ip.str.startswith("127.").all()  # Ray stayed on loopback
    # one Tune run keeps a warm pool: every task ran in one of the 2 trial processes (2 CPUs, 1 CPU per trial)
    pids = {json.loads(f.read_text())["pid"] for f in (exp / "artifacts").glob("*/trial.json")}
    assert len(pids) <= 2, pids
    # Ray Tune's standard loggers got the per-epoch metrics
    trial_dir = next((exp / "tune").glob("sweep-*/student-T4-a0.9-s0"))
    assert len((trial_dir / "progress.csv").read_text().strip().splitlines()) >= 1 + 6  # header + one row per epoch
    assert list(trial_dir.glob("events.out.tfevents.*")) and (trial_dir / "result.json").is_file()

    mtimes = {f.name: f.stat().st_mtime_ns for f in (exp / "results").glob("*.parquet")}
    capsys.readouterr()
    kdsweep.run(SMOKE, overrides=REDUCED, storage=exp.parent)
    out = capsys.readouterr().out
    assert "] training" not in out and "[latency]" not in out and "[teacher logits]" not in out
    assert {f.name: f.stat().st_mtime_ns for f in (exp / "results").glob("*.parquet")} == mtimes
    assert (read_results(exp / "results").train_runs == 1).all()


@pytest.mark.slow
def test_fractional_gpus_pack_trials_on_logical_gpus(ray_2gpu, tmp_path):
    # 6 KD students + 6 pruned over 8 slots on 2 logical GPUs (kept small: 2-core CI)
    over = ["teacher.epochs=1", "student.epochs=2", "prune.recovery_epochs=1", "prune.amount=[0.3]",
            "kd.temperature=[2,4]", "measure.runtimes=[torch]",
            "data.train_limit=256", "data.test_limit=64", "resources.cpus_per_trial=0.25",
            "resources.gpus_per_trial=0.25", "measure.iters=5", "measure.warmup=1",
            "resources.fuse=off"]  # packing of fractional trials; fused tasks ask for whole GPUs
    exp = kdsweep.run(SMOKE, overrides=over, storage=tmp_path, name="packing")
    df = read_results(exp / "results")
    assert len(df) == 1 + 1 + 6 + 6 and (df.status == "ok").all()
    students = df[df.stage.isin(["student", "pruned"])]
    assert set(students.gpu_ids) <= {"0", "1"} and set(students.gpu_ids) == {"0", "1"}
    # at some moment two trials were training on the same logical GPU
    assert max(most_at_once(list(zip(g.trial_start, g.trial_end))) for _, g in students.groupby("gpu_ids")) >= 2
    assert (df.latency_device == "cpu").all()  # logical GPUs: training and timing still ran on the CPU


def test_dry_run_prints_the_reference_plan_without_ray(capsys, tmp_path):
    assert main(["run", str(ROOT / "configs" / "seed.yaml"), "--dry-run", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "38 variants in 4 stages" in out
    for stage, n in [("teacher", 1), ("baseline", 1), ("student", 9), ("pruned", 27)]:
        assert any(line.split()[:2] == [stage, str(n)] for line in out.splitlines()), out
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("args, needle", [
    (["--set", "kd.alpha=1.5"], "kd.alpha"),
    (["--set", "kd.temprature=[2]"], "kd.temperature"),
    (["--set", "prune.amount"], "KEY=VALUE"),
    (["--set", "prune.amount=1.0"], "prune.amount"),
    (["--set", "kd.temperature=0"], "kd.temperature"),
    (["--set", "kd.alpha=[]"], "kd.alpha"),
    (["--set", "teacher.epochs=many"], "teacher.epochs"),
    (["--set", "student.arch=resnet181"], "student.arch"),
    (["--set", "data.dataset=imagenet"], "data.dataset"),
    (["--set", "teacher.weights=/no/such/weights.pt"], "teacher.weights"),
    (["--set", "data.dataset=cifar10", "--set", "data.download=false", "--set", "data.root=/no/such/dir"], "data.root"),
    (["--set", "data.dataset=cifar10", "--set", "data.download=false", "--set", "data.root=EMPTY"], "not found"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, needle, capsys, tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started for a bad input"))
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]  # a data root that exists but is empty
    assert main(["run", SMOKE, "--storage", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_no_cluster_at_the_address_exits_2_at_once_and_writes_nothing(how, tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was asked, and would have retried for minutes"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a new driver: a Ray left by another test is reused
    address = f"127.0.0.2:{free_port('127.0.0.2')}"  # nothing listens there
    args = ["--address", address] if how == "--address" else []
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    assert main(["run", SMOKE, "--storage", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{how} {address}: no Ray cluster answered there" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unwritable_storage_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["run", SMOKE, "--storage", str(blocker / "runs")]) == 2
    assert "--storage" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("content", ["kd: [unclosed\n", "- just\n- a list\n", None])
def test_unusable_config_file_exits_2(content, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    if content is None:
        path.mkdir()  # a folder where a file should be: unreadable
    else:
        path.write_text(content)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()

