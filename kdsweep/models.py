"""Teacher/student builders by name; weights `imagenet` (torchvision's real enum), `none`, or a state-dict path."""
from __future__ import annotations

from typing import Callable

from torch import nn
from torchvision import models as tvm

from .checkpoint import CheckpointError, load_checkpoint


class ModelError(RuntimeError):
    """A model could not be built as asked; the message names the key."""


def _resnet18(weights: tvm.WeightsEnum | None, num_classes: int) -> nn.Module:
    return tvm.resnet18(weights=weights, num_classes=num_classes)


def _mnv3s(weights: tvm.WeightsEnum | None, num_classes: int) -> nn.Module:
    return tvm.mobilenet_v3_small(weights=weights, num_classes=num_classes)


def _set_head(model: nn.Module, num_classes: int) -> None:
    """Replace the final Linear so the model predicts `num_classes`."""
    if isinstance(model, tvm.ResNet):
        if model.fc.out_features != num_classes:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        last = model.classifier[-1]
        if last.out_features != num_classes:
            model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def _head_classes(state: dict) -> int | None:
    for key in ("fc.weight", "classifier.3.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


# name -> (builder, ImageNet weights enum member)
REGISTRY: dict[str, tuple[Callable[..., nn.Module], tvm.WeightsEnum]] = {
    "resnet18": (_resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "mobilenet_v3_small": (_mnv3s, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
}


def build_model(arch: str, num_classes: int, weights: str = "none", bn_momentum: float | None = 0.1,
                key: str = "model") -> nn.Module:
    """Build `arch` with a `num_classes` head; `weights` is 'none', 'imagenet' or a state-dict path."""
    if arch not in REGISTRY:
        raise ModelError(f"{key}.arch: unknown arch {arch!r}; known: {', '.join(REGISTRY)}")
    builder, enum = REGISTRY[arch]
    if weights == "none":
        model = builder(None, num_classes)
    elif weights == "imagenet":
        try:
            model = builder(enum, 1000)
        except Exception as exc:  # noqa: BLE001 - urllib/hub errors vary; the fix is the same
            raise ModelError(f"{key}.weights: could not fetch {enum} ({exc.__class__.__name__}: {exc}); offline, "
                             f"use weights: none, or a path to a saved state dict (torchvision's file for {enum} "
                             f"placed in $TORCH_HOME/hub/checkpoints also works)") from None
        _set_head(model, num_classes)
    else:
        try:
            state = load_checkpoint(weights)
        except CheckpointError as exc:
            raise ModelError(f"{key}.weights: {exc}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a kdsweep training checkpoint
        model = builder(None, _head_classes(state) or num_classes)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(f"{key}.weights: {weights!r} does not fit {arch}: {str(exc).splitlines()[0]}") from None
        _set_head(model, num_classes)
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set every BatchNorm's momentum (torchvision's MobileNetV3 uses 0.01, too slow for short schedules)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), the reference's size basis."""
    return sum(p.numel() for p in model.parameters())
