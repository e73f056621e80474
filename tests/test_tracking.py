"""Tracking: one MLflow run per variant under one per sweep, logged by the driver from the experiment's files; nothing
logged twice on a resumed or re-submitted sweep; a dead server costs a warning, never a result. W&B offline runs.

The server is a real `mlflow server` (SQLite backend store, artifacts served) on a loopback address; the sweep is the
shared reduced smoke experiment, copied, with one or two variants deleted so that they train again."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import kdsweep
from kdsweep.config import load_config
from kdsweep.plan import make_plan
from kdsweep.results import read_results
from kdsweep.sweeper import run as run_sweep
from kdsweep.tracking import trackers

from .conftest import REDUCED, SMOKE, free_port

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402 - after the importorskip above

HOST = "127.0.0.2"


class Server:
    """`mlflow server` on HOST with a SQLite store in `root`; start, kill and start again on the same port."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(HOST), None
        self.uri = f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port), "--workers", "1",
             "--allowed-hosts", f"{HOST}:{self.port},{HOST}",  # MLflow 3 checks the Host header
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: `kill` takes the server's worker processes too
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not come up")

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path):
    s = Server(tmp_path / "mlflow")
    s.root.mkdir()
    s.start()
    yield s
    s.kill()


def copy_of(smoke_exp: Path, where: Path, retrain: tuple[str, ...] = ()) -> Path:
    """The shared smoke experiment, copied; the variants in `retrain` lose their files and train again."""
    exp = where / smoke_exp.name
    shutil.copytree(smoke_exp, exp, ignore=shutil.ignore_patterns("tune", "analysis"))
    for key in retrain:
        (exp / "results" / f"{key}.parquet").unlink()
        for d in (exp / "artifacts").glob(f"{key}-*"):
            shutil.rmtree(d)
    return exp


def children(client: MlflowClient, name: str = "smoke") -> tuple[object, list]:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]


def test_mlflow_server_one_run_per_variant_nothing_twice_and_a_dead_server_loses_nothing(smoke_exp, tmp_path, server):
    first, second = "pruned-T4-a0.9-p0.5-s0", "pruned-T4-a0.5-p0.5-s0"
    exp = copy_of(smoke_exp, tmp_path, retrain=(first,))
    over = REDUCED + [f"tracking.mlflow.uri={server.uri}"]
    kdsweep.run(SMOKE, overrides=over, storage=tmp_path)
    client = MlflowClient(server.uri)
    parent, runs = children(client)
    rows = read_results(exp / "results").drop_duplicates("key").set_index("key")
    assert parent.data.tags["kdsweep.sweep"] == str(exp) and len(runs) == len(rows) == 6
    by_key = {r.data.tags["kdsweep.key"]: r for r in runs}
    assert set(by_key) == set(rows.index)
    for key, run in by_key.items():
        row = rows.loc[key]
        assert run.info.status == "FINISHED" and run.data.tags["kdsweep.config_hash"] == row.config_hash
        assert run.data.metrics["test_acc"] == pytest.approx(row.test_acc)
        assert {"latency_ms/torch-cpu", "latency_ms/onnxruntime-cpu"} <= set(run.data.metrics)
        assert run.data.params["stage"] == row.stage and run.data.params["student.arch"] == "mobilenet_v3_small"
    pruned = by_key[first]
    assert pruned.data.params["prune_amount"] == "0.5" and pruned.data.tags["kdsweep.parent"] == "student-T4-a0.9-s0"
    # the per-epoch history: 6 student epochs, 1 recovery epoch (the retrained one, logged as its record landed)
    assert len(client.get_metric_history(by_key["student-T4-a0.9-s0"].info.run_id, "train_loss")) == 6
    assert len(client.get_metric_history(pruned.info.run_id, "train_loss")) == 1
    assert {a.path for a in client.list_artifacts(pruned.info.run_id)} == {"model.onnx", "result_rows.json"}

    # re-submitted, and the server dies mid-sweep (as the run starts training `second` again): the sweep finishes
    # and loses no row, and nothing logged before is logged twice
    for d in (exp / "artifacts").glob(f"{second}-*"):
        shutil.rmtree(d)
    (exp / "results" / f"{second}.parquet").unlink()
    lines: list[str] = []

    def echo(msg: str) -> None:
        lines.append(msg)
        if msg.startswith("[sweep] training"):
            server.kill()

    run_sweep(SMOKE, overrides=over, storage=tmp_path, echo=echo)
    assert any(ln.startswith("warning: mlflow tracking failed") for ln in lines)
    after = read_results(exp / "results")
    assert set(after.key) == set(rows.index) and (after.status == "ok").all()
    # back up: the next sync logs what was missing, still one run per variant
    server.start()
    cfg = load_config(SMOKE, over)
    # the retrained variant (its tracking.json went with its files): found by key and hash, both phases logged again
    assert trackers(cfg, str(exp), make_plan(cfg), print).sync() == 2
    _, runs = children(client)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert len(client.get_metric_history(pruned.info.run_id, "train_loss")) == 1
    again = {r.data.tags["kdsweep.key"]: r for r in runs}[second]
    assert again.data.metrics["test_acc"] == pytest.approx(after.set_index("key").loc[second].test_acc.iloc[0])


def test_a_file_store_and_wandb_offline_get_one_run_per_variant_from_the_files(smoke_exp, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    exp = copy_of(smoke_exp, tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = tmp_path / "mlruns"
    cfg = load_config(SMOKE, REDUCED + [f"tracking.mlflow.uri=file://{store}", "tracking.wandb.project=kdsweep-test"])
    plan = make_plan(cfg)
    t = trackers(cfg, str(exp), plan, print)
    assert t.sync() == 2 * 2 * len(plan)  # both trackers, both phases of each variant
    assert t.sync() == 0  # remembered: nothing twice
    _, runs = children(MlflowClient(f"file://{store}"))
    assert sorted(r.data.tags["kdsweep.key"] for r in runs) == sorted(v.key for v in plan)
    offline = sorted((exp / "wandb").glob("offline-run-*"))
    assert len(offline) == len(plan)  # one offline W&B run per variant, nothing sent anywhere
    for d in offline:  # the run's own log: its settings and final numbers are in it, to be synced later
        blob = next(d.glob("run-*.wandb")).read_bytes()
        assert b"student.arch" in blob and b"test_acc" in blob and b"kdsweep.config_hash" in blob, d
    assert wandb.__version__
