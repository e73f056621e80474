"""What a config asks of this machine, checked once before any compute: `run` and `plan` call `check` before Ray
starts, the driver calls `measure_devices` once it knows the cluster's GPUs, and trials never repeat either.

The config schema (`config`) is pure; these checks read the disk (data root, weight files) and ask optional packages
(torchvision/timm can build an arch at this image size, torch-pruning can prune it, a runtime is installed, ONNX
Runtime has its CUDA provider). Each failure is one ConfigError line naming the key, as schema errors are.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from .config import ARCHS, Config
from .errors import ConfigError
from .names import STRUCTURED
from .plan import combo_config

# the Python module each runtime needs; found with find_spec, so checking never imports them
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}


def check(cfg: Config) -> None:
    """Raise ConfigError (one line naming the key) if this machine cannot run `cfg`: the base config, then each swept
    value as the key set to it (named `sweep.<key>` and the value, as the schema names a bad swept value)."""
    _check_one(cfg)
    for key, values in cfg.sweep.items():
        for value in values:
            try:
                _check_one(combo_config(cfg, {key: value}))
            except ConfigError as exc:
                msg = str(exc)
                detail = msg.split(": ", 1)[1] if msg.startswith("config key ") and ": " in msg else msg
                raise ConfigError(f"config key 'sweep.{key}': value {value!r}: {detail}") from None


def _check_one(cfg: Config) -> None:
    for check_one in _CHECKS:
        problem = check_one(cfg)
        if problem:
            key, _, why = problem.partition(": ")
            raise ConfigError(f"config key {key!r}: {why}")


def _known_archs(cfg: Config) -> str | None:
    """Archs off the built-in fast path must be torchvision or timm classifiers."""
    for stage in ("teacher", "student"):
        arch = getattr(cfg, stage).arch
        if arch not in ARCHS:
            from .models import arch_problem  # imports torchvision

            problem = arch_problem(arch)
            if problem:
                return f"{stage}.arch: {problem}"
    return None


def _input_sizes(cfg: Config) -> str | None:
    """The built-ins take any image size; others may not (ViT: 224 px only)."""
    for stage in ("teacher", "student"):
        arch = getattr(cfg, stage).arch
        if arch not in ARCHS:
            from .models import input_problem

            problem = input_problem(arch, cfg.data.image_size)
            if problem:
                return f"data.image_size: {problem}"
    return None


def _files(cfg: Config) -> str | None:
    """The data root exists where nothing will download it; a weights path is a file."""
    root = Path(cfg.data.root).expanduser()
    if cfg.data.dataset in ("cifar10", "cifar100", "tiny-imagenet") and not cfg.data.download and not _is(root.is_dir):
        return f"data.root: {cfg.data.root!r} does not exist and data.download is false"
    if cfg.data.dataset == "imagefolder" and not _is(root.is_dir):
        return f"data.root: {cfg.data.root!r} does not exist (imagefolder reads train/ and val/ there)"
    for stage in ("teacher", "student"):
        w = getattr(cfg, stage).weights
        if w not in ("none", "imagenet") and not _is(Path(w).is_file):
            return f"{stage}.weights: {w!r} is neither 'none', 'imagenet' nor an existing file"
    return None


def _structured(cfg: Config) -> str | None:
    """torch-pruning can follow the student's channels (no attention, no channel shuffle)."""
    if STRUCTURED in cfg.prune.method and cfg.student.arch not in ARCHS:
        from .structured import arch_problem  # imports torch-pruning

        problem = arch_problem(cfg.student.arch)
        if problem:
            return f"prune.method: {problem}"
    return None


