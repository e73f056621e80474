"""Batched, per-sample RandAugment, Mixup and CutMix on device tensors, driven by pre-drawn parameters.

The random draws live in `data.augment_params` (a pure function of seed, epoch and sample index); this module only
applies them, so a view never depends on which batch a sample lands in. RandAugment follows torchvision's
`v2.RandAugment` op list and magnitudes (31 bins, nearest interpolation, fill 0), but each sample gets its own ops and
signs; samples that share (op, sign) are transformed in one batched `torchvision.transforms.v2.functional` call.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.transforms.v2 import functional as TF

NUM_BINS = 31  # torchvision's RandAugment magnitude scale: 0..30

_lin = lambda lo, hi: (lambda bins, h, w: torch.linspace(lo, hi, bins))

# op -> (magnitudes per bin for an h x w image, or None; whether a magnitude's sign is drawn), in torchvision's order
# (v2.RandAugment._AUGMENTATION_SPACE; tests/test_augment.py checks that the two agree)
RANDAUGMENT_SPACE: dict[str, tuple[Callable[[int, int, int], torch.Tensor] | None, bool]] = {
    "Identity": (None, False),
    "ShearX": (_lin(0.0, 0.3), True),
    "ShearY": (_lin(0.0, 0.3), True),
    "TranslateX": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, bins), True),
    "TranslateY": (lambda bins, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, bins), True),
    "Rotate": (_lin(0.0, 30.0), True),
    "Brightness": (_lin(0.0, 0.9), True),
    "Color": (_lin(0.0, 0.9), True),
    "Contrast": (_lin(0.0, 0.9), True),
    "Sharpness": (_lin(0.0, 0.9), True),
    "Posterize": (lambda bins, h, w: (8 - (torch.arange(bins) / ((bins - 1) / 4))).round().int(), False),
    "Solarize": (_lin(1.0, 0.0), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
RANDAUGMENT_OPS: tuple[str, ...] = tuple(RANDAUGMENT_SPACE)
_SIGNED = torch.tensor([signed for _, signed in RANDAUGMENT_SPACE.values()])


def op_magnitude(op: str, magnitude: int, height: int, width: int, negative: bool = False) -> float:
    """The value torchvision's RandAugment uses for `op` at bin `magnitude` (0 for ops without one)."""
    fn, signed = RANDAUGMENT_SPACE[op]
    if fn is None:
        return 0.0
    value = float(fn(NUM_BINS, height, width)[magnitude])
    return -value if signed and negative else value


def apply_op(x: torch.Tensor, op: str, value: float) -> torch.Tensor:
    """One RandAugment op with magnitude `value` on a uint8 batch (B, C, H, W), as torchvision applies it."""
    nearest = TF.InterpolationMode.NEAREST
    if op == "Identity":
        return x
    if op in ("ShearX", "ShearY"):
        # torchvision shears by atan(value) degrees about the top-left corner (the official AutoAugment transform)
        shear = [math.degrees(math.atan(value)), 0.0] if op == "ShearX" else [0.0, math.degrees(math.atan(value))]
        return TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest,
                         fill=None, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(value), 0] if op == "TranslateX" else [0, int(value)]
        return TF.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest, fill=None)
    if op == "Rotate":
        return TF.rotate(x, angle=value, interpolation=nearest, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(x, brightness_factor=1.0 + value)
    if op == "Color":
        return TF.adjust_saturation(x, saturation_factor=1.0 + value)
    if op == "Contrast":
        return TF.adjust_contrast(x, contrast_factor=1.0 + value)
    if op == "Sharpness":
        return TF.adjust_sharpness(x, sharpness_factor=1.0 + value)
    if op == "Posterize":
        return TF.posterize(x, bits=int(value))
    if op == "Solarize":
        return TF.solarize(x, threshold=255.0 * value)
    if op == "AutoContrast":
        return TF.autocontrast(x)
    if op == "Equalize":
        return TF.equalize(x)
    raise ValueError(f"unknown RandAugment op {op!r}")


def draw_randaugment(g: torch.Generator, n: int, num_ops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample op indices into RANDAUGMENT_OPS (n, num_ops) and negative-sign flags (False for unsigned ops)."""
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (n, num_ops), generator=g)
    negative = (torch.rand(n, num_ops, generator=g) <= 0.5) & _SIGNED[ops]  # torchvision: rand <= 0.5 negates
    return ops, negative


def randaugment(x: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor, magnitude: int) -> torch.Tensor:
    """Apply each sample's ops in order (ops, negative: (B, num_ops) CPU tensors) to a uint8 batch; a new tensor."""
    x = x.clone()  # written per group below; the caller's batch may be a view of the stored dataset
    h, w = x.shape[-2:]
    for k in range(ops.shape[1]):
        key = ops[:, k] * 2 + negative[:, k]
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        order_d = order.to(x.device)  # one copy per op step; each group is a slice of it
        start = 0
        for kk, c in zip(keys.tolist(), counts.tolist()):
            sel = order_d[start:start + c]
            start += c
            op = RANDAUGMENT_OPS[kk // 2]
            if op != "Identity":
                x[sel] = apply_op(x[sel], op, op_magnitude(op, magnitude, h, w, negative=bool(kk % 2)))
    return x


def cutmix_boxes(lam: torch.Tensor, center: torch.Tensor, height: int, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix boxes (B, 4: y0, y1, x0, x1) for drawn lambdas and centres in [0, 1)^2, and lambda corrected to the box.

    The box has sides sqrt(1 - lam) * (H, W) around the centre, clipped at the border (Yun et al. 2019; timm's
    `rand_bbox`), so the pasted area can be smaller than drawn: the returned lambda is 1 - box area / image area."""
    ratio = torch.sqrt(1.0 - lam.double())
    cut_h, cut_w = (height * ratio).long(), (width * ratio).long()
    cy, cx = (center[:, 0].double() * height).long(), (center[:, 1].double() * width).long()
    y0, y1 = (cy - cut_h // 2).clamp(0, height), (cy + cut_h // 2).clamp(0, height)
    x0, x1 = (cx - cut_w // 2).clamp(0, width), (cx + cut_w // 2).clamp(0, width)
    area = (y1 - y0) * (x1 - x0)
    return torch.stack([y0, y1, x0, x1], 1), (1.0 - area.double() / (height * width)).float()


def cutmix(xa: torch.Tensor, xb: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """`xa` with each sample's box (CPU boxes from `cutmix_boxes`) replaced by the same region of `xb`."""
    h, w = xa.shape[-2:]
    b = boxes.to(xa.device)
    rows, cols = torch.arange(h, device=xa.device), torch.arange(w, device=xa.device)
    in_rows = (rows >= b[:, 0:1]) & (rows < b[:, 1:2])  # (B, H)
    in_cols = (cols >= b[:, 2:3]) & (cols < b[:, 3:4])  # (B, W)
    return torch.where((in_rows[:, :, None] & in_cols[:, None, :])[:, None], xb, xa)


def mixup(xa: torch.Tensor, xb: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """lam * xa + (1 - lam) * xb per sample, on float batches (Zhang et al. 2018)."""
    return torch.lerp(xb, xa, lam.to(xa.device, xa.dtype)[:, None, None, None])
