"""Atomic checkpoint files and safe loading (tensors and plain containers only)."""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from . import storage
from .errors import CheckpointError, one_line


def save_checkpoint(obj: Any, path: str | Path) -> None:
    """torch.save `obj` atomically (a local path or a storage URI such as s3://bucket/key).

    Serialised in memory first, so a failing save writes nothing, then written by `storage.write_bytes` (temp file,
    fsync, rename locally; one PUT on an object store)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(path, buf.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; a pickled object or a damaged file is a CheckpointError naming the path."""
    try:
        if storage.is_local(path):
            return torch.load(storage.local_path(path), map_location=map_location, weights_only=True)
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message is a long how-to-unsafely-load; keep only the blocked global, if named
        blocked = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise CheckpointError(f"{path}: refused to load, it holds pickled Python objects rather than tensors "
                              f"(weights_only=True){': ' + blocked if blocked else ''}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files (IndexError, struct.error, ...)
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({one_line(exc)})") from None
