"""What each variant does, Ray-free: train teacher / student / pruned, compute teacher logits, measure latency.

Every function works on an experiment folder through `Paths`, so a retried or resumed trial finds its own
checkpoint, and the Ray trainables stay thin wrappers.
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import zstandard
from torch import nn

from . import storage
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, stage_augment
from .data import ViewSpec, make_views
from .dataset import Dataset
from .engine import TrainSpec, recalibrate_bn, teacher_logits, train
from .errors import DivergedError, ExportError, one_line
from .measure import accuracy, count_macs, model_size, predict
from .models import build_model, set_bn_momentum
from .names import ONNX_RUNTIMES, STRUCTURED, runtime_label
from .paths import Paths, read_record
from .plan import Variant, teacher_of, variant_config
from .pruning import apply_pruning, make_permanent, sparsity_report

# images of the test split that every ONNX export is checked on against PyTorch (batch > 1: the batch axis is dynamic)
EXPORT_CHECK_IMAGES = 64


def arch_of(cfg: Config, v: Variant) -> str:
    vc = variant_config(cfg, v)
    return vc.teacher.arch if v.base().stage == "teacher" else vc.student.arch


def view_of(cfg: Config, v: Variant) -> ViewSpec:
    """The training views of a variant: the teacher's augmentation for the teacher, the student's for the rest."""
    vc = variant_config(cfg, v)
    return ViewSpec.from_config(vc.data, stage_augment(vc, "teacher" if v.base().stage == "teacher" else "student"))


def load_model(cfg: Config, v: Variant, paths: Paths, num_classes: int) -> nn.Module:
    """A trained fp32 variant's model from its saved weights (replaying its pruning history if structured)."""
    if v.prune_method != STRUCTURED:
        return build_model(arch_of(cfg, v), num_classes, str(paths.model(v)), None)
    from .structured import replay

    model = build_model(arch_of(cfg, v), num_classes, "none", None)
    replay(model, json.loads(storage.read_text(paths.structure(v))))
    model.load_state_dict(load_checkpoint(paths.model(v)))
    return model


def needs_onnx(cfg: Config) -> bool:
    """Whether the sweep's variants are exported to ONNX (an ONNX runtime is timed, or INT8 is built from it)."""
    return bool(set(ONNX_RUNTIMES) & set(cfg.measure.runtimes)) or "int8" in cfg.quantize.method


def runtime_rows(cfg: Config, v: Variant, devices: list[str] | None, here: str = "cpu") -> list[tuple[str, str]]:
    """(runtime, device) pairs a variant is timed under: torch runs fp32 models only, TensorRT only on CUDA.

    `devices` None (`measure.latency_device: auto`): each runtime on the best device a trial on `here` offers it
    (`runtimes.auto_device`: a GPU trial times ONNX Runtime on the CPU when its CUDA provider is missing)."""
    from .runtimes import auto_device

    out = []
    for dev in devices or [here]:
        for rt in cfg.measure.runtimes:
            d = dev if devices else auto_device(rt, here)
            if (rt == "torch" and v.precision != "fp32") or (rt == "tensorrt" and d != "cuda"):
                continue
            out.append((rt, d))
    return out


def write_record(path: str, record: dict) -> None:
    storage.write_bytes(path, json.dumps(record, indent=1).encode())


def _bump_runs(paths: Paths, v: Variant) -> int:
    """Count training starts of a variant (evidence that shared work ran once)."""
    f = storage.join(paths.artifact_dir(v), "train_runs")
    n = int(storage.read_text(f)) + 1 if storage.exists(f) else 1
    storage.write_bytes(f, str(n).encode())
    return n


def train_variant(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device,
                  plan_by_key: dict[str, Variant], on_epoch: Callable[[dict], None] | None = None,
                  extra: Callable[[], dict] | None = None) -> dict:
    """Train one variant (resuming from its checkpoint), save its final weights, and write/return its trained record.

    A diverging run (non-finite loss) is recorded as `status: failed` with the reason instead of raising.
    `extra()` adds fields known only to the caller (node, GPU ids, timestamps) to the record. Warnings raised
    while training (a corrupt checkpoint set aside, a layer pruned past 90 %) go into the record's `warnings`, so
    the driver can show them: a trial's own stderr is not where users look.
    """
    cfg = variant_config(cfg, v)  # what this variant's combination of the sweep sets
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if v.stage == "quantized":
                record = _quantize(cfg, v, paths, data, plan_by_key)
            else:
                record = _train(cfg, v, paths, data, device, plan_by_key, on_epoch)
        except DivergedError as exc:
            record = {"status": "failed", "error": f"diverged: {exc}", "arch": arch_of(cfg, v)}
    record |= {"config_hash": v.config_hash, "warnings": list(dict.fromkeys(
        str(w.message) for w in caught if "kdsweep" in w.filename))} | (extra() if extra else {})
    write_record(paths.record(v), record)
    return record


