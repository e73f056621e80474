"""INT8 post-training static quantization of fp32 ONNX models with ONNX Runtime's tools (QDQ, per-channel), on bytes."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .data import ViewSpec, make_views, train_batches
from .dataset import Dataset

# cpuinfo flags of x86 int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8); with none of them, ORT's
# u8s8 kernels on AVX2/AVX-512 use instructions that can saturate on full 8-bit weights, hence reduce_range there
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
SETTING_KEYS = ("format", "per_channel", "activation_type", "weight_type", "reduce_range", "calibrate_method")


def vnni_in_cpuinfo(text: str) -> bool:
    """Whether any `flags` line of a /proc/cpuinfo text names a VNNI/AMX-INT8 flag."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and VNNI_FLAGS & set(value.split()):
            return True
    return False


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (avx512_vnni / avx_vnni / amx in /proc/cpuinfo flags)."""
    if not sys.platform.startswith("linux"):
        return False  # unknown: reduce_range is the setting that is safe everywhere
    try:
        return vnni_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def int8_settings(vnni: bool | None = None) -> dict:
    """The ORT static-quantization settings used (JSON-able, recorded with each variant)."""
    vnni = cpu_has_vnni() if vnni is None else bool(vnni)
    return {"format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
            "reduce_range": not vnni, "vnni": vnni, "calibrate_method": "MinMax", "onnxruntime": ort.__version__}


def calibration_batches(data: Dataset, view: ViewSpec, seed: int, batches: int, batch_size: int) -> list[np.ndarray]:
    """`batches` batches of un-augmented training views (float32 NCHW), in the seed's shuffled order.

    Epoch 0's order of `seed` is a pure function of the seed, so a resumed quantization calibrates on the same
    images; a training set too small for `batches` gives fewer.
    """
    if batches < 1 or batch_size < 1:
        raise ValueError(f"calibration needs batches >= 1 and batch_size >= 1, got {batches} and {batch_size}")
    order = train_batches(len(data.train_y), batch_size, seed, 0)[:batches]
    return [np.ascontiguousarray(make_views(data.train_x[idx], view).numpy()) for idx in order]


class _Batches(CalibrationDataReader):
    """Feeds calibration batches to ORT's calibrator under the model's one input name."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self._feeds = iter([{name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _input_name(model: onnx.ModelProto) -> str:
    # older exporters list initializers as graph inputs too; the image is the input that is not one
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"quantize_int8: expected a model with one input, got {names}")
    return names[0]


def _choice(enum: type, settings: dict, key: str):
    """The member of ORT's `enum` that settings[key] names, or a one-line error listing the known names."""
    try:
        return enum[settings[key]]
    except KeyError:
        raise ValueError(f"quantize_int8: settings[{key!r}] = {settings[key]!r} is not one of "
                         f"{', '.join(enum.__members__)}") from None


def quantize_int8(fp32_onnx: bytes, calibration: list[np.ndarray], settings: dict) -> bytes:
    """ORT static QDQ INT8 quantization (after ORT's pre-processing) of an fp32 ONNX model; returns the int8 model."""
    missing = [k for k in SETTING_KEYS if k not in settings]
    if missing:
        raise ValueError(f"quantize_int8: settings lack {missing}; build them with int8_settings()")
    if not calibration:
        raise ValueError("quantize_int8: no calibration batches")
    fmt, method = _choice(QuantFormat, settings, "format"), _choice(CalibrationMethod, settings, "calibrate_method")
    activations, weights = _choice(QuantType, settings, "activation_type"), _choice(QuantType, settings, "weight_type")
    model = onnx.load_model_from_string(fp32_onnx)
    name = _input_name(model)
    # export.py already folds BN into the Conv weights; an unoptimised file (torch's exporter with optimize=False
    # writes a Conv's absent bias as Expand(0), which ORT does not fold) would keep BN in float between QDQ pairs.
    # onnxscript's optimiser is idempotent and takes ~0.5 s, so every input goes through it.
    model = onnxscript.optimizer.optimize(model)
    with tempfile.TemporaryDirectory(prefix="kdsweep-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        # a path, not the ModelProto: given a proto, quant_pre_process moves every initializer out as external
        # data, and ORT's shape inference then cannot read constant inputs such as ReduceMean's axes
        onnx.save_model(model, src)
        # ORT's documented step before quantize_static: its graph optimisation and shape inference, so every
        # tensor to quantize has a known type. Symbolic shape inference is skipped: it crashes on Constant nodes
        # with value_ints (microsoft/onnxruntime#22422) and, per ORT, matters for transformers, not CNNs
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        quantize_static(pre, out, _Batches(name, calibration),
                        quant_format=fmt, per_channel=bool(settings["per_channel"]),
                        reduce_range=bool(settings["reduce_range"]), activation_type=activations,
                        weight_type=weights, calibrate_method=method)
        return out.read_bytes()


def evaluate(session, x_uint8: torch.Tensor, y: torch.Tensor, view: ViewSpec,
             batch_size: int = 256) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and predicted classes of an ORT session (anything with .run and .get_inputs) on uint8 images."""
    name = session.get_inputs()[0].name
    preds = [session.run(None, {name: make_views(chunk, view).numpy()})[0].argmax(1)
             for chunk in x_uint8.split(batch_size)]
    pred = np.concatenate(preds).astype(np.int64)
    return float((pred == y.numpy()).mean()), pred
