"""The config schema (the contract in DESIGN.md), YAML loading and `--set` overrides.

Pure: validating a config reads no file but the YAML itself and imports no optional package, so every trial, every
sweep combination and `kdsweep status` can re-validate one cheaply. What depends on the machine (data and weight files,
installed runtimes, which archs torchvision/timm and torch-pruning can build) is `preflight`, run once by `run` and
`plan` before Ray starts; what determines a variant's identity (stage hashes) is `hashes`.
"""
from __future__ import annotations

import copy
import difflib
import functools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import axes, storage
from .errors import ConfigError, one_line
from .names import DATASETS, DEVICES, PRUNE_METHODS, QUANTIZE_METHODS, RUNTIMES, STAGES

ARCHS = ("resnet18", "mobilenet_v3_small")  # the built-in fast path; any torchvision/timm name is checked by preflight
Augment = Literal["flip", "crop", "randaugment", "mixup", "cutmix"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _as_axis(value: Any) -> Any:
    """Grid axes accept a scalar (a one-value axis) or a list."""
    return value if isinstance(value, (list, tuple)) else [value]


def _check_axis(values: list, key: str) -> list:
    if not values:
        raise ValueError(f"{key} is an empty grid axis; give at least one value")
    if len(set(values)) != len(values):
        raise ValueError(f"{key} has duplicate values {values}")
    return values


class RandAugmentConfig(_Strict):
    num_ops: int = Field(2, ge=1, le=14, description="ops applied to each image, drawn per sample")
    magnitude: int = Field(9, ge=0, le=30, description="torchvision's scale: 0-30 (31 bins)")


class DataConfig(_Strict):
    dataset: Literal[DATASETS] = "cifar10"
    root: str = "./data"
    download: bool = True
    verify: bool = True
    image_size: int = Field(224, ge=8)
    normalize: Literal["imagenet", "none"] = "imagenet"
    augment: list[Augment] = ["flip"]
    randaugment: RandAugmentConfig = RandAugmentConfig()
    mixup_alpha: float = Field(0.2, gt=0, description="Beta(a, a) of mixup's lambda, when augment has mixup")
    cutmix_alpha: float = Field(1.0, gt=0, description="Beta(a, a) of cutmix's box area, when augment has cutmix")
    stored_size: int = Field(64, ge=8, description="imagefolder: images are resized once to this square size")
    train_limit: int | None = Field(None, ge=2,
                                    description="use only the first N training images (synthetic: N images)")
    test_limit: int | None = Field(None, ge=1, description="use only the first N test images (synthetic: N images)")
    split_seed: int = 0

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_list(cls, v: Any) -> Any:
        return [] if v is None else _as_axis(v)

    @field_validator("augment")
    @classmethod
    def _augment_unique(cls, v: list[str]) -> list[str]:
        return _check_augment(v)


def _check_augment(v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        raise ValueError(f"augment lists {v} twice")
    if v is not None and {"mixup", "cutmix"} <= set(v):
        raise ValueError("augment: choose mixup or cutmix, not both (each replaces the image pair differently)")
    return v


class TrainConfig(_Strict):
    arch: str
    weights: str = "none"
    epochs: int = Field(ge=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(1.0e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    bn_momentum: float = Field(0.1, gt=0, le=1, description="BatchNorm momentum; torchvision's MobileNetV3 0.01 is "
                               "too slow for short runs")
    augment: list[Augment] | None = Field(None, description="this stage's augmentation; default: data.augment")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_list(cls, v: Any) -> Any:
        return v if v is None else _as_axis(v)

    @field_validator("augment")
    @classmethod
    def _augment_unique(cls, v: list[str] | None) -> list[str] | None:
        return _check_augment(v)


class KDConfig(_Strict):
    temperature: list[float] = [4.0]
    alpha: list[float] = [0.9]
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    teacher_logits: Literal["cached", "online"] = "cached"

    _axes = field_validator("temperature", "alpha", mode="before")(classmethod(lambda cls, v: _as_axis(v)))

    @field_validator("temperature")
    @classmethod
    def _t_positive(cls, v: list[float]) -> list[float]:
        _check_axis(v, "temperature")
        if any(t <= 0 for t in v):
            raise ValueError(f"every temperature must be > 0, got {v}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: list[float]) -> list[float]:
        _check_axis(v, "alpha")
        if any(not 0 <= a <= 1 for a in v):
            raise ValueError(f"every alpha must be in [0, 1], got {v}")
        return v


class PruneConfig(_Strict):
    amount: list[float] = [0.3]
    method: list[Literal[PRUNE_METHODS]] = [PRUNE_METHODS[0]]
    scope: Literal["layer", "global"] = "layer"
    round_to: int = Field(8, ge=1, description="structured pruning keeps channel counts multiples of this")
    recovery_epochs: int = Field(2, ge=0)
    recovery_lr: float | None = Field(None, gt=0, description="lr of the recovery epochs; default: student.lr")
    recalibrate_bn: bool = True

    _axes = field_validator("amount", "method", mode="before")(classmethod(lambda cls, v: _as_axis(v)))

    @field_validator("method")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return _check_axis(v, "method")

    @field_validator("amount")
    @classmethod
    def _amount_range(cls, v: list[float]) -> list[float]:
        _check_axis(v, "amount")
        if any(not 0 <= a < 1 for a in v):
            raise ValueError(f"every amount must be in [0, 1), got {v}")
        return v


class QuantizeConfig(_Strict):
    method: list[Literal[QUANTIZE_METHODS]] = ["none"]
    stages: list[Literal[STAGES[:-1]]] = ["student", "pruned"]  # any fp32 stage (not quantized itself)
    calib_batches: int = Field(8, ge=1, description="batches of training views that calibrate activation ranges")

    _axes = field_validator("method", "stages", mode="before")(classmethod(lambda cls, v: _as_axis(v)))

    @field_validator("method")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return _check_axis(v, "method")


class MeasureConfig(_Strict):
    latency_device: Literal["auto", "cpu", "cuda"] = "auto"
    warmup: int = Field(20, ge=0)
    iters: int = Field(200, ge=1)
    runtimes: list[Literal[RUNTIMES]] = ["torch", "onnxruntime"]
    devices: list[Literal[DEVICES]] | None = Field(None, description="default: latency_device")

    _axes = field_validator("runtimes", "devices", mode="before")(
        classmethod(lambda cls, v: v if v is None else _as_axis(v)))

    @field_validator("runtimes")
    @classmethod
    def _runtimes(cls, v: list[str]) -> list[str]:
        return _check_axis(v, "runtimes")

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else _check_axis(v, "devices")

    @model_validator(mode="after")
    def _one_device_key(self) -> MeasureConfig:
        if self.devices is not None and self.latency_device != "auto":
            raise ValueError("measure.devices: give either devices or latency_device, not both")
        return self


class ResourcesConfig(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0.25, ge=0)
    fuse: Literal["auto", "off"] | int = Field(
        "auto", description="train the KD students of one teacher (and same-shaped recoveries) as one fused model: "
        "auto (on GPUs, up to 9 members per task, spread over the cluster's GPUs; off on CPU), off, or the most "
        "members per fused task")
    gpus_per_fused: float = Field(1.0, ge=0, description="GPUs a fused task asks Ray for (a whole one by default)")

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_word(cls, v: Any) -> Any:
        if v is False:  # YAML 1.1 reads a bare `off` as false: take it as meant
            return "off"
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v in ("auto", "off") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"fuse must be auto, off or a positive number of members, got {v!r}")


class MLflowConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI (`http://host:5000`, `file:./mlruns`, ...): one "
                            "run per variant, nested under one run per sweep, logged by the driver; null: off")
    experiment: str | None = Field(None, description="MLflow experiment name (default: the sweep's name)")
    artifacts: bool = Field(True, description="also log each variant's ONNX file and result rows as artifacts")


class WandbConfig(_Strict):
    project: str | None = Field(None, description="Weights & Biases project: one run per variant, grouped by sweep; "
                                "null: off")
    mode: Literal["offline", "online"] = Field("offline", description="`offline` keeps the runs on this machine "
                                               "(`wandb sync` uploads them later); `online` sends them")
    entity: str | None = Field(None, description="W&B entity (team or user); default: yours")


class TrackingConfig(_Strict):
    mlflow: MLflowConfig = MLflowConfig()
    wandb: WandbConfig = WandbConfig()


class Config(_Strict):
    name: str = Field("kdsweep", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seeds: list[int] = [0]
    data: DataConfig = DataConfig()
    teacher: TrainConfig = TrainConfig(arch="resnet18", weights="imagenet", epochs=3, lr=3e-4)
    student: TrainConfig = TrainConfig(arch="mobilenet_v3_small", epochs=8, lr=3e-4)
    kd: KDConfig = KDConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    measure: MeasureConfig = MeasureConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    # dotted key -> values, the axes that multiply configs (kdsweep.axes); validated and normalised by build_config
    sweep: dict[str, list[Any]] = {}
    max_variants: int = Field(2000, ge=1, description="a plan with more variants than this is refused")

    _axes = field_validator("seeds", mode="before")(classmethod(lambda cls, v: _as_axis(v)))

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return _check_axis(v, "seeds")

    @model_validator(mode="after")
    def _int8_runs_in_ort(self) -> Config:
        if "int8" in self.quantize.method and "onnxruntime" not in self.measure.runtimes:
            raise ValueError("quantize.method: int8 models run in ONNX Runtime; add onnxruntime to measure.runtimes")
        return self


def _model_fields(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names valid at a dotted location, for 'did you mean' hints."""
    for part in path:
        ann = model.model_fields.get(part)
        if ann is None or not (isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)):
            return []
        model = ann.annotation
    return list(model.model_fields)


def _format_error(err: ValidationError) -> str:
    """First pydantic error as one line: `config key 'kd.alpha': ...`."""
    e = err.errors()[0]
    loc = tuple(str(p) for p in e["loc"] if not isinstance(p, int))
    key = ".".join(loc) or "<root>"
    if e["type"] == "extra_forbidden":
        known = _model_fields(Config, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = (f" (did you mean {'.'.join(loc[:-1] + (close[0],))!r}?)" if close
                else f" (known keys: {', '.join(known)})")
        return f"config key {key!r}: unknown key{hint}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        # cross-field checks name their key themselves ("quantize.method: ..."); field checks already quote the value
        head, _, rest = msg.partition(": ")
        if rest and head in leaf_keys():
            return f"config key {head!r}: {rest}"
        return f"config key {key!r}: {msg}"
    return f"config key {key!r}: {msg} (got {e.get('input')!r})"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b=value`, the value as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. kd.alpha=[0.9]")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Return a copy of `raw` with every `a.b=value` override applied."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a config file (a local path or a storage URI such as s3://...) with yaml.safe_load; problems become
    one-line ConfigErrors."""
    p = os.fspath(path)
    try:
        text = storage.read_text(p)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p!r}: cannot read ({one_line(exc)})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"config file {p!r}: not valid YAML{at}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p!r}: expected a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("name", Path(storage.basename(p)).stem)
    return raw


def _merge(base: dict, top: dict) -> dict:
    """Deep-merge `top` over `base` so a partial section keeps the other defaults of that section."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@functools.cache
def leaf_keys() -> frozenset[str]:
    """Every dotted key of the config that a sweep may name (fields of sections, top-level scalars)."""
    return frozenset(_keys(Config))


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= _keys(sub, f"{prefix}{name}.")
            if prefix:
                out.add(prefix + name)  # a nested section (data.randaugment) can be swept as a whole
        else:
            out.add(prefix + name)
    return out


def _flatten(sweep: Any, prefix: str = "") -> Any:
    """`sweep:` as dotted keys; `--set sweep.student.arch=[a,b]` arrives nested ({'student': {'arch': [...]}})."""
    if not isinstance(sweep, dict):
        return sweep
    out: dict = {}
    for k, v in sweep.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def _validate(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def build_config(raw: dict, overrides: list[str] | None = None) -> Config:
    """Validate plain data (plus overrides) into a Config, or raise ConfigError naming the key.

    The sweep section is checked value by value (axes.validate); keys that are grid axes already take the swept list,
    one-value keys become plain settings, and `Config.sweep` keeps only the keys that multiply configs.
    """
    data = _merge(Config().model_dump(mode="json"), apply_overrides(raw, overrides))
    sweep = _flatten(data.pop("sweep", None) or {})
    _validate(data)  # the base config first: its errors name plain keys
    swept = axes.validate(data, sweep, leaf_keys(), _validate)
    lists, multi = axes.split(swept)
    for key, values in list(lists.items()) + [(k, v[0]) for k, v in multi.items() if len(v) == 1]:
        data = axes.set_key(data, key, values)
    return _validate(data | {"sweep": {k: v for k, v in multi.items() if len(v) > 1}})


def stage_augment(cfg: Config, stage: str) -> list[str]:
    """The augmentation a stage trains with: `teacher.augment` / `student.augment`, else `data.augment`.

    Pruned variants recover with the student's views (they continue its view stream)."""
    own = cfg.teacher.augment if stage == "teacher" else cfg.student.augment
    return list(cfg.data.augment if own is None else own)


def load_config(source: str | Path | dict | Config, overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML path, a dict or a Config, applying `--set` style overrides."""
    if isinstance(source, Config):
        return build_config(source.model_dump(mode="json"), overrides) if overrides else source
    raw = dict(source) if isinstance(source, dict) else read_yaml(source)
    return build_config(raw, overrides)