@dataclass
class Setup:
    """A variant ready to train: its model (built, or loaded and pruned), spec, views and soft-target source."""

    model: nn.Module
    spec: TrainSpec
    view: ViewSpec
    runs: int
    t0: float
    teacher: nn.Module | None = None
    logits: torch.Tensor | None = None
    logits_name: str | None = None


def setup_variant(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device,
                  plan_by_key: dict[str, Variant], logits: tuple[torch.Tensor, str] | None = None) -> Setup:
    """Build what `engine.train` needs for one variant (`cfg` is already the variant's config); `logits`: a cache
    another member of a fused group has loaded already."""
    t0 = time.perf_counter()
    view = view_of(cfg, v)
    runs = _bump_runs(paths, v)
    teacher_model, logits_t, logits_name = None, None, None
    # a model built from scratch is initialised from the variant's seed, so one config hash means one set of weights
    torch.manual_seed(v.seed)
    if v.stage == "teacher":
        c = cfg.teacher
        model = build_model(c.arch, data.num_classes, c.weights, c.bn_momentum, key="teacher")
        spec = TrainSpec(c.epochs, c.lr, c.weight_decay, c.batch_size, c.schedule, v.seed)
        return Setup(model, spec, view, runs, t0)
    c = cfg.student
    kd = dict(temperature=v.temperature or 1.0, alpha=v.alpha, label_smoothing=cfg.kd.label_smoothing)
    if v.alpha > 0:
        if cfg.kd.teacher_logits == "cached":
            if logits is None:
                lp = paths.teacher_logits(cfg, v.seed)
                logits = load_checkpoint(lp), storage.basename(lp)
            logits_t, logits_name = logits
        else:
            tv = teacher_of(v, plan_by_key)
            teacher_model = build_model(cfg.teacher.arch, data.num_classes, str(paths.model(tv)),
                                        cfg.teacher.bn_momentum, key="teacher")
            logits_name = "online"
            # building the teacher drew random initial weights before loading its own: re-seed, so the student
            # starts from the same weights as with cached logits (the mode is not part of the config hash)
            torch.manual_seed(v.seed)
    if v.stage == "pruned":
        model = load_model(cfg, plan_by_key[v.parent], paths, data.num_classes)
        set_bn_momentum(model, c.bn_momentum)
        if v.prune_method == STRUCTURED:
            _prune_structured(cfg, v, paths, model)  # traced on CPU, then moved
            model.to(device)
        else:
            model.to(device)
            apply_pruning(model, v.prune_amount, cfg.prune.scope)
        if cfg.prune.recalibrate_bn:
            # pruning shifts every activation; stale BN statistics alone can drop accuracy to chance
            recalibrate_bn(model, data, view, device, batch_size=c.batch_size, seed=v.seed)
        spec = TrainSpec(cfg.prune.recovery_epochs, cfg.prune.recovery_lr or c.lr, c.weight_decay, c.batch_size,
                         "constant", v.seed, epoch_offset=c.epochs, **kd)
    else:
        model = build_model(c.arch, data.num_classes, c.weights, c.bn_momentum, key="student")
        spec = TrainSpec(c.epochs, c.lr, c.weight_decay, c.batch_size, c.schedule, v.seed, **kd)
    return Setup(model, spec, view, runs, t0, teacher_model, logits_t, logits_name)


def _train(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device,
           plan_by_key: dict[str, Variant], on_epoch: Callable[[dict], None] | None) -> dict:
    s = setup_variant(cfg, v, paths, data, device, plan_by_key)
    history = train(s.model, data, s.view, s.spec, device, teacher=s.teacher, teacher_logits=s.logits,
                    checkpoint=paths.checkpoint(v), on_epoch=on_epoch, tag={"run": s.runs})
    return finish_variant(cfg, v, paths, data, device, s, history)


