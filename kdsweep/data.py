"""Datasets as uint8 tensors held once in memory, and batched device-side views (resize, normalise, augment).

Augmentation and sample order are pure functions of (seed, epoch, index), so any epoch's views can be replayed
exactly; that is what lets the teacher's logits be computed once and reused by every KD trial.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import folders
from .augment import cutmix, cutmix_boxes, draw_randaugment, mixup, randaugment
from .config import DataConfig
from .dataset import Dataset
from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PAD = 4
MIXES = ("mixup", "cutmix")  # augmentations that blend two training images


@dataclass(frozen=True)
class ViewSpec:
    """How stored images become model inputs."""

    image_size: int = 224
    normalize: str = "imagenet"
    augment: tuple[str, ...] = ("flip",)
    # used only when `augment` lists the op; defaults are DataConfig's
    randaugment_ops: int = 2  # ops per image
    randaugment_magnitude: int = 9  # torchvision's 0-30 bins
    mixup_alpha: float = 0.2  # Beta(a, a) of mixup's lambda
    cutmix_alpha: float = 1.0  # Beta(a, a) of cutmix's drawn area

    @classmethod
    def from_config(cls, cfg: DataConfig, augment: list[str] | None = None) -> ViewSpec:
        """The views of `cfg`, with a stage's own augmentation list if given (config.stage_augment)."""
        return cls(cfg.image_size, cfg.normalize, tuple(cfg.augment if augment is None else augment),
                   cfg.randaugment.num_ops, cfg.randaugment.magnitude, cfg.mixup_alpha, cfg.cutmix_alpha)

    @property
    def mixing(self) -> str | None:
        """`mixup`, `cutmix` or None: whether a view blends in a partner image."""
        return next((a for a in self.augment if a in MIXES), None)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load the configured dataset into memory as uint8 tensors."""
    loaders = {"cifar10": _cifar, "cifar100": _cifar, "digits": _digits, "synthetic": _synthetic,
               "tiny-imagenet": folders.tiny_imagenet, "imagefolder": folders.imagefolder}
    ds = loaders[cfg.dataset](cfg)
    tl, vl = cfg.train_limit, cfg.test_limit
    if cfg.dataset != "synthetic" and (tl or vl):
        ds = Dataset(ds.name, ds.train_x[:tl], ds.train_y[:tl], ds.test_x[:vl], ds.test_y[:vl], ds.classes)
    return ds


# --- sources -----------------------------------------------------------------------------------------------

def _cifar(cfg: DataConfig) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if cfg.dataset == "cifar10" else CIFAR100
    root = Path(cfg.root).expanduser()
    folder = root / base.base_folder
    if folder.is_dir():
        _check_files(base, folder, cfg.verify)
    elif not cfg.download:
        raise DataError(f"data.root: {str(folder)!r} not found and data.download is false")

    class Loader(base):  # type: ignore[misc, valid-type]
        # torchvision re-checks md5 on every construction; `verify: false` (generated archives) only needs the files
        def _check_integrity(self) -> bool:
            return super()._check_integrity() if cfg.verify else all(
                (folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            if cfg.verify:
                return super()._load_meta()
            import pickle

            with open(folder / self.meta["filename"], "rb") as f:
                meta = pickle.load(f, encoding="latin1")  # same read as torchvision's, minus the md5 check
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        train, test = (Loader(str(root), train=t, download=cfg.download) for t in (True, False))
    except Exception as exc:  # torchvision raises bare RuntimeError/URLError; name the source
        raise DataError(f"data.root: could not load {cfg.dataset} from {str(root)!r}: {exc}") from exc
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    return Dataset(cfg.dataset, to_t(train.data), torch.tensor(train.targets, dtype=torch.int64),
                   to_t(test.data), torch.tensor(test.targets, dtype=torch.int64), tuple(train.classes))


def _check_files(base: type, folder: Path, verify: bool) -> None:
    """Fail clearly on a missing file or (with verify) a checksum mismatch, instead of a silent re-download."""
    for name, md5 in base.train_list + base.test_list + [(base.meta["filename"], base.meta["md5"])]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"data.root: {str(path)!r} is missing (delete {str(folder)!r} to re-download)")
        if verify:
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest != md5:
                raise DataError(f"data.verify: checksum mismatch for {str(path)!r} (md5 {digest}, expected {md5}); "
                                "delete the folder to re-download, or set data.verify: false for a generated archive")


def digits_arrays(split_seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits as uint8 NCHW RGB at `size` px, fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N,1,8,8) in [0,1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    return train_test_split(x, d.target.astype(np.int64), test_size=0.2, stratify=d.target, random_state=split_seed)


def _digits(cfg: DataConfig) -> Dataset:
    # Stored at 32 px like CIFAR, so crop/flip and the resize to image_size behave as they do on CIFAR.
    xtr, xte, ytr, yte = digits_arrays(cfg.split_seed)
    t = torch.from_numpy
    return Dataset("digits", t(xtr), t(ytr), t(xte), t(yte), tuple(str(i) for i in range(10)))


def _synthetic(cfg: DataConfig) -> Dataset:
    g = torch.Generator().manual_seed(cfg.split_seed)
    ntr, nte = cfg.train_limit or 1024, cfg.test_limit or 256
    mk = lambda n: (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g))
    (xtr, ytr), (xte, yte) = mk(ntr), mk(nte)
    return Dataset("synthetic", xtr, ytr, xte, yte, tuple(str(i) for i in range(10)))


# --- replayable order and augmentation ---------------------------------------------------------------------

# Generator streams (the `stream` of _generator): 0 sample order, 1 flip and crop, 2 RandAugment ops and signs,
# 3 mixing partners, 4 mixing lambdas and CutMix centres (numpy, seeded with the same number).
def _stream_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch) * 16 + stream


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    # distinct, reproducible streams per (seed, epoch, purpose)
    return torch.Generator().manual_seed(_stream_seed(seed, epoch, stream))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one training epoch."""
    return torch.randperm(n, generator=_generator(seed, epoch, 0))


