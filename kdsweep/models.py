"""Teacher/student builders by name: any torchvision classification model, or `timm:<name>`; weights `imagenet`
(the model's default ImageNet weights), `none`, or a state-dict path."""
from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from importlib.util import find_spec

import torch
from torch import nn
from torchvision import models as tvm

from .checkpoint import load_checkpoint
from .errors import CheckpointError, ModelError, one_line

TIMM_PREFIX = "timm:"
IMAGENET_CLASSES = 1000


def _resnet18(weights: tvm.WeightsEnum | None, num_classes: int) -> nn.Module:
    return tvm.resnet18(weights=weights, num_classes=num_classes)


def _mnv3s(weights: tvm.WeightsEnum | None, num_classes: int) -> nn.Module:
    return tvm.mobilenet_v3_small(weights=weights, num_classes=num_classes)


# The built-in archs (config.ARCHS, validated without importing torch): name -> (builder, ImageNet weights). Their
# pinned enums are what existing experiments were trained from; every other arch is built through torchvision or timm.
REGISTRY: dict[str, tuple[Callable[..., nn.Module], tvm.WeightsEnum]] = {
    "resnet18": (_resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "mobilenet_v3_small": (_mnv3s, tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
}

# GoogLeNet / Inception v3 are built without their auxiliary heads: the training loop and the KD loss expect one
# logits tensor. `transform_input` is what their ImageNet weights were trained with; it is not in the state dict, so
# it is on for every build (a fixed per-channel affine of the input, harmless from scratch) and a saved model reloads
# with the same forward. init_weights=True is torchvision's current default, spelled out to silence its warning.
# vit_h_14's ImageNet weights fix its input at 518 px: building it from scratch at that size too lets a saved
# fine-tuned model reload (its position embedding's shape depends on the size).
_SCRATCH_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": True},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": True},
    "vit_h_14": {"image_size": 518},
}
# torchvision families built for one input size (position embeddings, window partitions); the size is their weights'
_FIXED_SIZE = ("vit_", "maxvit_")


@functools.cache
def _torchvision_classifiers() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm))


@functools.cache
def _torchvision_others() -> dict[str, str]:
    """Every non-classification torchvision model name -> its task (detection, segmentation, video, ...)."""
    names = set(tvm.list_models()) - set(_torchvision_classifiers())
    return {n: tvm.get_model_builder(n).__module__.split(".")[2].replace("_", " ") for n in names}


def _timm_problem(name: str) -> str | None:
    if find_spec("timm") is None:
        return f"arch {TIMM_PREFIX}{name} needs timm, which is not installed: pip install 'kdsweep[timm]'"
    import timm

    if name and timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
    return f"unknown timm model {name!r}{hint} (timm.list_models() lists them)"


def arch_problem(name: str) -> str | None:
    """Why `name` cannot be built as an arch (one line, for config validation), or None if it can."""
    if name in REGISTRY or name in _torchvision_classifiers():
        return None
    if name.startswith(TIMM_PREFIX):
        return _timm_problem(name[len(TIMM_PREFIX):])
    if name in _torchvision_others():
        return (f"{name!r} is a torchvision {_torchvision_others()[name]} model; kdsweep trains image classifiers "
                f"(torchvision.models.list_models(module=torchvision.models) lists them)")
    close = difflib.get_close_matches(name, _torchvision_classifiers(), n=3, cutoff=0.6)
    if not close and find_spec("timm") is not None:
        import timm  # only on this error path: importing timm takes seconds

        close = [TIMM_PREFIX + name] if timm.is_model(name) else []
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (f"unknown arch {name!r}{hint} (a torchvision.models classification name such as resnet18, "
            f"or timm:<name>)")


def input_problem(arch: str, image_size: int) -> str | None:
    """Why `arch` cannot take `image_size` px inputs (one line, for config validation), or None; builds nothing."""
    if arch_problem(arch):
        return None  # arch_problem reports it
    if arch.startswith(TIMM_PREFIX):
        import timm

        cfg = timm.models.get_pretrained_cfg(arch[len(TIMM_PREFIX):])
        if cfg is None:
            return None
        if cfg.fixed_input_size and image_size != cfg.input_size[-1]:
            return f"{arch} takes only {cfg.input_size[-1]} px images, got {image_size}"
        least = cfg.min_input_size[-1] if cfg.min_input_size else 1
    elif arch in REGISTRY or arch.startswith("swin_"):
        return None  # swin pads to its windows; torchvision's min_size for it is only the training size
    else:
        least = tvm.get_model_weights(arch).DEFAULT.meta["min_size"][0]
        if arch.startswith(_FIXED_SIZE) and image_size != least:
            return f"{arch} takes only {least} px images, got {image_size}"
    # below this size a pooling or convolution stage is left with no pixels
    return f"{arch} needs images of at least {least} px, got {image_size}" if image_size < least else None


