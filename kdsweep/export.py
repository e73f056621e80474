"""ONNX export of trained variants with torch's dynamo exporter, checked against PyTorch in ONNX Runtime.

A dynamo export costs seconds per model (3 s ResNet-18 to 8 s MobileNetV3-Small on one CPU thread) and a sweep
exports dozens of models of two or three architectures, so each process keeps one weight-less *template* per
(model class, state-dict names/shapes/dtypes, input C,H,W): later models of that key copy the template's graph and
fill in their own state-dict tensors, which takes milliseconds. Both paths are checked the same way in ORT.
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from . import storage
from .errors import ExportError, one_line
from .runtimes import ort_predict, ort_session

# What torch 2.14's exporter writes natively (no version conversion); ORT >= 1.17 and TensorRT >= 10 read it.
OPSET = 20
INPUT_NAME, OUTPUT_NAME = "input", "logits"
ATOL, RTOL = 1e-5, 1e-3

# key -> weight-less ModelProto whose initializers are named after state-dict keys, or None: this key's export
# does not map onto its state dict, so every model of it is exported afresh
_TEMPLATES: dict[tuple, onnx.ModelProto | None] = {}
# torch.export patches global state while it traces; tasks of a reused Ray process may export from two threads
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Exported:
    """A serialized ONNX model and how closely ORT reproduces PyTorch on the check input."""

    onnx: bytes  # the serialized model, weights inside (no external data file)
    max_abs_diff: float  # max |ORT - torch| logits on the check input (and its first sample alone)
    agreement: float  # top-1 agreement ORT vs torch on the check input, 0-1
    reused_template: bool  # filled from this process's template rather than exported afresh

    @property
    def file_bytes(self) -> int:
        """Size of the .onnx file this model is saved as."""
        return len(self.onnx)


def export_onnx(model: nn.Module, check_input: torch.Tensor, atol: float = ATOL, rtol: float = RTOL,
                shared: str | None = None) -> Exported:
    """Export `model` (eval mode, dynamic batch axis) to ONNX and check it in ORT against PyTorch on `check_input`.

    `shared`: a storage folder (local or s3://) where templates are kept for the other processes of a sweep, so an
    architecture costs one dynamo export per sweep rather than one per trial process. The check runs `check_input`
    (batch >= 2, so the dynamic batch axis is exercised) and its first sample alone, and raises ExportError if
    max |ORT - torch| > atol + rtol * max |torch logit|: float32 kernels differ in summation order, and ORT fuses
    Conv+BN, so agreement is relative to the logit scale. The model's train/eval mode and memory format are left as
    they were.
    """
    if check_input.dim() != 4 or check_input.shape[0] < 2:
        raise ValueError(f"check_input: need an (N>=2, C, H, W) batch, got shape {tuple(check_input.shape)}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = check_input.to(device=device, dtype=torch.float32)
        state = model.state_dict()
        key = _template_key(model, state, x)
        template = _TEMPLATES.get(key)
        if template is None and key not in _TEMPLATES and shared:
            template = _TEMPLATES[key] = _load_shared(shared, key, state)
        if template is not None:
            data, reused = _fill(template, state), True
        else:
            data, reused = _export_fresh(model, x, state, key), False
            if shared and _TEMPLATES.get(key) is not None:
                storage.write_bytes(_shared_path(shared, key), _TEMPLATES[key].SerializeToString())
        data = _optimize(data)
        with torch.inference_mode():
            ref = model(x).float().cpu().numpy()
        return _check(data, x.cpu().numpy(), ref, atol, rtol, reused)
    finally:
        model.train(was_training)


def _template_key(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> tuple:
    cls = type(model)
    shapes = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in state.items())
    return f"{cls.__module__}.{cls.__qualname__}", shapes, tuple(x.shape[1:])


def _export_fresh(model: nn.Module, x: torch.Tensor, state: dict[str, torch.Tensor], key: tuple) -> bytes:
    """Dynamo export; keep a template of the graph if every initializer is a state-dict tensor under its own name."""
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter warnings would drown the sweep's one-line progress display
        try:
            # batch 2 as the example: torch.export specialises a dimension whose example size is 0 or 1
            program = torch.onnx.export(
                model, (x[:2],), dynamo=True, verbose=False, optimize=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # torch.export raises many types; one line says which model failed
            raise ExportError(f"ONNX export of {type(model).__name__} failed: {_root_cause(exc)}") from exc
    proto = program.model_proto
    # optimize=False keeps BN separate from conv, so each initializer is still one state-dict tensor (verified
    # here by value): that graph is the template; `_optimize` then folds BN per model
    _TEMPLATES[key] = _strip(proto) if _maps_onto(proto, state) else None
    return proto.SerializeToString()


def _optimize(data: bytes) -> bytes:
    """onnxscript's optimiser (what export(optimize=True) runs): constant folding and BN folded into the Conv weights.

    ORT does not do this itself on these graphs (the exporter writes a Conv's absent bias as Expand(0), which blocks
    its Conv+BN fusion): measured at 224 px on one thread, unoptimised files ran MobileNetV3-Small 3.7x and
    ResNet-18 1.6x slower in ORT, which would flatter every comparison against fp32. ~0.5 s per model.
    """
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(onnx.load_from_string(data)).SerializeToString()


def _shared_path(shared: str, key: tuple) -> str:
    digest = hashlib.sha256(repr((key, torch.__version__, onnx.__version__)).encode()).hexdigest()[:16]
    return storage.join(shared, f"template-{digest}.onnx")


def _load_shared(shared: str, key: tuple, state: dict[str, torch.Tensor]) -> onnx.ModelProto | None:
    """Another process's template of this key, if one is stored and names exactly this state dict's tensors."""
    path = _shared_path(shared, key)
    try:
        proto = onnx.load_from_string(storage.read_bytes(path)) if storage.exists(path) else None
    except Exception:  # noqa: BLE001 - a damaged or foreign file only costs a fresh export
        return None
    if proto is None or {i.name for i in proto.graph.initializer} - set(state):
        return None
    return proto


def _root_cause(exc: BaseException) -> str:
    """First line of the innermost cause: the exporter wraps the real reason in generic 'step 1/3' errors."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return one_line(exc, limit=10_000)


def _maps_onto(proto: onnx.ModelProto, state: dict[str, torch.Tensor]) -> bool:
    """Whether every initializer equals the state-dict tensor of its name."""
    for init in proto.graph.initializer:
        t = state.get(init.name)
        if t is None or not np.array_equal(numpy_helper.to_array(init), _numpy(t)):
            return False
    return True


def _strip(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without initializer data: the graph plus each initializer's name, dtype and dims."""
    template = onnx.ModelProto()
    template.CopyFrom(proto)
    for init in template.graph.initializer:
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(field)
    return template


def _fill(template: onnx.ModelProto, state: dict[str, torch.Tensor]) -> bytes:
    """The template's graph with this model's state-dict tensors as initializers."""
    proto = onnx.ModelProto()
    proto.CopyFrom(template)
    for init in proto.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(_numpy(state[init.name]), init.name))
    return proto.SerializeToString()


def _numpy(t: torch.Tensor) -> np.ndarray:
    # contiguous(): channels_last weights must be written in the NCHW order ONNX reads
    return t.detach().cpu().contiguous().numpy()


def _check(data: bytes, x: np.ndarray, ref: np.ndarray, atol: float, rtol: float, reused: bool) -> Exported:
    """Run `data` in an ORT CPU session on `x` and on `x[:1]`; ExportError unless it matches `ref`."""
    how = "template-filled" if reused else "exported"
    try:
        session = ort_session(data, "cpu", threads=1)
        out, first = ort_predict(session, x), ort_predict(session, x[:1])
    except Exception as exc:  # ORT raises its own exception types; say it was the ONNX check
        raise ExportError(f"ORT could not run the {how} ONNX model: {one_line(exc)}") from exc
    if out.shape != ref.shape:
        raise ExportError(f"ORT output shape {out.shape} of the {how} ONNX model != PyTorch's {ref.shape}")
    diff = float(max(np.abs(out - ref).max(), np.abs(first - ref[:1]).max()))
    tol = atol + rtol * float(np.abs(ref).max())
    if not diff <= tol:  # `not <=` also catches NaN
        raise ExportError(f"ORT disagrees with PyTorch on the {how} ONNX model: max |diff| {diff:.3g} > "
                          f"tolerance {tol:.3g} (atol {atol:g} + rtol {rtol:g} * max |logit|)")
    agreement = float((out.argmax(1) == ref.argmax(1)).mean())
    return Exported(data, diff, agreement, reused)
