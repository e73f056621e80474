"""Where an experiment keeps its files, and reading its JSON records (torch-free: `kdsweep status` and the driver read
them without a model)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .config import Config
from .hashes import config_hash, logits_settings
from .plan import Variant


@dataclass(frozen=True)
class Paths:
    """Where an experiment keeps its files: locations (strings) under `root`, a local path or a URI (s3://...)."""

    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", os.fspath(self.root))

    def artifact_dir(self, v: Variant) -> str:
        # the hash in the name: a changed upstream setting gets a fresh folder instead of a stale checkpoint
        return storage.join(self.root, "artifacts", f"{v.key}-{v.config_hash[:10]}")

    def checkpoint(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "checkpoint.pt")

    def model(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "model.pt")

    def record(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "trained.json")

    def trial(self, v: Variant) -> str:
        """Who trains the variant now and how far it is: pid, node, epoch, a heartbeat (see kdsweep.heartbeat)."""
        return storage.join(self.artifact_dir(v), "trial.json")

    def latency(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "latency.json")

    def onnx(self, v: Variant) -> str:
        return storage.join(self.artifact_dir(v), "model.onnx")

    def structure(self, v: Variant) -> str:
        """The pruning history of a structurally pruned variant (JSON; replayed on a fresh model to load it)."""
        return storage.join(self.artifact_dir(v), "structure.json")

    @property
    def estimate(self) -> str:
        """`run --estimate`'s expected cost (seconds per epoch per stage): the ETA before any trial has finished."""
        return storage.join(self.root, "estimate.json")

    def signals(self, run: str) -> str:
        return storage.join(self.root, "signals", f"{run}.json")

    def result(self, v: Variant) -> str:
        return storage.join(self.root, "results", f"{v.key}.parquet")

    def teacher_logits(self, cfg: Config, seed: int) -> str:
        h = config_hash(logits_settings(cfg, seed))
        return storage.join(self.root, "artifacts", f"teacher_logits-s{seed}-{h[:10]}.pt")


def read_record(path: str | Path) -> dict | None:
    """A JSON file of the experiment (a variant's trained record, a trial's heartbeat), or None if absent or
    unreadable (a missing or damaged record: the variant is retrained)."""
    try:
        return json.loads(storage.read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
