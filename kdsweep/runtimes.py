"""Inference runtimes for batch-1 latency (PyTorch, ONNX Runtime on CPU/CUDA, TensorRT through ORT) and an
interleaved timer that measures several of them under the same conditions."""
from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .names import DEVICES, RUNTIMES

PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # int8: quantized ONNX models, which only ORT runs
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def runtime_problem(runtime: str, device: str) -> str | None:
    """Why `runtime` cannot run on `device` ('cpu'|'cuda') here (not installed, no GPU, provider missing), else None."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}"
    if device not in DEVICES:
        return f"unknown device {device!r}; known: {', '.join(DEVICES)}"
    if runtime == "tensorrt" and device != "cuda":
        return "tensorrt runs on CUDA GPUs only"
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is false)"
    if runtime == "torch":
        return None
    return _ort_problem(runtime == "tensorrt", device)


def ort_has_cuda() -> bool:
    """Whether this onnxruntime build has its CUDA execution provider (pip's default `onnxruntime` has not)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# pip's `onnxruntime` and `onnxruntime-gpu` install into one `onnxruntime` folder: with both present the CUDA provider
# goes missing, and uninstalling one breaks the other, so the GPU build is reinstalled after removing the CPU one
ORT_GPU_FIX = "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu"


def ort_packages() -> list[str]:
    """The ONNX Runtime distributions installed (`onnxruntime`, `onnxruntime-gpu`); more than one shadow each other."""
    from importlib import metadata

    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def auto_device(runtime: str, here: str) -> str:
    """`measure.latency_device: auto`: the device ('cpu'|'cuda') a runtime times on in a trial whose device is
    `here`: the trial's device, except ONNX Runtime without its CUDA provider, which times on the CPU."""
    if runtime == "onnxruntime" and here == "cuda" and not ort_has_cuda():
        return "cpu"
    return here


@functools.cache
def _ort_problem(tensorrt: bool, device: str) -> str | None:
    """Try the execution provider on a one-node model: ORT lists providers whose libraries may still be missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if tensorrt:
        try:
            import tensorrt  # ORT's TensorRT provider needs the libraries this package brings
        except ImportError:
            return "the tensorrt Python package is not installed"
    want = _PROVIDER["tensorrt" if tensorrt else device]
    if want not in ort.get_available_providers():
        return f"this onnxruntime build has no {want} (it has {', '.join(ort.get_available_providers())})"
    try:
        ort_session(_identity_model(), device, threads=1, tensorrt=tensorrt)
    except RuntimeError as exc:
        return str(exc)
    return None


def _identity_model() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                             ir_version=onnx.IR_VERSION_2023_5_5).SerializeToString()


def device_label(device: torch.device) -> str:
    """`cuda:<GPU name>` or `cpu`: where a latency was measured, as result rows name it."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"


def ort_session(onnx: bytes, device: str, threads: int, tensorrt: bool = False):
    """An ORT session on the requested execution provider; RuntimeError if ORT would fall back to another."""
    import onnxruntime as ort

    want = _PROVIDER["tensorrt" if tensorrt else device]
    # CPU last in the list: ORT needs it for the nodes a GPU provider does not take
    providers = list(dict.fromkeys([want, _PROVIDER["cuda"] if tensorrt else want, _PROVIDER["cpu"]]))
    options = ort.SessionOptions()
    # same thread count as torch is given; inter-op threads only help graphs with parallel branches
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's placement warnings would drown the sweep's one-line progress display
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "provider not in available providers": the check below says it in one line
        session = ort.InferenceSession(onnx, options, providers=providers)
    got = session.get_providers()[0]
    if got != want:
        raise RuntimeError(f"onnxruntime: {want} requested but ORT runs {got} "
                           f"(available providers: {', '.join(ort.get_available_providers())})")
    session.disable_fallback()  # a run error must not silently switch the session to the CPU provider
    return session


def ort_predict(session, x: np.ndarray) -> np.ndarray:
    """The session's first output for the whole batch `x` (float32 NCHW) in one run."""
    inp = session.get_inputs()[0]
    return session.run([session.get_outputs()[0].name], {inp.name: np.ascontiguousarray(x, _ort_dtype(inp))})[0]


def _ort_dtype(inp) -> type:
    if inp.type not in _ORT_DTYPES:
        raise ValueError(f"ONNX input {inp.name!r} has type {inp.type}; expected one of {', '.join(_ORT_DTYPES)}")
    return _ORT_DTYPES[inp.type]


@dataclass(frozen=True)
class Runner:
    """One runtime ready to time batch-1 forwards of one model."""

    label: str  # runtime label: torch, onnxruntime-cpu, onnxruntime-cuda, tensorrt
    device: str  # 'cpu' or 'cuda:<GPU name>'
    precision: str  # fp32 | bf16 | fp16
    timed: Callable[[], float]  # runs one batch-1 forward and returns its time in ms


def torch_runner(model: nn.Module, image_size: int, device: torch.device, precision: str = "fp32",
                 channels: int = 3) -> Runner:
    """A PyTorch runner on `device` (the model is moved there): eval mode, inference_mode, autocast for bf16/fp16;
    CUDA events on GPU, perf_counter on CPU."""
    _check_precision(precision)
    if precision == "int8":
        raise ValueError("precision: 'int8' models run in ONNX Runtime, not as torch modules")
    model.eval().to(device)
    x = torch.randn(1, channels, image_size, image_size, device=device)
    autocast = functools.partial(torch.autocast, device.type, dtype=_TORCH_DTYPES.get(precision),
                                 enabled=precision != "fp32")
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed() -> float:
            with torch.inference_mode(), autocast():
                start.record()
                model(x)
                end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed() -> float:
            with torch.inference_mode(), autocast():
                t0 = time.perf_counter()
                model(x)
                return (time.perf_counter() - t0) * 1e3
    return Runner("torch", device_label(device), precision, timed)


def ort_runner(session, image_size: int, precision: str = "fp32") -> Runner:
    """An ORT runner on a fixed batch-1 input; on a GPU the input and output stay bound on the device (IOBinding),
    so host-device copies are not timed. `precision` labels what the session was built for."""
    import onnxruntime as ort

    _check_precision(precision)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    x = np.random.default_rng(0).standard_normal((1, channels, image_size, image_size)).astype(_ort_dtype(inp))
    provider = session.get_providers()[0]
    if provider == _PROVIDER["cpu"]:
        def timed() -> float:
            t0 = time.perf_counter()
            session.run([out.name], {inp.name: x})
            return (time.perf_counter() - t0) * 1e3
        return Runner("onnxruntime-cpu", "cpu", precision, timed)
    device_id = int(session.get_provider_options()[provider].get("device_id", 0))
    binding = session.io_binding()
    binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", device_id))
    binding.bind_output(out.name, "cuda", device_id)
    session.run_with_iobinding(binding)  # allocates the output on the device once; later runs write into it
    binding.bind_ortvalue_output(out.name, binding.get_outputs()[0])

    def timed() -> float:
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)  # returns after ORT synchronises the device
        return (time.perf_counter() - t0) * 1e3
    label = "tensorrt" if provider == _PROVIDER["tensorrt"] else "onnxruntime-cuda"
    return Runner(label, device_label(torch.device("cuda", device_id)), precision, timed)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one runner's timed iterations, in ms."""

    median_ms: float
    p90_ms: float
    ci95_ms: float  # half-width of the distribution-free 95 % confidence interval of the median
    iters: int