def finish_variant(cfg: Config, v: Variant, paths: Paths, data: Dataset, device: torch.device, s: Setup,
            history: list[dict], fused_group: str | None = None) -> dict:
    """Evaluate, save, size and export a trained variant: its trained record."""
    model = s.model
    make_permanent(model)
    test_acc = accuracy(model, data.test_x, data.test_y, s.view, device)  # where it trained, before the CPU
    model.cpu()
    save_checkpoint(model.state_dict(), paths.model(v))
    size = model_size(model)
    record = {
        "status": "ok", "error": None,
        "test_acc": test_acc, "test_images": len(data.test_y),
        "params": size.params, "nonzero_params": size.nonzero_params, "sparsity": size.sparsity,
        "size_mb": size.size_mb, "size_nonzero_mb": size.size_nonzero_mb, "size_compressed_mb": size.size_compressed_mb,
        "macs": count_macs(model, cfg.data.image_size),
        "train_seconds": time.perf_counter() - s.t0, "epochs_run": len(history), "train_runs": s.runs,
        "teacher_forward_images": sum(r["teacher_forward_images"] for r in history),
        "teacher_logits": s.logits_name, "arch": arch_of(cfg, v),
        "conv_sparsity": sparsity_report(model).sparsity, "fused_group": fused_group,
        "history": history,
    }
    if needs_onnx(cfg):
        record |= export_variant(cfg, v, paths, model, data, s.view)
    return record


def _prune_structured(cfg: Config, v: Variant, paths: Paths, model: nn.Module) -> None:
    """Channel-prune `model` (the parent's weights, on CPU); a retried trial replays the history it saved."""
    from .structured import replay, structured_prune

    where = paths.structure(v)
    if storage.exists(where):
        replay(model, json.loads(storage.read_text(where)))
        return
    history = structured_prune(model, v.prune_amount, cfg.data.image_size, cfg.prune.round_to, cfg.prune.scope,
                               arch=arch_of(cfg, v))
    storage.write_bytes(where, json.dumps(history).encode())


def export_variant(cfg: Config, v: Variant, paths: Paths, model: nn.Module, data: Dataset, view: ViewSpec) -> dict:
    """Export a trained fp32 model to ONNX next to its weights, checked against PyTorch: its record fields, or the
    error."""
    from .export import export_onnx  # imports onnx: only where a model is exported

    check = make_views(data.test_x[:EXPORT_CHECK_IMAGES], view)
    try:
        ex = export_onnx(model, check, shared=storage.join(paths.root, "artifacts", "onnx-templates"))
    except ExportError as exc:
        return {"export_error": str(exc)}
    storage.write_bytes(paths.onnx(v), ex.onnx)
    return {"onnx_file": _relative(paths, paths.onnx(v)), "size_bytes": len(ex.onnx),
            "onnx_max_abs_diff": ex.max_abs_diff, "top1_agreement": ex.agreement, "export_error": None}


def _relative(paths: Paths, location: str) -> str:
    return location[len(paths.root):].lstrip("/")


def _quantize(cfg: Config, v: Variant, paths: Paths, data: Dataset, plan_by_key: dict[str, Variant]) -> dict:
    """INT8 of a trained fp32 variant with ONNX Runtime static quantization, evaluated in ONNX Runtime."""
    from . import quantize
    from .runtimes import ort_session

    t0 = time.perf_counter()
    runs = _bump_runs(paths, v)
    parent = plan_by_key[v.parent]
    prec = read_record(paths.record(parent)) or {}
    view = ViewSpec.from_config(cfg.data, [])  # calibration and evaluation views are not augmented
    model = load_model(cfg, parent, paths, data.num_classes)
    if not storage.exists(paths.onnx(parent)):  # exported by its training task, unless that predates export
        export = export_variant(cfg, parent, paths, model, data, view)
        if export.get("export_error"):
            raise RuntimeError(f"parent {parent.key}: {export['export_error']}")
    batch = (cfg.teacher if parent.stage == "teacher" else cfg.student).batch_size
    calib = quantize.calibration_batches(data, view, v.seed, cfg.quantize.calib_batches, batch)
    settings = quantize.int8_settings()
    int8 = quantize.quantize_int8(storage.read_bytes(paths.onnx(parent)), calib, settings)
    storage.write_bytes(paths.onnx(v), int8)
    acc, preds = quantize.evaluate(ort_session(int8, "cpu", torch.get_num_threads()), data.test_x, data.test_y, view)
    ref = predict(model, data.test_x, view, torch.device("cpu")).argmax(1).numpy()
    params, nonzero = prec.get("params"), prec.get("nonzero_params")
    return {
        "status": "ok", "error": None, "test_acc": acc, "test_images": len(data.test_y),
        "top1_agreement": float((preds == ref).mean()),
        # one byte per weight: the reference's params·4 figure at int8
        "params": params, "nonzero_params": nonzero, "sparsity": prec.get("sparsity"),
        "size_mb": params / 1e6 if params else None, "size_nonzero_mb": nonzero / 1e6 if nonzero else None,
        "size_compressed_mb": len(zstandard.ZstdCompressor(level=10).compress(int8)) / 1e6,
        "size_bytes": len(int8), "macs": prec.get("macs") or count_macs(model, cfg.data.image_size),
        "onnx_file": _relative(paths, paths.onnx(v)), "quantize": settings,
        "train_seconds": time.perf_counter() - t0, "epochs_run": 0, "train_runs": runs, "teacher_forward_images": 0,
        "arch": arch_of(cfg, v), "conv_sparsity": prec.get("conv_sparsity"),
    }


