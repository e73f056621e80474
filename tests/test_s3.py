"""Object storage: a sweep with --storage s3://bucket/prefix against an S3-compatible server (moto) on loopback."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdsweep import storage
from kdsweep.cli import main
from kdsweep.results import read_results

from .conftest import SMOKE, free_port
from .test_reliability import TINY, _descendants, _kill_all, _wait_for

pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "kdsweep-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables that reach it. Stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, "moto server did not start"
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **CREDENTIALS}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(storage_uri: str, *overrides: str, name: str) -> list[str]:
    args = [sys.executable, "-m", "kdsweep", "run", SMOKE, "--storage", storage_uri, "--name", name]
    for o in overrides:
        args += ["--set", o]
    return args


def _sub_env(s3_env: dict) -> dict:
    return {**os.environ, **s3_env}


def _artifact(exp: str, key: str) -> str | None:
    found = [p for p in storage.listdir(storage.join(exp, "artifacts")) if storage.basename(p).startswith(f"{key}-")
             and not p.endswith(".pt")]
    return found[0] if found else None


def _local_files(*dirs: Path) -> list[str]:
    return sorted(str(p) for d in dirs for p in d.rglob("*"))


def test_unreachable_bucket_is_a_storage_error(s3_env, capsys):
    assert main(["plan", SMOKE, "--storage", "s3://no-such-bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "--storage" in err and "no-such-bucket" in err


@pytest.fixture(scope="module")
def resumed(s3_env, tmp_path_factory):
    """One reduced smoke sweep on S3 whose driver is SIGKILLed after the KD student trained, then re-run to the end
    (from a temp cwd). Shared by the tests below, so the S3 tests cost about one sweep."""
    tmp = tmp_path_factory.mktemp("s3")
    cwd = tmp / "cwd"
    cwd.mkdir()
    ray_results = Path.home() / "ray_results"
    home_before = set(os.listdir(ray_results)) if ray_results.is_dir() else None
    over = [*TINY, "prune.amount=[0.3,0.5]", "prune.recovery_epochs=3"]
    uri, env = f"s3://{BUCKET}/rel", _sub_env(s3_env)
    exp = f"{uri}/rel"
    proc = subprocess.Popen(_cli(uri, *over, name="rel"), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    left: set[int] = set()
    try:
        def student_done():
            art = _artifact(exp, "student-T4-a0.9-s0")
            return art and storage.exists(storage.join(art, "trained.json"))

        _wait_for(student_done, 240, proc)
        left = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_all(_descendants(proc.pid) | left | {proc.pid})
    proc.stdout.close()

    def state(k: str) -> tuple:
        f = storage.join(_artifact(exp, k), "trained.json")
        return storage.info(f).mtime_ns, storage.read_bytes(f)

    keys = ("teacher-s0", "baseline-s0", "student-T4-a0.9-s0")
    before = {k: state(k) for k in keys}
    # `kdsweep status` on the bucket, between the kill and the rerun: config, plan, records and heartbeats from S3
    status_killed = subprocess.run([sys.executable, "-m", "kdsweep", "status", exp], cwd=cwd, env=env,
                                   capture_output=True, text=True, timeout=120)
    rerun = subprocess.run(_cli(uri, *over, name="rel"), cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=300)
    return {"exp": exp, "env": env, "tmp": tmp, "cwd": cwd, "rerun": rerun, "keys": keys, "before": before,
            "after": {k: state(k) for k in keys}, "home_before": home_before, "ray_results": ray_results,
            "status_killed": status_killed}


@pytest.mark.slow
def test_killed_driver_rerun_on_s3_finishes_without_retraining(resumed):
    rerun = resumed["rerun"]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "object storage" in rerun.stdout  # the notice that no lock guards an object-store experiment
    df = read_results(storage.join(resumed["exp"], "results"))
    assert len(df) == 5 and df.key.is_unique and (df.status == "ok").all()
    assert resumed["after"] == resumed["before"]  # finished variants were not trained again
    assert (df.set_index("key").loc[list(resumed["keys"]), "train_runs"] == 1).all()
    # only pruned variants (the one the driver was killed in, and any not started) are left to train
    assert all(re.match(r"\[sweep\] training \d variant\(s\): pruned \d;", line)
               for line in rerun.stdout.splitlines() if line.startswith("[sweep] training"))


@pytest.mark.slow
def test_sweep_on_s3_reads_back_and_writes_nothing_locally(resumed):
    exp, cwd = resumed["exp"], resumed["cwd"]
    assert resumed["rerun"].returncode == 0, resumed["rerun"].stdout + resumed["rerun"].stderr
    assert storage.exists(storage.join(exp, "plan.json")) and storage.exists(storage.join(exp, "config.yaml"))
    arts = storage.listdir(storage.join(exp, "artifacts"))
    assert any(storage.basename(p).startswith("teacher_logits-s0") for p in arts)
    assert storage.exists(storage.join(_artifact(exp, "student-T4-a0.9-s0"), "model.pt"))
    assert storage.exists(storage.join(_artifact(exp, "student-T4-a0.9-s0"), "checkpoint.pt"))
    assert storage.listdir(storage.join(exp, "tune"))  # Ray Tune's experiment state went to the bucket too

    shown = subprocess.run([sys.executable, "-m", "kdsweep", "analyze", exp], cwd=cwd, env=resumed["env"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # the headline shows the best pruned variant; which p wins on 256 images after 1 epoch varies
    for label in ("teacher", "student-ce (no KD)", "student-kd T=4 a=0.9", "a=0.9 p=0.", "5 variants: 5 ok"):
        assert label in shown.stdout, shown.stdout
    assert storage.exists(storage.join(exp, "analysis", "tradeoffs.md"))
    # `kdsweep status` reads the bucket too: after the kill, the trained KD student (no result rows before latency
    # timing) and the pruned variants left; after the rerun, every variant ok
    killed = resumed["status_killed"]
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert killed.stdout.startswith(f"{exp}: 5 planned · ") and " trained" in killed.stdout.splitlines()[0]
    assert not re.search(r"\b\d+ ok\b", killed.stdout.splitlines()[0])  # no result rows before the latency task
    done = subprocess.run([sys.executable, "-m", "kdsweep", "status", exp], cwd=cwd, env=resumed["env"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"{exp}: 5 planned · 5 ok") and "training finished" in done.stdout
    # nothing of the experiment on local disk: not in the cwd (no ./runs), not in the test's tmp dirs, not ~/ray_results
    assert _local_files(resumed["tmp"]) == [str(cwd)]
    ray_results = resumed["ray_results"]
    assert (set(os.listdir(ray_results)) if ray_results.is_dir() else None) == resumed["home_before"]