@dataclass(frozen=True)
class AugmentParams:
    """One epoch's per-sample draws, indexed by sample index; those of augmentations not asked for are None."""

    flip: torch.Tensor  # (N,) bool
    dy: torch.Tensor  # (N,) int64 crop offsets in [0, 2*CROP_PAD]
    dx: torch.Tensor
    ops: torch.Tensor | None = None  # (N, num_ops) int64 indices into augment.RANDAUGMENT_OPS
    negative: torch.Tensor | None = None  # (N, num_ops) bool: that op's magnitude is negated
    partner: torch.Tensor | None = None  # (N,) int64: the training image sample i is mixed with (a permutation)
    lam: torch.Tensor | None = None  # (N,) float32 ~ Beta(a, a): mixup's weight of sample i; cutmix's drawn kept area
    center: torch.Tensor | None = None  # (N, 2) float32 in [0, 1): cutmix box centre (y, x) as fractions of the size


def augment_params(seed: int, epoch: int, n: int, spec: ViewSpec | None = None) -> AugmentParams:
    """Per-sample augmentation draws of one epoch: a pure function of (seed, epoch, index).

    Flip and crop are always drawn; RandAugment and mixing draws only when `spec` lists them (each from its own
    stream, so adding one never changes another's draws). Mixing partners are a permutation of the whole training
    set, so a sample's partner, like everything else here, is independent of batch size and composition."""
    g = _generator(seed, epoch, 1)
    flip = torch.rand(n, generator=g) < 0.5
    off = torch.randint(0, 2 * CROP_PAD + 1, (2, n), generator=g)
    extra: dict[str, torch.Tensor] = {}
    if spec is not None and "randaugment" in spec.augment:
        extra["ops"], extra["negative"] = draw_randaugment(_generator(seed, epoch, 2), n, spec.randaugment_ops)
    mix = spec.mixing if spec is not None else None
    if mix:
        extra["partner"] = torch.randperm(n, generator=_generator(seed, epoch, 3))
        rng = np.random.default_rng(_stream_seed(seed, epoch, 4))  # torch's Beta sampler takes no generator
        a = spec.mixup_alpha if mix == "mixup" else spec.cutmix_alpha
        extra["lam"] = torch.from_numpy(rng.beta(a, a, n).astype(np.float32))
        if mix == "cutmix":
            extra["center"] = torch.from_numpy(rng.random((n, 2), dtype=np.float32))
    return AugmentParams(flip, off[0], off[1], **extra)