def _runtimes(cfg: Config) -> str | None:
    m = cfg.measure
    for rt in m.runtimes:
        if rt in RUNTIME_MODULES and not _module_installed(RUNTIME_MODULES[rt]):
            return (f"measure.runtimes: runtime {rt!r} is not installed (no module {RUNTIME_MODULES[rt]!r}); "
                    "install it or remove it from the list")
    # asked for by name, ONNX Runtime on cuda needs its CUDA provider (`auto` times it on the CPU instead)
    asked = m.devices if m.devices is not None else [m.latency_device]
    if "onnxruntime" in m.runtimes and "cuda" in asked:
        from .runtimes import ort_has_cuda

        if not ort_has_cuda():
            key = "measure.devices" if m.devices is not None else "measure.latency_device"
            return (f"{key}: onnxruntime would time models on cuda, but this onnxruntime has no "
                    "CUDAExecutionProvider: install onnxruntime-gpu in place of onnxruntime, or leave the device "
                    "to auto, or set measure.runtimes=[torch]")
    return None


# in the order the schema used to check them (one error is reported: the first)
def _trackers(cfg: Config) -> str | None:
    """A tracker asked for needs its package (an optional extra), found without importing it."""
    for key, wanted, module in (("tracking.mlflow.uri", cfg.tracking.mlflow.uri, "mlflow"),
                                ("tracking.wandb.project", cfg.tracking.wandb.project, "wandb")):
        if wanted is not None and not _module_installed(module):
            return f"{key}: {module} is not installed (pip install -e '.[{module}]')"
    return None


_CHECKS: tuple[Callable[[Config], str | None], ...] = (_known_archs, _runtimes, _files, _input_sizes, _structured,
                                                       _trackers)


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is(check: Callable[[], bool]) -> bool:
    """A path check that treats unusable paths (too long, bad bytes) as absent instead of raising."""
    try:
        return check()
    except (OSError, ValueError):
        return False


def measure_devices(cfg: Config, gpus_total: float) -> list[str] | None:
    """The devices latency is measured on (None: whatever the latency trial has, `auto`); a device or runtime the
    cluster cannot provide is a ConfigError. Called by the driver once Ray is up, before the experiment is written."""
    m = cfg.measure
    if m.latency_device == "cuda" and gpus_total == 0:
        raise ConfigError("config key 'measure.latency_device': 'cuda' but the Ray cluster has no GPU; use auto or cpu")
    if m.devices is not None:
        devices: list[str] | None = list(m.devices)
        if "cuda" in devices and gpus_total == 0:
            raise ConfigError("config key 'measure.devices': 'cuda' but the Ray cluster has no GPU; use [cpu] or leave "
                              "it unset")
    else:
        devices = None if m.latency_device == "auto" else [m.latency_device]
    may_cuda = "cuda" in (devices or ["cuda" if gpus_total > 0 else "cpu"])
    if "tensorrt" in m.runtimes and not may_cuda:
        raise ConfigError("config key 'measure.runtimes': tensorrt runs only on a CUDA GPU, but latency is measured on "
                          "cpu" + ("" if devices else " (the Ray cluster has no GPU)"))
    return devices


def latency_line(cfg: Config, devices: list[str] | None, gpus_total: float) -> str:
    """The run's start line on where each runtime times, e.g. 'latency: torch on cuda, onnxruntime on cpu (...)'.

    With `auto` it is what a trial on this machine's kind of device picks (`runtimes.auto_device`): on a cluster
    whose head has no GPU the trials may still time on theirs."""
    import torch

    from .runtimes import ORT_GPU_FIX, auto_device, ort_packages

    here = "cuda" if gpus_total > 0 and torch.cuda.is_available() else "cpu"
    where = {rt: devices or [auto_device(rt, here)] for rt in cfg.measure.runtimes}
    line = "latency: " + ", ".join(f"{rt} on {'/'.join(d)}" for rt, d in where.items())
    if devices is None:
        line += " (measure.latency_device: auto"
        if here == "cuda" and where.get("onnxruntime") == ["cpu"]:
            line += "; this onnxruntime has no CUDA provider: install onnxruntime-gpu to time it on the GPU"
        line += ")"
    if "onnxruntime" in cfg.measure.runtimes and len(ort_packages()) > 1:
        line += f"; both onnxruntime and onnxruntime-gpu are installed and shadow each other: {ORT_GPU_FIX}"
    return line