def ensure_teacher_logits(cfg: Config, seed: int, paths: Paths, data: Dataset, device: torch.device,
                          teacher: Variant, student: Variant) -> str:
    """Compute (once) the teacher's logits for every view `student` (and any student sharing its views and teacher)
    and their recovery epochs will see."""
    cfg = variant_config(cfg, student)
    out = paths.teacher_logits(cfg, seed)
    if storage.exists(out):
        return out
    model = build_model(cfg.teacher.arch, data.num_classes, str(paths.model(teacher)), cfg.teacher.bn_momentum,
                        key="teacher")
    epochs = cfg.student.epochs + cfg.prune.recovery_epochs
    save_checkpoint(teacher_logits(model, data, view_of(cfg, student), seed, epochs, device), out)
    return out


def measure_latencies(cfg: Config, variants: list[Variant], paths: Paths, data: Dataset, devices: list[str] | None,
                      threads: int, here: str = "cpu") -> dict[str, list[dict]]:
    """Batch-1 latency of every variant under every runtime, all interleaved per iteration, one device at a time.

    `devices` None (`auto`): each runtime on the best device of a trial on `here` (`runtime_rows`).

    Returns (and writes to each variant's latency.json) one entry per (runtime, device): the timing, or the error
    that kept that runtime from running the variant (the other runtimes and variants go on).
    """
    from .runtimes import device_label, ort_runner, ort_session, time_interleaved, torch_runner

    out: dict[str, list[dict]] = {v.key: [] for v in variants}
    pairs = {v.key: runtime_rows(cfg, v, devices, here) for v in variants}
    for dev in dict.fromkeys(d for rows in pairs.values() for _, d in rows):
        device = torch.device("cuda", 0) if dev == "cuda" else torch.device("cpu")
        runners, meta = {}, {}
        for v in variants:
            model, extra = None, {}
            vc = variant_config(cfg, v)  # its image size (data.image_size may be swept)
            for rt in [rt for rt, d in pairs[v.key] if d == dev]:
                label = runtime_label(rt, dev)
                entry = {"runtime": label, "latency_device": device_label(device), "precision": v.precision}
                try:
                    if rt == "torch":
                        model = model or load_model(cfg, v, paths, data.num_classes)
                        runner = torch_runner(model.to(device), vc.data.image_size, device, v.precision)
                    else:
                        onnx, exported = _onnx_bytes(vc, v, paths, data, view_of(vc, v))
                        extra |= exported
                        runner = ort_runner(ort_session(onnx, dev, threads, tensorrt=rt == "tensorrt"),
                                            vc.data.image_size, v.precision)
                except Exception as exc:  # noqa: BLE001 - one runtime failing on one model must not stop the rest
                    out[v.key].append(entry | extra | {"error": f"{label}: {one_line(exc)}"})
                    continue
                runners[f"{v.key}|{label}"] = runner
                meta[f"{v.key}|{label}"] = (v.key, entry | extra)
        stats = time_interleaved(runners, cfg.measure.warmup, cfg.measure.iters) if runners else {}
        for name, st in stats.items():
            key, entry = meta[name]
            out[key].append(entry | {"latency_ms": st.median_ms, "latency_p90_ms": st.p90_ms,
                                     "latency_ci95_ms": st.ci95_ms, "latency_iters": st.iters, "error": None})
    for v in variants:
        storage.write_bytes(paths.latency(v), json.dumps(out[v.key]).encode())
    return out


def _onnx_bytes(cfg: Config, v: Variant, paths: Paths, data: Dataset, view: ViewSpec) -> tuple[bytes, dict]:
    """A variant's ONNX file, and the export's fields for its rows when it is exported now (an older experiment)."""
    if storage.exists(paths.onnx(v)):
        return storage.read_bytes(paths.onnx(v)), {}
    rec = read_record(paths.record(v)) or {}
    if rec.get("export_error") or v.precision != "fp32":
        raise RuntimeError(rec.get("export_error") or "no ONNX file")
    extra = export_variant(cfg, v, paths, load_model(cfg, v, paths, data.num_classes), data, view)
    if extra.get("export_error"):
        raise RuntimeError(extra["export_error"])
    return storage.read_bytes(paths.onnx(v)), extra