def _random_crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Batched pad-4 random crop at native size, one offset per sample."""
    b, c, h, w = x.shape
    xp = F.pad(x, (CROP_PAD,) * 4)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


def _augment(x: torch.Tensor, spec: ViewSpec, aug: AugmentParams, idx_cpu: torch.Tensor) -> torch.Tensor:
    """Crop, flip, then RandAugment a uint8 batch at its stored size, each sample by its own draws."""
    if "crop" in spec.augment:
        x = _random_crop(x, aug.dy[idx_cpu].to(x.device), aug.dx[idx_cpu].to(x.device))
    if "flip" in spec.augment:
        f = aug.flip[idx_cpu].to(x.device)
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
    if "randaugment" in spec.augment:
        if aug.ops is None:
            raise ValueError("augment: randaugment needs its draws: call augment_params(seed, epoch, n, spec)")
        x = randaugment(x, aug.ops[idx_cpu], aug.negative[idx_cpu], spec.randaugment_magnitude)
    return x


def _resize_normalize(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """A float batch of 0-255 values that the caller owns (scaled in place) -> resized, normalised model input."""
    if x.shape[-1] != spec.image_size or x.shape[-2] != spec.image_size:
        down = spec.image_size < max(x.shape[-2:])
        x = F.interpolate(x, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False, antialias=down)
    # resizing is linear, so scaling after it is the same maths; doing /255 and the normalisation as one in-place
    # multiply-add on the (small) output saves two full-size passes per batch at 224 px
    if spec.normalize == "imagenet":
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
        return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
    return x.div_(255.0)


def make_views(x: torch.Tensor, spec: ViewSpec, aug: AugmentParams | None = None,
               idx: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 batch (on the target device) -> normalised float views; `aug` + `idx` select the augmentation.

    Mixing needs partner images from the whole training set: training views go through `train_views`."""
    if aug is not None and spec.augment:
        if spec.mixing:
            raise ValueError(f"augment: {spec.mixing} mixes in images from the whole training set; use train_views")
        x = _augment(x, spec, aug, idx.cpu())
    return _resize_normalize(x.to(dtype, copy=True), spec)  # a new tensor even for float input: scaled in place


@dataclass(frozen=True)
class TrainViews:
    """A training batch's model inputs; with mixup/cutmix also each sample's partner and own-label weight."""

    x: torch.Tensor
    partner: torch.Tensor | None = None  # (B,) int64 on the CPU: training-set index of the image mixed in
    lam: torch.Tensor | None = None  # (B,) float32 on the device: weight of the sample's own label (CutMix: real area)


def _gather(x_all: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    # a training set kept on the GPU (engine.train) is indexed there; from the CPU only the batch moves
    if x_all.device.type != "cpu":
        return x_all[idx.to(x_all.device)].to(device)
    return x_all[idx].to(device)


def train_views(x_all: torch.Tensor, idx: torch.Tensor, spec: ViewSpec, aug: AugmentParams | None,
                device: torch.device, dtype: torch.dtype = torch.float32) -> TrainViews:
    """Training views of samples `idx` of the whole uint8 training set `x_all` (on the CPU or already on `device`).

    Order: crop, flip, RandAugment, then mixing, all at the stored size, then the resize to `image_size`. With
    mixup/cutmix, sample i is blended with the view of `aug.partner[i]` made with the partner's own draws. Every
    view is a pure function of (seed, epoch, index), never of the batch it is made in."""
    idx = idx.cpu()
    mix = spec.mixing if aug is not None else None
    if not mix:
        return TrainViews(make_views(_gather(x_all, idx, device), spec, aug, idx, dtype))
    partner = aug.partner[idx]
    both = torch.cat([idx, partner])
    x = _augment(_gather(x_all, both, device), spec, aug, both)  # one batched pass for samples and partners
    xa, xb = x[:len(idx)], x[len(idx):]
    lam = aug.lam[idx]
    if mix == "cutmix":
        boxes, lam = cutmix_boxes(lam, aug.center[idx], *x.shape[-2:])
        x = cutmix(xa, xb, boxes).to(dtype)
    else:
        x = mixup(xa.to(dtype), xb.to(dtype), lam)
    return TrainViews(_resize_normalize(x, spec), partner, lam.to(device))


def train_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """Index batches of one epoch; a trailing batch of one sample is dropped (BatchNorm cannot train on it)."""
    order = epoch_order(seed, epoch, n)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches
