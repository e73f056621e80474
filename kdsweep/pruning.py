"""L1 unstructured pruning of Conv2d weights (layer-wise or global) with torch.nn.utils.prune, and sparsity reports."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

COLLAPSE_WARN = 0.90


@dataclass
class SparsityReport:
    """Zero fraction of every Conv2d weight and of all of them together."""

    layers: dict[str, float] = field(default_factory=dict)
    zeros: int = 0
    total: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def worst(self) -> tuple[str, float]:
        return max(self.layers.items(), key=lambda kv: kv[1]) if self.layers else ("", 0.0)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d of the model, by qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def apply_pruning(model: nn.Module, amount: float, scope: str = "layer") -> SparsityReport:
    """Mask the smallest-|w| `amount` of Conv2d weights, per layer or globally; masks stay active for recovery.

    Warns when a layer ends above 90 % sparse: global L1 wipes MobileNetV3's small depthwise/SE weights.
    """
    convs = conv_layers(model)
    # torch's L1 mask computation flattens weights with .view(-1), which fails on channels_last tensors (the layout
    # the engine trains in); the engine puts the model back in channels_last when training resumes
    model.to(memory_format=torch.contiguous_format)
    if scope == "layer":
        for _, m in convs:
            prune.l1_unstructured(m, "weight", amount=amount)
    elif scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in convs], pruning_method=prune.L1Unstructured,
                                  amount=amount)
    else:
        raise ValueError(f"prune.scope: unknown scope {scope!r}; known: layer, global")
    report = sparsity_report(model)
    name, worst = report.worst()
    if worst > COLLAPSE_WARN:
        over = sum(s > COLLAPSE_WARN for s in report.layers.values())
        warnings.warn(f"{scope} pruning at {amount:.0%} left {over} Conv2d layer(s) above {COLLAPSE_WARN:.0%} sparse "
                      f"(worst: {name} at {worst:.1%}); the model may collapse, prefer scope: layer", stacklevel=2)
    return report


def add_identity_masks(model: nn.Module) -> None:
    """Re-create the pruning reparametrisation (weight_orig, weight_mask) so a masked state dict can be loaded."""
    for _, m in conv_layers(model):
        if not prune.is_pruned(m):
            prune.identity(m, "weight")


def make_permanent(model: nn.Module) -> None:
    """Fold masks into the weights (dense tensors with zeros) and drop the pruning hooks."""
    for _, m in conv_layers(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Fraction of exact zeros in each Conv2d weight (masked or permanent) and in total."""
    rep = SparsityReport()
    for name, m in conv_layers(model):
        # with active masks, `weight` is only refreshed on forward; the mask product is the truth
        w = m.weight_orig * m.weight_mask if prune.is_pruned(m) else m.weight
        z = int((w == 0).sum())
        rep.layers[name] = z / w.numel()
        rep.zeros += z
        rep.total += w.numel()
    return rep
