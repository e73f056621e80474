"""Which variants train together as one fused model (`resources.fuse`): torch-free, so `plan` can say it.

Members of a fused task share everything but their KD temperature and alpha (and, for unstructured recoveries,
their parent and pruning amount): stage, seed, student architecture and settings, views, teacher logits, and for
structured pruning the amount (which fixes the pruned shapes). Online teacher logits are not fused.
"""
from __future__ import annotations

import hashlib
import json

from .config import Config
from .names import STRUCTURED
from .plan import Variant, logits_key, variant_config

# `auto` puts at most this many members in one task: 9 MobileNetV3-Small students at 224 px, batch 128, bf16 fit one
# 80 GB GPU with room to spare, and larger groups gain little once the GPU is busy
AUTO_MAX_MEMBERS = 9


def fuse_limit(fuse: str | int, gpus: float) -> int:
    """The most members per fused task; 1 means nothing is fused (`off`, or `auto` without a GPU)."""
    if fuse == "off":
        return 1
    if fuse == "auto":
        return AUTO_MAX_MEMBERS if gpus > 0 else 1
    return int(fuse)


def fusable(cfg: Config, v: Variant) -> bool:
    """KD students (cached logits) and pruned variants' recoveries; teachers, baselines and INT8 are not."""
    if v.stage not in ("student", "pruned"):
        return False
    return not v.alpha or cfg.kd.teacher_logits == "cached"


def group_key(cfg: Config, v: Variant) -> str:
    """What members of one fused task must share (JSON)."""
    vc = variant_config(cfg, v)
    raw = vc.model_dump(mode="json")
    for section, key in (("kd", "temperature"), ("kd", "alpha"), ("prune", "amount")):
        raw[section].pop(key)  # the grid axes a member may differ in (structured amounts are added back below)
    raw.pop("resources")
    raw.pop("measure")
    amount = v.prune_amount if v.prune_method == STRUCTURED else None
    teacher = logits_key(cfg, v) if v.alpha else None
    return json.dumps([v.stage, v.seed, bool(v.alpha), v.prune_method, amount, teacher, raw], sort_keys=True)


def group_id(members: list[Variant]) -> str:
    """A fused task's id (also its members' `fused_group`): stage, size and a hash of who is in it."""
    h = hashlib.sha256(json.dumps(sorted(v.config_hash for v in members)).encode()).hexdigest()[:8]
    return f"fused-{members[0].stage}-x{len(members)}-{h}"


def fused_groups(cfg: Config, variants: list[Variant], limit: int, gpus: float) -> list[list[Variant]]:
    """The fused tasks among `variants`: groups of 2..limit members of the same group key, split evenly so that each
    GPU of the cluster gets a group where there are enough members (9 students on 4 GPUs: 3/2/2/2, not 9)."""
    if limit < 2:
        return []
    buckets: dict[str, list[Variant]] = {}
    for v in variants:
        if fusable(cfg, v):
            buckets.setdefault(group_key(cfg, v), []).append(v)
    out = []
    for members in buckets.values():
        n = max(-(-len(members) // limit), min(len(members), int(gpus)))
        q, r = divmod(len(members), n)
        start = 0
        for i in range(n):
            size = q + (i < r)
            if size >= 2:
                out.append(members[start:start + size])
            start += size
    return out


def _tasks_line(groups: list[list[Variant]]) -> str:
    sizes: dict[str, list[int]] = {}
    for g in groups:
        sizes.setdefault(g[0].stage, []).append(len(g))
    return f"{len(groups)} task(s): " + ", ".join(f"{stage} {'+'.join(map(str, n))}" for stage, n in sizes.items())


def describe_fusion(plan: object, cfg: Config) -> str:
    """One line of the plan: how many fused tasks of how many members run (on CPU, and on one GPU for `auto`)."""
    fuse = cfg.resources.fuse
    if fuse == "off" or fuse == 1:
        return f"  fused training: off (resources.fuse: {fuse}); every variant trains alone"
    if fuse == "auto":
        groups = fused_groups(cfg, list(plan), fuse_limit(fuse, 1), 1)
        if not groups:
            return "  fused training: auto; nothing here to fuse"
        return (f"  fused training: auto: off on CPU; on GPUs up to {AUTO_MAX_MEMBERS} members per task, at least one "
                f"task per GPU (on 1 GPU: {_tasks_line(groups)}), {cfg.resources.gpus_per_fused:g} GPU per task")
    groups = fused_groups(cfg, list(plan), int(fuse), 0)
    if not groups:
        return f"  fused training: up to {fuse} members per task; nothing here to fuse"
    return (f"  fused training: up to {fuse} members per task: {_tasks_line(groups)} (on GPUs spread so every GPU gets "
            f"a task, {cfg.resources.gpus_per_fused:g} GPU per task)")