def _construct(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised `arch` with a `num_classes` head."""
    if arch in REGISTRY:
        return REGISTRY[arch][0](None, num_classes)
    if arch.startswith(TIMM_PREFIX):
        import timm

        return timm.create_model(arch[len(TIMM_PREFIX):], pretrained=False, num_classes=num_classes)
    return tvm.get_model(arch, weights=None, num_classes=num_classes, **_SCRATCH_KWARGS.get(arch, {}))


def _pretrained(arch: str, key: str) -> tuple[nn.Module, int]:
    """`arch` with its default ImageNet weights, and the number of classes its head has."""
    if arch.startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX):]
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            # timm would only log a warning and hand back a randomly initialised model
            raise ModelError(f"{key}.weights: timm has no pretrained weights for {name}; use weights: none or a "
                             f"path to a saved state dict")
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:  # noqa: BLE001 - hub/network errors vary; the fix is the same
            raise _fetch_error(key, f"timm's pretrained {name}", exc,
                               "timm's file in the Hugging Face cache, $HF_HOME") from None
        return model, model.num_classes
    enum = REGISTRY[arch][1] if arch in REGISTRY else tvm.get_model_weights(arch).DEFAULT
    try:
        if arch in REGISTRY:
            model = REGISTRY[arch][0](enum, IMAGENET_CLASSES)
        else:
            model = tvm.get_model(arch, weights=enum)
    except Exception as exc:  # noqa: BLE001 - urllib/hub errors vary; the fix is the same
        raise _fetch_error(key, str(enum), exc,
                           f"torchvision's file for {enum} placed in $TORCH_HOME/hub/checkpoints") from None
    if isinstance(model, (tvm.GoogLeNet, tvm.Inception3)):
        # torchvision loads these weights with the aux heads on (inception_v3 cannot be asked otherwise); drop them
        # as the scratch build does, so both have the same modules and one logits output
        model.aux_logits = False
        for attr in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    return model, len(enum.meta["categories"])


def _fetch_error(key: str, what: str, exc: BaseException, cache: str) -> ModelError:
    """The one-line error for pretrained weights that could not be fetched (offline), with the ways around it."""
    return ModelError(f"{key}.weights: could not fetch {what} ({one_line(exc)}); "
                      f"offline, use weights: none, or a path to a saved state dict ({cache} also works)")


def classifier(model: nn.Module, num_classes: int) -> tuple[str, nn.Module]:
    """The qualified name and module of the model's classifier, which produces `num_classes` outputs.

    timm models say which it is; in torchvision it is the last nn.Linear with `num_classes` outputs (registered after
    the trunk in every torchvision classifier), or SqueezeNet's final 1x1 Conv2d."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        name = next((n for n, m in model.named_modules() if m is head), None)
        if name and isinstance(head, (nn.Linear, nn.Conv2d)):
            return name, head
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if linear:
        return linear[-1]
    conv = [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1)]
    if conv:
        return conv[-1]
    raise ModelError(f"{type(model).__name__}: no nn.Linear or 1x1 nn.Conv2d produces its {num_classes} outputs; "
                     f"cannot tell which layer is the classifier")


def _set_head(model: nn.Module, arch: str, current: int, num_classes: int) -> None:
    """Replace the classifier (now `current` outputs) so the model predicts `num_classes`."""
    if current == num_classes:
        return
    if arch.startswith(TIMM_PREFIX):
        model.reset_classifier(num_classes)
        return
    name, head = classifier(model, current)
    w = head.weight
    if isinstance(head, nn.Linear):
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        new = nn.Conv2d(head.in_channels, num_classes, kernel_size=1, bias=head.bias is not None)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new.to(device=w.device, dtype=w.dtype))
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes  # squeezenet keeps it (unused in forward); keep it truthful


def skeleton(arch: str, num_classes: int = 7) -> nn.Module:
    """An untrained `arch` for inspecting its modules, on the meta device where it can be (it allocates nothing);
    building it leaves the caller's random stream, and so a real model's init, as it was."""
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):
                return _construct(arch, num_classes)
        except Exception:  # noqa: BLE001 - e.g. RegNet computes its widths from real tensors; a real build works
            return _construct(arch, num_classes)


@functools.cache
def _head_name(arch: str) -> str:
    """Qualified name of `arch`'s classifier."""
    probe = 7  # a class count no hidden layer is likely to have
    return classifier(skeleton(arch, probe), probe)[0]


def _state_classes(arch: str, state: dict) -> int | None:
    """The number of outputs of `arch`'s classifier in a saved state dict (None: no such key)."""
    weight = state.get(f"{_head_name(arch)}.weight")
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None


def build_model(arch: str, num_classes: int, weights: str = "none", bn_momentum: float | None = 0.1,
                key: str = "model") -> nn.Module:
    """Build `arch` with a `num_classes` head; `weights` is 'none', 'imagenet' or a state-dict path."""
    problem = arch_problem(arch)
    if problem:
        raise ModelError(f"{key}.arch: {problem}")
    if weights == "none":
        model = _construct(arch, num_classes)
    elif weights == "imagenet":
        model, current = _pretrained(arch, key)
        _set_head(model, arch, current, num_classes)
    else:
        try:
            state = load_checkpoint(weights)
        except CheckpointError as exc:
            raise ModelError(f"{key}.weights: {exc}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a kdsweep training checkpoint
        current = _state_classes(arch, state) or num_classes
        model = _construct(arch, current)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            why = one_line(exc, with_type=False)
            raise ModelError(f"{key}.weights: {weights!r} does not fit {arch}: {why}") from None
        _set_head(model, arch, current, num_classes)
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
