"""The in-memory dataset every stage trains on: uint8 images and int64 labels, once per sweep, and its plain-array form
for Ray's object store (shared zero-copy with every trial on a node)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Train/test images (N, C, H, W) uint8 and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def to_arrays(ds: Dataset) -> dict:
    """Plain numpy arrays: Ray's object store shares them zero-copy with every trial on a node."""
    return {"name": ds.name, "classes": list(ds.classes), **{k: getattr(ds, k).numpy() for k in _ARRAYS}}


def from_arrays(d: dict) -> Dataset:
    """Inverse of to_arrays, without copying (the arrays are read-only; kdsweep never writes to them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array" - intended, see above
        t = {k: torch.from_numpy(np.asarray(d[k])) for k in _ARRAYS}
    return Dataset(d["name"], t["train_x"], t["train_y"], t["test_x"], t["test_y"], tuple(d["classes"]))
