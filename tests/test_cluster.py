"""The same sweep on a two-node Ray cluster started the way users start one (`ray start`), with the token
authentication Ray now defaults to; both nodes on this machine, loopback only."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from kdsweep.results import read_results

from .conftest import SMOKE

TINY = ["data.train_limit=256", "data.test_limit=64", "teacher.epochs=1", "student.epochs=2",
        "prune.recovery_epochs=1", "kd.temperature=[2,4]", "kd.alpha=[0.9]", "prune.amount=[0.3]",
        "measure.iters=5", "measure.warmup=1", "resources.cpus_per_trial=1", "resources.gpus_per_trial=0.5",
        "measure.runtimes=[torch]"]  # one row per variant; ONNX export and runtimes are tested elsewhere
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, NODE = "127.0.0.2", "127.0.0.3"  # Ray swaps 127.0.0.1 for the routable address; other 127/8 ones stay


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD, 0))
        return s.getsockname()[1]


def _stop(temp_dir: str) -> None:
    """Kill this cluster's processes only (`ray stop` would stop every Ray on the machine)."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                p.kill()
        except psutil.Error:
            pass


def _kdsweep(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_token_auth_cluster_from_ray_start_runs_the_sweep_on_both_nodes(tmp_path):
    token = secrets.token_hex(32)
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    auth = plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # every node and the driver: the same token
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    address = f"{HEAD}:{_free_port()}"
    try:
        for cmd in ([RAY, "start", "--head", "--node-ip-address", HEAD, "--port", address.split(":")[1],
                     "--include-dashboard=false"],
                    [RAY, "start", "--address", address, "--node-ip-address", NODE]):
            subprocess.run(cmd + ["--num-cpus", "1", "--num-gpus", "1", "--temp-dir", temp_dir, "--disable-usage-stats"],
                           env=auth, check=True, capture_output=True, timeout=120)
        # a driver without the token: one line naming what to set, exit 2, nothing written (Ray's retries cut short)
        refused = _kdsweep(plain | {"RAY_NUM_REDIS_GET_RETRIES": "2"}, "run", SMOKE, "--storage", str(tmp_path),
                           "--name", "refused", "--address", address)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.count("\n") == 1 and "refused this driver's token" in refused.stderr
        assert "RAY_AUTH_TOKEN" in refused.stderr and not (tmp_path / "refused").exists()
        ok = _kdsweep(auth, "run", SMOKE, "--storage", str(tmp_path), "--name", "two", "--address", address,
                      *sum([["--set", o] for o in TINY], []))
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    finally:
        _stop(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    df = read_results(tmp_path / "two" / "results")
    assert len(df) == 1 + 1 + 2 + 2 and (df.status == "ok").all()
    assert df.node_id.nunique() == 2 and set(df.node_ip) == {HEAD, NODE}  # trials ran on both nodes
