"""kdsweep on Ray clusters started the way users start them (`ray start`), with the token authentication Ray now
defaults to: a sweep over two nodes through `--address`, grown by a Ray job. One cluster for the module; loopback
only."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from kdsweep.results import read_results

from .conftest import SMOKE, free_port

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.train_limit=256", "data.test_limit=64", "teacher.epochs=1", "student.epochs=2",
        "prune.recovery_epochs=1", "kd.temperature=[2,4]", "kd.alpha=[0.9]", "prune.amount=[0.3]",
        "measure.iters=5", "measure.warmup=1", "resources.cpus_per_trial=1", "resources.gpus_per_trial=0.5",
        "measure.runtimes=[torch]"]  # one row per variant; ONNX export and runtimes are tested elsewhere
RAY = str(Path(sys.executable).with_name("ray"))
HEAD, NODE = "127.0.0.2", "127.0.0.3"  # Ray swaps 127.0.0.1 for the routable address; other 127/8 ones stay


def _stop(temp_dir: str) -> None:
    """Kill this cluster's processes only (`ray stop` would stop every Ray on the machine): those started with its
    temp dir and all their descendants. The agents rename themselves (`ray::DashboardAgent`) and, left alive, hold
    the default agent ports, so the next cluster's head has "No available agent" for jobs."""
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                procs |= {q.pid: q for q in [p, *p.children(recursive=True)]}
        except psutil.Error:
            pass
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs.values()), timeout=10)


def _auth_env() -> tuple[dict, dict]:
    """(this environment without Ray auth settings, the same with token auth and one fresh token)."""
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return plain, plain | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _ray_start(env: dict, temp_dir: str, *args: str) -> None:
    subprocess.run([RAY, "start", *args, "--num-cpus", "1", "--num-gpus", "1", "--temp-dir", temp_dir,
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)


def _kdsweep(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-node cluster as users start one: `ray start` with one token on every node, the head (127.0.0.2) with
    its dashboard for `ray job submit`, a worker node (127.0.0.3), and the `--address` sweep "two" run on it once.
    Each node has its own temp dir, as on separate machines: on a shared one, the worker node's runtime-env agent
    deleted a job's working dir, the job driver's cwd, while the driver still ran in it."""
    plain, auth = _auth_env()  # every node and the driver: the same token
    temps = [tempfile.mkdtemp(prefix=p, dir="/tmp") for p in ("rh", "rn")]  # short: Ray's socket paths live under them
    port, dashboard_port = free_port(HEAD), free_port(HEAD)
    address = f"{HEAD}:{port}"
    store = tmp_path_factory.mktemp("cluster")
    try:
        _ray_start(auth, temps[0], "--head", "--node-ip-address", HEAD, "--port", str(port), "--dashboard-host", HEAD,
                   "--dashboard-port", str(dashboard_port))
        _ray_start(auth, temps[1], "--address", address, "--node-ip-address", NODE)
        two = _kdsweep(auth, "run", SMOKE, "--storage", str(store), "--name", "two", "--address", address,
                       *sum([["--set", o] for o in TINY], []))
        yield SimpleNamespace(plain=plain, auth=auth, address=address, dashboard=f"http://{HEAD}:{dashboard_port}",
                              store=store, two=two)
    finally:
        for t in temps:
            _stop(t)
            shutil.rmtree(t, ignore_errors=True)


@pytest.mark.slow
def test_token_auth_cluster_from_ray_start_runs_the_sweep_on_both_nodes(cluster):
    # a driver without the token: one line naming what to set, exit 2, nothing written (Ray's retries cut short)
    refused = _kdsweep(cluster.plain | {"RAY_NUM_REDIS_GET_RETRIES": "2"}, "run", SMOKE, "--storage",
                       str(cluster.store), "--name", "refused", "--address", cluster.address)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.count("\n") == 1 and "refused this driver's token" in refused.stderr
    assert "RAY_AUTH_TOKEN" in refused.stderr and not (cluster.store / "refused").exists()
    ok = cluster.two
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    df = read_results(cluster.store / "two" / "results")
    assert len(df) == 1 + 1 + 2 + 2 and (df.status == "ok").all()
    assert df.node_id.nunique() == 2 and set(df.node_ip) == {HEAD, NODE}  # trials ran on both nodes
    # plan --address counts the trials on the cluster's resources (1 CPU and 1 logical GPU per node), not here's:
    # 2 CPUs and 2 GPUs at 1 CPU and 0.5 GPU per trial (TINY) run 2 at once
    plan = _kdsweep(cluster.auth, "plan", SMOKE, "--storage", str(cluster.store), "--name", "two", "--address",
                    cluster.address, *sum([["--set", o] for o in TINY], []))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert f"  cluster at {cluster.address}: 2 CPU(s), 2 GPU(s): up to 2 trial(s) at once" in plan.stdout
    assert "1 CPU, 0.5 GPU" in plan.stdout and "(6 of 6 variants already trained there)" in plan.stdout, plan.stdout


def _submit(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the head's job agent is still coming up ("No available agent")."""
    for _ in range(12):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(5)
    return done


@pytest.mark.slow
def test_ray_job_submit_grows_the_sweep_and_a_resubmission_trains_nothing(cluster):
    pytest.importorskip("aiohttp", reason="`ray job submit` needs Ray's dashboard: pip install -e '.[cluster]'")
    assert cluster.two.returncode == 0, cluster.two.stdout[-2000:] + cluster.two.stderr[-2000:]
    results = cluster.store / "two" / "results"
    before = read_results(results).set_index("key")
    # the job adds alpha 0.5 to the experiment the --address driver made: only the new variants train
    submit = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(ROOT),
              # the repository travels as the job's working directory, without environments and experiments
              "--runtime-env-json", '{"excludes": [".venv", ".ci-venv", ".git", ".device", "runs"]}', "--",
              sys.executable, "-m", "kdsweep", "run", "configs/smoke.yaml", "--storage", str(cluster.store),
              "--name", "two", *sum([["--set", o] for o in [*TINY, "kd.alpha=[0.5,0.9]"]], [])]
    first = _submit(submit, cluster.auth)
    assert first.returncode == 0 and "succeeded" in first.stdout + first.stderr, first.stdout[-3000:]
    assert "[sweep] training 4 variant(s): student 2, pruned 2;" in first.stdout
    mtimes = {f.name: f.stat().st_mtime_ns for f in results.glob("*.parquet")}
    again = _submit(submit, cluster.auth)
    assert again.returncode == 0 and "succeeded" in again.stdout + again.stderr, again.stdout[-3000:]
    df = read_results(results).set_index("key")
    assert len(df) == 10 and (df.status == "ok").all() and (df.train_runs == 1).all()
    assert (df.loc[before.index, "trial_end"] == before.trial_end).all()  # the --address run's variants: not retrained
    # the resubmission trained nothing
    assert {f.name: f.stat().st_mtime_ns for f in results.glob("*.parquet")} == mtimes
    assert "[sweep] training" not in again.stdout
