"""Config -> stage DAG of content-addressed variants: each piece of work appears once."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from . import axes as ax
from .config import Config
from .errors import ConfigError
from .hashes import (
    config_hash,
    logits_settings,
    pruned_settings,
    quantized_settings,
    student_settings,
    teacher_settings,
)
from .names import STAGES, STRUCTURED


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
    axes: str = ""  # the swept keys (sweep:) this variant depends on, canonical JSON {dotted key: value}
    suffix: str = ""  # what tells it apart from variants of the same coordinates: '-student.arch=mobilenet_v2'

    @property
    def values(self) -> dict:
        """The swept values this variant depends on: {dotted key: value}."""
        return json.loads(self.axes) if self.axes else {}

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
        return "-".join(parts + [f"s{self.seed}"]) + self.suffix

    @property
    def label(self) -> str:
        """Human label, e.g. `student-kd T=4 a=0.9 p=0.3` (seed is its own column)."""
        if self.stage == "quantized":
            return f"{self.base().label} {self.precision}"
        if self.stage == "teacher":
            label = "teacher"
        elif self.stage == "baseline":
            label = "student-ce (no KD)"
        else:
            label = f"student-kd T={_g(self.temperature)} a={_g(self.alpha)}"
        if self.stage == "pruned":
            label += f" p={_g(self.prune_amount)}" + (" structured" if self.prune_method == STRUCTURED else "")
        return label + "".join(f" {k}={ax.render(v)}" for k, v in self.values.items())

    def base(self) -> Variant:
        """The fp32 variant a quantized one was made from (itself otherwise), rebuilt from its coordinates."""
        if self.stage != "quantized":
            return self
        stage = self.parent.split("-", 1)[0]
        return Variant(stage, self.seed, self.temperature, self.alpha, self.prune_amount,
                       prune_method=self.prune_method, axes=self.axes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Variant:
        return cls(**d)  # dicts written before sweeps lack axes/suffix: the defaults are what they meant


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


def _plan_one(cfg: Config) -> list[Variant]:
    """1 teacher and 1 no-KD baseline per seed, 1 KD student per (T, alpha, seed), 1 pruned per (T, alpha, p, method,
    seed), 1 quantized per (method, variant of quantize.stages): one config, no sweep."""
    out: list[Variant] = []
    for seed in cfg.seeds:
        teacher = Variant("teacher", seed, config_hash=config_hash(teacher_settings(cfg, seed)))
        out.append(teacher)
        baseline = config_hash(student_settings(cfg, seed, None, 0.0))
        out.append(Variant("baseline", seed, alpha=0.0, config_hash=baseline))
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
    return out


def combo_config(cfg: Config, values: dict) -> Config:
    """`cfg` with swept values set and no sweep section: the config one combination (or one variant) trains with."""
    raw = cfg.model_dump(mode="json") | {"sweep": {}}
    for key, value in values.items():
        raw = ax.set_key(raw, key, value)
    return Config.model_validate(raw)


_CONFIGS: dict[tuple[int, str], tuple[Config, Config]] = {}


def variant_config(cfg: Config, v: Variant) -> Config:
    """The config a variant of `cfg`'s plan was planned with (cfg itself when nothing is swept)."""
    if not cfg.sweep and not v.axes:
        return cfg
    hit = _CONFIGS.get((id(cfg), v.axes))
    if hit is None or hit[0] is not cfg:  # the stored cfg keeps its id from being reused by another object
        hit = _CONFIGS[(id(cfg), v.axes)] = (cfg, combo_config(cfg, v.values))
    return hit[1]


# training images of the datasets whose size is known before reading them (digits: its fixed 80 % split;
# synthetic: data.train_limit, default 1,024); imagefolder is counted when it is read
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "digits": 1_437, "tiny-imagenet": 100_000, "synthetic": 1_024}
# and of their test splits (digits: the other 20 %; tiny-imagenet: its val split; synthetic: data.test_limit, 256)
TEST_SIZES = {"cifar10": 10_000, "cifar100": 10_000, "digits": 360, "tiny-imagenet": 10_000, "synthetic": 256}


def planned_epochs(cfg: Config, v: Variant) -> int:
    """Training epochs the variant runs (quantized variants train none: they are calibrated)."""
    c = variant_config(cfg, v)
    return {"teacher": c.teacher.epochs, "baseline": c.student.epochs, "student": c.student.epochs,
            "pruned": c.prune.recovery_epochs}.get(v.stage, 0)


