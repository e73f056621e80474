"""kdsweep: sweep knowledge distillation and pruning settings and report the accuracy/latency/size trade-off."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .config import Config

__all__ = ["__version__", "run"]


def run(config: str | Path | dict | Config, overrides: list[str] | None = None, storage: str | Path = "./runs",
        name: str | None = None, address: str | None = None, dry_run: bool = False,
        estimate: bool = False) -> Path | str:
    """Run or resume a sweep from a config path/dict/Config; returns the experiment folder (see kdsweep.sweeper.run)."""
    from .sweeper import run as _run  # Ray and torch load only when a sweep runs

    return _run(config, overrides=overrides, storage=storage, name=name, address=address, dry_run=dry_run,
                estimate=estimate)


def __getattr__(name: str) -> ModuleType:
    """`kdsweep.results` and `kdsweep.analysis` after a plain `import kdsweep`, loaded on first use (no torch)."""
    if name in ("results", "analysis"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kdsweep' has no attribute {name!r}")
