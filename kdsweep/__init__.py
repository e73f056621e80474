"""kdsweep: sweep knowledge distillation and pruning settings and report the accuracy/latency/size trade-off."""
from __future__ import annotations

__version__ = "0.1.0"


def run(config, overrides=None, storage="./runs", name=None, address=None, dry_run=False):  # noqa: ANN001, ANN201
    """Run or resume a sweep from a config path/dict/Config; returns the experiment folder (see kdsweep.sweeper.run)."""
    from .sweeper import run as _run

    return _run(config, overrides=overrides, storage=storage, name=name, address=address, dry_run=dry_run)
