"""Accuracy, size three ways (dense, non-zero, compressed bytes) and MACs of a model; latency is `runtimes`."""
from __future__ import annotations

import ast
import io
from dataclasses import dataclass

import numpy as np
import torch
import zstandard
from torch import nn

from .data import ViewSpec, make_views
from .models import count_params


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, spec: ViewSpec, device: torch.device,
            batch_size: int = 256) -> torch.Tensor:
    """Logits of un-augmented views of uint8 images `x`, in eval mode, on `device` (the model is moved there)."""
    was_training = model.training
    model.eval().to(device)
    out = []
    amp = device.type == "cuda"
    for chunk in x.split(batch_size):
        v = make_views(chunk.to(device, non_blocking=True), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(v).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: ViewSpec, device: torch.device,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (0-1) in eval mode."""
    return float((predict(model, x, spec, device, batch_size).argmax(1) == y).float().mean())


@dataclass
class Size:
    params: int
    nonzero_params: int
    size_mb: float
    size_nonzero_mb: float
    size_compressed_mb: float

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero_params / self.params if self.params else 0.0


def compressed_state_bytes(model: nn.Module, level: int = 10) -> bytes:
    """State dict as a bitmask + non-zero values per float tensor, then zstd: the bytes a sparse model really needs."""
    buf = io.BytesIO()
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous().numpy()
        buf.write(name.encode() + b"\0" + str(a.dtype).encode() + b"\0" + str(list(a.shape)).encode() + b"\0")
        if a.dtype.kind == "f":
            flat = a.reshape(-1)
            nz = flat != 0
            buf.write(np.packbits(nz).tobytes())
            buf.write(flat[nz].tobytes())
        else:
            buf.write(a.tobytes())
    return zstandard.ZstdCompressor(level=level).compress(buf.getvalue())


def load_compressed_state(blob: bytes) -> dict[str, torch.Tensor]:
    """Inverse of compressed_state_bytes."""
    raw = zstandard.ZstdDecompressor().decompress(blob)
    out, pos = {}, 0
    while pos < len(raw):
        fields = []
        for _ in range(3):
            end = raw.index(b"\0", pos)
            fields.append(raw[pos:end].decode())
            pos = end + 1
        name, dtype, shape = fields[0], np.dtype(fields[1]), tuple(ast.literal_eval(fields[2]))
        n = int(np.prod(shape)) if shape else 1
        if dtype.kind == "f":
            nbytes = (n + 7) // 8
            nz = np.unpackbits(np.frombuffer(raw[pos:pos + nbytes], np.uint8))[:n].astype(bool)
            pos += nbytes
            k = int(nz.sum())
            flat = np.zeros(n, dtype)
            flat[nz] = np.frombuffer(raw[pos:pos + k * dtype.itemsize], dtype)
            pos += k * dtype.itemsize
        else:
            flat = np.frombuffer(raw[pos:pos + n * dtype.itemsize], dtype).copy()
            pos += n * dtype.itemsize
        out[name] = torch.from_numpy(flat.reshape(shape))
    return out


@torch.inference_mode()
def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of one batch-1 forward at `image_size` (torch's FLOP counter: conv and matmul FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, channels, image_size, image_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_size(model: nn.Module) -> Size:
    """Dense MB (params*4/1e6, the reference's figure), non-zero MB, and compressed state-dict MB."""
    params = count_params(model)
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    compressed = len(compressed_state_bytes(model))
    return Size(params, nonzero, params * 4 / 1e6, nonzero * 4 / 1e6, compressed / 1e6)
