"""Structured (channel) L1 pruning with torch-pruning's dependency graph, and replay of its JSON history."""
from __future__ import annotations

from importlib.metadata import version

import torch
import torch_pruning as tp
from torch import nn
from torchvision.models.shufflenetv2 import InvertedResidual as ShuffleBlock

from .errors import ModelError, one_line
from .models import classifier, skeleton
from .names import STRUCTURED, UNSTRUCTURED

HISTORY_FORMAT = "torch-pruning"
SCOPES = ("layer", "global")


def _example_input(model: nn.Module, image_size: int) -> torch.Tensor:
    """A zero batch of one image shaped for the model's first Conv2d, on its device and dtype."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("structured pruning: the model has no Conv2d to prune")
    w = first.weight
    return torch.zeros(1, first.in_channels, image_size, image_size, device=w.device, dtype=w.dtype)


def _classifier(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The classifier (kept whole): the layer that produces the model's outputs, as `models.classifier` finds it."""
    with torch.no_grad():
        classes = model(example).shape[-1]
    try:
        return classifier(model, classes)[1]
    except ModelError as exc:
        raise ValueError(f"structured pruning: {exc}") from None


def unsupported(model: nn.Module) -> str | None:
    """Why torch-pruning's channel pruning cannot prune `model` (None: no known reason), from its module types."""
    for name, m in model.named_modules():
        # attention layers: torch-pruning would cut q/k/v widths without knowing the heads (torchvision's ViT fails
        # deep in its trace, Swin hangs for minutes)
        if isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__:
            return f"it has attention layers ({name}: {type(m).__name__})"
        # ShuffleNetV2's channel shuffle is a view/transpose torch-pruning 1.6 cannot map channels through
        if isinstance(m, ShuffleBlock):
            return f"its channel shuffle ({name}) is a reshape torch-pruning cannot follow"
    return None


def arch_problem(arch: str) -> str | None:
    """Why `prune.method: l1_structured` cannot prune `arch` (one line, for config validation), or None if it can."""
    reason = unsupported(skeleton(arch))
    return f"{STRUCTURED} cannot prune {arch}: {reason}; use {UNSTRUCTURED}" if reason else None


def _prepare(model: nn.Module) -> bool:
    """Put the model in eval mode and contiguous format for tracing; returns its previous training flag."""
    was_training = model.training
    # torch-pruning traces with a forward in eval mode (so BN running stats are untouched and batch-1 BN works) and
    # slices weights by index; the engine's channels_last layout goes back on when training resumes
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return was_training


def structured_prune(model: nn.Module, amount: float, image_size: int, round_to: int = 8,
                     scope: str = "layer", arch: str | None = None) -> dict:
    """Remove the lowest-L1 `amount` fraction of channels in place; return the JSON-able pruning history.

    `scope: layer` removes `amount` of every coupled channel group; `global` ranks all groups together. Channel counts
    are rounded down to multiples of `round_to`; a group whose rounded width would be 0 is left whole (torch-pruning
    skips it). The classifier's outputs are kept. Parameters are replaced, so build optimizers after pruning.
    `amount=0` changes nothing and returns a history with no steps. A model torch-pruning cannot prune (attention,
    channel shuffle, or a failure in its trace) is a ValueError naming `prune.method` and `arch` (default: the class).
    """
    if scope not in SCOPES:
        raise ValueError(f"prune.scope: unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    if not 0 <= amount < 1:
        raise ValueError(f"prune.amount: {amount!r} is outside [0, 1)")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"prune.round_to: {round_to!r} is not a positive integer")
    label = arch or type(model).__name__
    reason = unsupported(model)
    if reason:
        raise ValueError(f"prune.method: {STRUCTURED} cannot prune {label}: {reason}; use {UNSTRUCTURED}")
    # the distribution's version: torch_pruning 1.6.1 still reports __version__ == "1.6.0"
    history = {"format": HISTORY_FORMAT, "torch_pruning": version("torch-pruning"), "amount": amount,
               "round_to": round_to,
               "scope": scope, "image_size": image_size, "steps": []}
    if amount == 0:
        return history
    was_training = _prepare(model)
    try:
        example = _example_input(model, image_size)
        try:
            # the dependency graph is traced through autograd, so it must run even if the caller disabled grad
            with torch.enable_grad():
                pruner = tp.pruner.BasePruner(
                    model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount,
                    global_pruning=scope == "global", ignored_layers=[_classifier(model, example)],
                    round_to=round_to)
                pruner.step()
            with torch.no_grad():
                model(example)  # a graph torch-pruning misread shows up as a shape error here, not in training
        except Exception as exc:  # noqa: BLE001 - torch-pruning fails in many ways on graphs it cannot follow
            raise ValueError(f"prune.method: {STRUCTURED} cannot prune {label}: torch-pruning failed "
                             f"({one_line(exc, limit=10_000)}); use {UNSTRUCTURED}") from None
    finally:
        model.train(was_training)
    # lists, not tuples, so the history equals its own JSON round trip (what replay receives from disk)
    history["steps"] = [[name, bool(out), [int(i) for i in idx]] for name, out, idx in pruner.DG.pruning_history()]
    return history


def replay(model: nn.Module, history: dict) -> None:
    """Apply a saved history to a fresh model of the same arch, giving it the pruned model's shapes."""
    if not isinstance(history, dict) or history.get("format") != HISTORY_FORMAT:
        raise ValueError(f"pruning history: expected format {HISTORY_FORMAT!r}, got "
                         f"{history.get('format') if isinstance(history, dict) else type(history).__name__!r}")
    if not history["steps"]:
        return
    was_training = _prepare(model)
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, _example_input(model, int(history["image_size"])))
            try:
                graph.load_pruning_history(history["steps"])
            except (AttributeError, IndexError, RuntimeError) as exc:
                raise ValueError(f"pruning history does not fit this model ({one_line(exc)}); "
                                 f"was it recorded on another arch?") from None
    finally:
        model.train(was_training)
