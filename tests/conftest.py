"""Shared fixtures: one real reduced smoke sweep per test session, reused by the sweep, analysis and notebook tests."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# T=4, alpha in {0.5, 0.9}, p=0.5: 1 teacher + 1 baseline + 2 KD students + 2 pruned, about a minute on 2 cores
REDUCED = ["teacher.epochs=4", "student.epochs=6", "prune.recovery_epochs=1", "kd.temperature=[4]",
           "kd.alpha=[0.5,0.9]", "prune.amount=[0.5]", "measure.iters=10", "measure.warmup=2"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on (now; the caller binds or probes it next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def smoke_exp(tmp_path_factory) -> Path:
    """A finished reduced smoke experiment (real training on digits, real local Ray), started with --estimate."""
    import kdsweep

    return kdsweep.run(SMOKE, overrides=REDUCED, storage=tmp_path_factory.mktemp("runs"), estimate=True)