def latency_stats(times_ms: list[float]) -> LatencyStats:
    """Median, p90 (linear interpolation) and the median's 95 % CI half-width from order statistics.

    The CI's ranks are n/2 - 1.96*sqrt(n)/2 (floor) and 1 + n/2 + 1.96*sqrt(n)/2 (ceil), 1-based and clamped to
    1..n (the binomial(n, 1/2) bounds); latency distributions are skewed, so the larger side is reported.
    """
    if not times_ms:
        raise ValueError("latency_stats: no timings")
    s = sorted(times_ms)
    n = len(s)
    median = statistics.median(s)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(1, math.floor(n / 2 - half))
    hi = min(n, math.ceil(1 + n / 2 + half))
    ci = max(median - s[lo - 1], s[hi - 1] - median)
    return LatencyStats(median, float(np.percentile(s, 90)), ci, n)


def time_interleaved(runners: dict[str, Runner], warmup: int, iters: int, seed: int = 0) -> dict[str, LatencyStats]:
    """Time every runner once per iteration, in a fresh random order each time, so drift and neighbours hit all equally.

    Warm-up iterations are interleaved the same way and discarded. A fixed cyclic order (even with a rotating start)
    keeps each model's predecessor fixed: measured on the smoke sweep, the MobileNetV3-Small that always ran right
    after the ResNet-18 teacher (whose weights had just evicted its own from the cache) read 8-11 % slower than its
    37 identical siblings. The order is drawn from `seed`, so a rerun times in the same order.
    """
    if not runners:
        raise ValueError("time_interleaved: no runners")
    if warmup < 0 or iters < 1:
        raise ValueError(f"time_interleaved: need warmup >= 0 and iters >= 1, got {warmup} and {iters}")
    names = list(runners)
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + iters):
        for j in rng.permutation(len(names)):
            t = runners[names[j]].timed()
            if i >= warmup:
                times[names[j]].append(t)
    return {name: latency_stats(ts) for name, ts in times.items()}
