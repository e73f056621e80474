"""The same sweep on a two-node Ray cluster (both nodes on this machine, loopback only)."""
from __future__ import annotations

import pytest

from kdsweep.cli import main
from kdsweep.results import read_results

from .conftest import SMOKE

TINY = ["data.train_limit=256", "data.test_limit=64", "teacher.epochs=1", "student.epochs=2",
        "prune.recovery_epochs=1", "kd.temperature=[2,4]", "kd.alpha=[0.9]", "prune.amount=[0.3]",
        "measure.iters=5", "measure.warmup=1", "resources.cpus_per_trial=1", "resources.gpus_per_trial=0.5",
        "measure.runtimes=[torch]"]  # one row per variant; ONNX export and runtimes are tested elsewhere


@pytest.mark.slow
def test_sweep_spreads_over_two_nodes_via_address(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # 127.0.0.2: Ray swaps 127.0.0.1 for the routable address; any other 127/8 address stays on loopback
    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.2", "num_cpus": 1,
                                                            "num_gpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(node_ip_address="127.0.0.2", num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        args = ["run", SMOKE, "--storage", str(tmp_path), "--name", "two", "--address", cluster.address]
        assert main(args + sum([["--set", o] for o in TINY], [])) == 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    df = read_results(tmp_path / "two" / "results")
    assert len(df) == 1 + 1 + 2 + 2 and (df.status == "ok").all()
    assert df.node_id.nunique() == 2  # trials ran on both nodes
    assert df.node_ip.eq("127.0.0.2").all()
