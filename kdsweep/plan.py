"""Config -> stage DAG of content-addressed variants: each piece of work appears once."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

from .config import Config, config_hash, pruned_settings, quantized_settings, student_settings, teacher_settings

STAGES = ("teacher", "baseline", "student", "pruned", "quantized")
STRUCTURED = "l1_structured"


def _g(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Variant:
    """One trained model of the sweep: its grid coordinates, identity and parent."""

    stage: str
    seed: int
    temperature: float | None = None
    alpha: float | None = None
    prune_amount: float | None = None
    config_hash: str = ""
    parent: str | None = None  # key of the variant whose checkpoint this one starts from
    prune_method: str | None = None  # pruned variants and their quantized children
    precision: str = "fp32"  # quantized variants: "int8"

    @property
    def key(self) -> str:
        """File-safe unique id within an experiment."""
        if self.stage == "quantized":
            return f"{self.precision}-{self.parent}"
        parts = [self.stage]
        if self.stage in ("student", "pruned"):
            parts += [f"T{_g(self.temperature)}", f"a{_g(self.alpha)}"]
        if self.stage == "pruned":
            parts.append(f"p{_g(self.prune_amount)}")
            if self.prune_method == STRUCTURED:  # unstructured keeps the key it had before methods became an axis
                parts.append("structured")
        return "-".join(parts + [f"s{self.seed}"])

    @property
    def label(self) -> str:
        """Human label, e.g. `student-kd T=4 a=0.9 p=0.3` (seed is its own column)."""
        if self.stage == "quantized":
            return f"{self.base().label} {self.precision}"
        if self.stage == "teacher":
            return "teacher"
        if self.stage == "baseline":
            return "student-ce (no KD)"
        label = f"student-kd T={_g(self.temperature)} a={_g(self.alpha)}"
        if self.stage == "pruned":
            label += f" p={_g(self.prune_amount)}" + (" structured" if self.prune_method == STRUCTURED else "")
        return label

    def base(self) -> "Variant":
        """The fp32 variant a quantized one was made from (itself otherwise), rebuilt from its coordinates."""
        if self.stage != "quantized":
            return self
        stage = self.parent.split("-", 1)[0]
        return Variant(stage, self.seed, self.temperature, self.alpha, self.prune_amount,
                       prune_method=self.prune_method)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Variant":
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """All variants of a sweep, by stage, in dependency order."""

    variants: tuple[Variant, ...]

    def stage(self, name: str) -> list[Variant]:
        return [v for v in self.variants if v.stage == name]

    def by_key(self) -> dict[str, Variant]:
        return {v.key: v for v in self.variants}

    def __iter__(self) -> Iterator[Variant]:
        return iter(self.variants)

    def __len__(self) -> int:
        return len(self.variants)


def make_plan(cfg: Config) -> Plan:
    """1 teacher and 1 no-KD baseline per seed, 1 KD student per (T, alpha, seed), 1 pruned per (T, alpha, p, seed)."""
    out: list[Variant] = []
    for seed in cfg.seeds:
        teacher = Variant("teacher", seed, config_hash=config_hash(teacher_settings(cfg, seed)))
        out.append(teacher)
        out.append(Variant("baseline", seed, alpha=0.0, config_hash=config_hash(student_settings(cfg, seed, None, 0.0))))
    for seed in cfg.seeds:
        for t in cfg.kd.temperature:
            for a in cfg.kd.alpha:
                if a == 0:
                    continue  # alpha 0 is the baseline, which exists once per seed
                out.append(Variant("student", seed, t, a, config_hash=config_hash(student_settings(cfg, seed, t, a)),
                                   parent=f"teacher-s{seed}"))
    students = [v for v in out if v.stage == "student"]
    for s in students:
        for method in cfg.prune.method:
            for p in cfg.prune.amount:
                h = config_hash(pruned_settings(cfg, s.seed, s.temperature, s.alpha, p, method))
                out.append(Variant("pruned", s.seed, s.temperature, s.alpha, p, h, s.key, prune_method=method))
    for method in (m for m in cfg.quantize.method if m != "none"):  # "none" is the fp32 parent itself
        for v in [v for v in out if v.stage in cfg.quantize.stages]:
            out.append(Variant("quantized", v.seed, v.temperature, v.alpha, v.prune_amount,
                               config_hash(quantized_settings(cfg, v.config_hash, method)), v.key,
                               prune_method=v.prune_method, precision=method))
    return Plan(tuple(out))


def describe(plan: Plan, cfg: Config, gpus: float | None = None) -> str:
    """The plan as a short table: stage, variants, what each trial gets."""
    res = cfg.resources
    gpu = res.gpus_per_trial if gpus is None or gpus > 0 else 0
    lines = [f"plan for {cfg.name!r}: {len(plan)} variants in {sum(1 for s in STAGES if plan.stage(s))} stages",
             f"  {'stage':<10}{'variants':>9}  resources per trial", ]
    for s in STAGES:
        n = len(plan.stage(s))
        if n:
            lines.append(f"  {s:<10}{n:>9}  {res.cpus_per_trial:g} CPU, {gpu:g} GPU")
    kd_n = len(plan.stage("student"))
    if kd_n:
        mode = cfg.kd.teacher_logits
        epochs = cfg.student.epochs + cfg.prune.recovery_epochs
        lines.append(f"  teacher logits: {mode}" + (f" (one pass per seed over {epochs} epochs of views, "
                     f"shared by {kd_n // len(cfg.seeds)} KD students and their pruned variants)" if mode == "cached" else ""))
    if plan.stage("quantized"):
        lines.append(f"  quantized: ONNX Runtime static INT8 of {', '.join(cfg.quantize.stages)}, calibrated on "
                     f"{cfg.quantize.calib_batches} batches of training views")
    devices = ", ".join(cfg.measure.devices) if cfg.measure.devices else cfg.measure.latency_device
    lines.append(f"  latency: after all training, every model interleaved per iteration, batch 1, runtimes "
                 f"{', '.join(cfg.measure.runtimes)}, device {devices}")
    return "\n".join(lines)