def make_plan(cfg: Config) -> Plan:
    """Every variant of the sweep once: each combination of `cfg.sweep` planned as one config, merged by content hash.

    A variant's `axes` are the swept values it depends on (those equal in every combination that plans it: the
    teacher of a student-arch sweep has none); variants that share coordinates but not settings get a suffix naming
    the values that differ. Raises ConfigError past `max_variants`.
    """
    if not cfg.sweep:
        plan = _plan_one(cfg)
        _check_size(cfg, plan)
        return Plan(tuple(plan))
    found: dict[str, list[tuple[dict, Variant, dict[str, str]]]] = {}  # hash -> (combo values, variant, key->hash)
    for combo in ax.combos(cfg.sweep, cfg.max_variants):
        values = combo.as_dict()
        plan = _plan_one(combo_config(cfg, values))
        hashes = {v.key: v.config_hash for v in plan}
        for v in plan:
            found.setdefault(v.config_hash, []).append((values, v, hashes))
    merged: dict[str, Variant] = {}
    for h, seen in found.items():  # dict order: first-seen order, parents before children
        first = seen[0][0]
        dep = {k: val for k, val in first.items() if all(json.dumps(s[0][k]) == json.dumps(val) for s in seen)}
        merged[h] = replace(seen[0][1], axes=ax.canonical(dep))
    _suffix(merged)
    for h, v in merged.items():  # a parent is never quantized, so its key does not change with this loop
        if v.parent is not None:  # the parent's combination-local key -> its final key
            _, local, hashes = found[h][0]
            merged[h] = replace(v, parent=merged[hashes[local.parent]].key)
    plan = sorted(merged.values(), key=lambda v: STAGES.index(v.stage))  # stage order is dependency order
    _check_size(cfg, plan)
    return Plan(tuple(plan))


def _suffix(merged: dict[str, Variant]) -> None:
    """Give variants that would share a key a suffix naming the swept values that tell them apart (in place)."""
    groups: dict[str, list[str]] = {}
    for h, v in merged.items():
        if v.stage != "quantized":  # a quantized key is its parent's, made unique here first
            groups.setdefault(v.key, []).append(h)
    for hashes in (g for g in groups.values() if len(g) > 1):
        vals = [merged[h].values for h in hashes]
        keys = [k for k in dict.fromkeys(k for d in vals for k in d)
                if len({json.dumps(d.get(k), sort_keys=True) for d in vals}) > 1]
        for h, d in zip(hashes, vals):
            suffix = "".join(f"-{ax.key_part(k, d[k])}" for k in keys if k in d)
            merged[h] = replace(merged[h], suffix=suffix)
        if len({merged[h].key for h in hashes}) < len(hashes):  # values render alike: the hash decides
            for h in hashes:
                merged[h] = replace(merged[h], suffix=merged[h].suffix + f"-{h[:6]}")


def _check_size(cfg: Config, plan: list[Variant]) -> None:
    if len(plan) > cfg.max_variants:
        raise ConfigError(f"config key 'max_variants': the plan has {len(plan):,} variants, more than max_variants "
                          f"{cfg.max_variants:,}; raise it (--set max_variants=N) if you mean it")


def teacher_of(v: Variant, by_key: dict[str, Variant]) -> Variant:
    """The teacher a KD student or its pruned variant distils from."""
    s = by_key[v.parent] if v.stage == "pruned" else v
    return by_key[s.parent]


def logits_key(cfg: Config, v: Variant) -> str:
    """The task id of the cached teacher logits a KD variant reads (one per teacher and set of student views)."""
    return f"logits-s{v.seed}-{config_hash(logits_settings(variant_config(cfg, v), v.seed))[:8]}"


def train_size(cfg: Config) -> int | None:
    """Training images per epoch, where the dataset's size is known without reading it (else None)."""
    d = cfg.data
    full = TRAIN_SIZES.get(d.dataset)
    if d.dataset == "synthetic":
        return d.train_limit or full
    return None if full is None else min(full, d.train_limit or full)


