"""Train the members of one fused task (`fusion.fused_groups`) as one model, each with its own record.

Each member is set up exactly as it would be alone (`stages.setup_variant`: seeded initialisation, or its parent
loaded, pruned and its BatchNorm recalibrated), trained with the others by `engine.train_group`, then finished alone
(`stages.finish_variant`: accuracy, weights, size, ONNX export). A member that diverges gets its own failed record;
the others go on.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .dataset import Dataset
from .engine import Member, train_group
from .errors import DivergedError
from .paths import Paths
from .plan import Variant, variant_config
from .stages import Setup, arch_of, finish_variant, setup_variant, write_record


def _caught(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "kdsweep" in w.filename]


def _shape_groups(setups: list[Setup]) -> list[list[int]]:
    """Members whose models have identical tensor shapes (structured pruning of one amount usually gives one)."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(setups):
        shapes = tuple((k, tuple(t.shape)) for k, t in s.model.state_dict().items())
        groups.setdefault(shapes, []).append(i)
    return list(groups.values())


def train_fused(cfg: object, variants: list[Variant], paths: Paths, data: Dataset, device: torch.device,
                plan_by_key: dict[str, Variant], group: str,
                on_epoch: Callable[[Variant, dict], None] | None = None,
                extra: Callable[[Variant], dict] | None = None) -> dict[str, dict]:
    """Train `variants` (one fused task) together; write and return each member's trained record, by key."""
    setups, setup_warnings, logits = [], [], None
    for v in variants:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = setup_variant(variant_config(cfg, v), v, paths, data, device, plan_by_key, logits)
        setups.append(s)
        setup_warnings.append(_caught(caught))
        if s.logits is not None:  # one cache serves the whole group (the group shares its teacher and views)
            logits = (s.logits, s.logits_name)
    members = [Member(s.model, s.spec, paths.checkpoint(v), _bind(on_epoch, v), {"run": s.runs})
               for v, s in zip(variants, setups)]
    results: list[list[dict] | DivergedError] = [[] for _ in variants]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for part in _shape_groups(setups):
            out = train_group([members[i] for i in part], data, setups[part[0]].view, device,
                              teacher_logits=logits[0] if logits else None)
            for i, r in zip(part, out):
                results[i] = r
    shared_warnings = _caught(caught)
    records = {}
    for v, s, result, own in zip(variants, setups, results, setup_warnings):
        vc = variant_config(cfg, v)
        if isinstance(result, DivergedError):
            record = {"status": "failed", "error": f"diverged: {result}", "arch": arch_of(vc, v), "fused_group": group}
        else:
            record = finish_variant(vc, v, paths, data, device, s, result, fused_group=group)
        record |= {"config_hash": v.config_hash, "warnings": list(dict.fromkeys(own + shared_warnings))}
        record |= extra(v) if extra else {}
        write_record(paths.record(v), record)
        records[v.key] = record
    return records


def _bind(on_epoch: Callable[[Variant, dict], None] | None, v: Variant) -> Callable[[dict], None] | None:
    return None if on_epoch is None else (lambda row: on_epoch(v, row))
