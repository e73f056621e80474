"""Atomic checkpoint files and safe loading (tensors and plain containers only)."""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import storage
from .fileio import atomic_write_bytes  # noqa: F401 - re-exported for callers of checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint is corrupt, truncated or holds pickled objects; the message names the path."""


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """torch.save `obj` atomically (a local path or a storage URI such as s3://bucket/key)."""
    if not storage.is_local(path):
        buf = io.BytesIO()
        torch.save(obj, buf)  # fails before anything is written, as locally
        storage.write_bytes(path, buf.getvalue())
        return
    path = Path(storage.resolve(path)[1]) if str(path).startswith("file://") else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; a pickled object or a damaged file is a CheckpointError naming the path."""
    try:
        if storage.is_local(path):
            return torch.load(storage.resolve(path)[1] if str(path).startswith("file://") else path,
                              map_location=map_location, weights_only=True)
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message is a long how-to-unsafely-load; keep only the blocked global, if named
        blocked = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise CheckpointError(f"{path}: refused to load, it holds pickled Python objects rather than tensors "
                              f"(weights_only=True){': ' + blocked if blocked else ''}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files (IndexError, struct.error, ...)
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