def n_test_images(cfg: Config) -> int | None:
    """Test images accuracy is taken on, where the dataset's size is known without reading it (else None)."""
    full = TEST_SIZES.get(cfg.data.dataset)
    if cfg.data.dataset == "synthetic":
        return cfg.data.test_limit or full
    return None if full is None else min(full, cfg.data.test_limit or full)


def _epochs(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def trial_slots(cfg: Config, cpus: int, gpus: float) -> int:
    """Trials that run at once on `cpus` CPUs and `gpus` GPUs with the config's resources per trial (at least 1)."""
    res = cfg.resources
    slots = int(cpus // res.cpus_per_trial) if res.cpus_per_trial else cpus
    if gpus and res.gpus_per_trial:
        slots = min(slots, int(gpus / res.gpus_per_trial + 1e-9))
    return max(1, slots)


def listing(plan: Plan, cfg: Config) -> str:
    """`kdsweep plan --list`: every variant with its stage, epochs and parent, in plan (dependency) order."""
    width = max(len(v.key) for v in plan)
    lines = [f"  {'key':<{width}}  {'stage':<9}{'epochs':>6}  parent"]
    lines += [f"  {v.key:<{width}}  {v.stage:<9}{planned_epochs(cfg, v):>6}  {v.parent or '-'}" for v in plan]
    return "\n".join(lines)


def describe(plan: Plan, cfg: Config, gpus: float | None = None, cpus: int | None = None, where: str = "here") -> str:
    """The plan as a short table: the data, then per stage the variants, epochs and images to train, what each trial
    gets (`gpus`/`cpus`: of this machine or the cluster `where` names, when known; no GPU share where there is none)
    and how many run at once."""
    res = cfg.resources
    gpu = res.gpus_per_trial if gpus is None or gpus > 0 else 0
    n_train = train_size(cfg)
    lines = [f"plan for {cfg.name!r}: {len(plan)} variants in {sum(1 for s in STAGES if plan.stage(s))} stages",
             f"  data: {cfg.data.dataset}, "
             + (f"{n_train:,} training images" if n_train else "training-set size read at run time")
             + f" at {cfg.data.image_size} px",
             f"  {'stage':<10}{'variants':>9}{'epochs':>8}{'images to train':>17}  resources per trial"]
    total = 0
    for s in STAGES:
        vs = plan.stage(s)
        if vs:
            epochs = [planned_epochs(cfg, v) for v in vs]
            images = sum(epochs) * n_train if n_train else None
            total += images or 0
            lines.append(f"  {s:<10}{len(vs):>9}{_epochs(epochs):>8}{f'{images:,}' if images is not None else '?':>17}"
                         f"  {res.cpus_per_trial:g} CPU" + (f", {gpu:g} GPU" if gpu else ""))
    if n_train:
        lines.append(f"  {total:,} training images in all (epochs x images; teacher passes for the logit cache extra)")
    if cpus is not None:
        here = f"{cpus} CPU(s), " + (f"{gpus:g} GPU(s)" if gpus else "no GPU")
        lines.append(f"  {where}: {here}: up to {trial_slots(cfg, cpus, gpus or 0)} trial(s) at once")
    if cfg.sweep:
        sizes = " x ".join(f"{k} ({len(v)})" for k, v in cfg.sweep.items())
        n = 1
        for v in cfg.sweep.values():
            n *= len(v)
        lines.append(f"  sweep: {sizes} = {n} combinations on top of the built-in axes; shared work planned once")
    kd = [v for v in plan if v.stage in ("student", "pruned") and v.alpha]
    if kd:
        mode = cfg.kd.teacher_logits
        caches = {logits_key(cfg, v) for v in kd}
        students = sum(v.stage == "student" for v in plan)
        lines.append(f"  teacher logits: {mode}" + (f" ({len(caches)} teacher pass(es) over every student view, shared "
                     f"by {students} KD students and their pruned variants)" if mode == "cached" else ""))
    if plan.stage("quantized"):
        lines.append(f"  quantized: ONNX Runtime static INT8 of {', '.join(cfg.quantize.stages)}, calibrated on "
                     f"{cfg.quantize.calib_batches} batches of training views")
    devices = ", ".join(cfg.measure.devices) if cfg.measure.devices else cfg.measure.latency_device
    lines.append(f"  latency: after all training, every model interleaved per iteration, batch 1, runtimes "
                 f"{', '.join(cfg.measure.runtimes)}, device {devices}")
    return "\n".join(lines)
