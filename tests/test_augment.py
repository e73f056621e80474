"""RandAugment, Mixup and CutMix: per-sample, replayable from (seed, epoch, index), identical for teacher and student.

Real small data: sklearn digits stored at 32 px, tiny CNNs on the CPU.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import RandAugment

from kdsweep import augment as A
from kdsweep.config import DataConfig
from kdsweep.data import ViewSpec, augment_params, digits_arrays, epoch_order, make_views, train_batches, train_views
from kdsweep.dataset import Dataset
from kdsweep.engine import TrainSpec, teacher_logits, train
from kdsweep.measure import accuracy

CPU = torch.device("cpu")
MIXED = [("crop", "flip", "randaugment"), ("crop", "flip", "mixup"), ("crop", "flip", "cutmix"),
         ("crop", "randaugment", "cutmix")]
EACH = [("crop", "flip", "randaugment"), ("crop", "flip", "mixup"), ("flip", "randaugment", "cutmix")]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    xtr, xte, ytr, yte = digits_arrays()
    t = torch.from_numpy
    return Dataset("digits", t(xtr), t(ytr), t(xte), t(yte), tuple(str(i) for i in range(10)))


@pytest.fixture(scope="module")
def small(digits) -> Dataset:
    d = digits
    return Dataset("digits", d.train_x[:64], d.train_y[:64], d.test_x[:32], d.test_y[:32], d.classes)


def _net(seed: int = 0) -> nn.Module:
    """A small CNN (no dropout): fast on 2 CPU cores, and it learns digits at 32 px in a few epochs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _views(x_all, idx, spec, aug, bs):
    return torch.cat([train_views(x_all, c, spec, aug, CPU).x for c in idx.split(bs)])


# --- RandAugment ops ---------------------------------------------------------------------------------------

def test_randaugment_ops_are_torchvisions(digits):
    """Same op list, magnitudes and pixels as torchvision's RandAugment, applied to a batch at once."""
    tv = RandAugment()
    assert tuple(tv._AUGMENTATION_SPACE) == A.RANDAUGMENT_OPS
    tint = torch.tensor([1.0, 0.7, 0.4])[:, None, None]  # digits are grey: colour them so Color has work to do
    x = (digits.train_x[:6] * tint).round().to(torch.uint8)
    for op in A.RANDAUGMENT_OPS:
        fn, signed = tv._AUGMENTATION_SPACE[op]
        for bin_, negative in ((9, False), (9, True), (30, True)):
            mags = fn(A.NUM_BINS, 32, 32)
            want = 0.0 if mags is None else float(mags[bin_]) * (-1 if signed and negative else 1)
            value = A.op_magnitude(op, bin_, 32, 32, negative)
            assert value == want, op
            ref = torch.stack([tv._apply_image_or_video_transform(xi, op, value, interpolation=tv.interpolation,
                                                                  fill=tv._fill) for xi in x])
            assert torch.equal(A.apply_op(x, op, value), ref), (op, bin_, negative)
            if op not in ("Identity", "AutoContrast", "Equalize"):
                assert (ref != x).any() or bin_ == 0, op  # a real op at this magnitude changes digits


def test_randaugment_is_per_sample_and_changes_images(digits):
    n = len(digits.train_y)
    spec = ViewSpec(32, "none", ("randaugment",), randaugment_ops=2, randaugment_magnitude=9)
    aug = augment_params(0, 0, n, spec)
    assert aug.ops.shape == (n, 2) and set(aug.ops.flatten().tolist()) == set(range(len(A.RANDAUGMENT_OPS)))
    assert aug.negative.any() and not aug.negative.all()
    signed = torch.tensor([A.RANDAUGMENT_SPACE[o][1] for o in A.RANDAUGMENT_OPS])
    assert not (aug.negative & ~signed[aug.ops]).any()  # unsigned ops never carry a sign: fewer groups
    idx = torch.arange(32)
    assert len({tuple(r) for r in aug.ops[idx].tolist()}) > 16  # samples of one batch get different ops
    got = make_views(digits.train_x[idx], spec, aug, idx)
    plain = make_views(digits.train_x[idx], spec)
    changed = (got != plain).flatten(1).any(1)
    assert int(changed.sum()) >= 24
    # each sample is exactly its own ops, in order, applied to it alone
    for i in idx.tolist():
        img = digits.train_x[i:i + 1]
        for op_i, neg in zip(aug.ops[i].tolist(), aug.negative[i].tolist()):
            op = A.RANDAUGMENT_OPS[op_i]
            img = A.apply_op(img, op, A.op_magnitude(op, 9, 32, 32, neg))
        assert torch.equal(got[i], img[0].float() / 255), i


def test_randaugment_magnitude_and_num_ops_matter(digits):
    idx = torch.arange(24)
    x = digits.train_x[idx]
    mk = lambda **kw: ViewSpec(32, "none", ("randaugment",), **kw)
    weak, strong = mk(randaugment_magnitude=1), mk(randaugment_magnitude=25)
    dist = lambda s: (make_views(x, s, augment_params(0, 0, 24, s), idx) - make_views(x, s)).abs().mean()
    assert dist(strong) > 2 * dist(weak)
    assert augment_params(0, 0, 24, mk(randaugment_ops=3)).ops.shape == (24, 3)


# --- draws -------------------------------------------------------------------------------------------------

def test_new_draws_leave_flip_and_crop_and_are_pure():
    base = augment_params(5, 3, 300)
    spec = ViewSpec(32, "none", ("flip", "crop", "randaugment", "cutmix"))
    a, b = augment_params(5, 3, 300, spec), augment_params(5, 3, 300, spec)
    assert base.ops is None and base.partner is None  # nothing drawn for augmentations not asked for
    for f in ("flip", "dy", "dx"):
        assert torch.equal(getattr(base, f), getattr(a, f))  # adding augmentations keeps older views' draws
    for f in ("ops", "negative", "partner", "lam", "center"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert torch.equal(a.partner.sort().values, torch.arange(300))  # a permutation of the whole training set
    assert not torch.equal(a.partner, epoch_order(5, 3, 300))  # its own stream, not the sample order
    assert float(a.lam.min()) >= 0 and float(a.lam.max()) <= 1 and float(a.center.min()) >= 0
    c = augment_params(5, 4, 300, spec)
    assert not torch.equal(a.partner, c.partner) and not torch.equal(a.lam, c.lam)
    assert not torch.equal(a.ops, c.ops)
    # mixup's Beta(0.2, 0.2) puts most lambdas near 0 or 1; cutmix's Beta(1, 1) is uniform
    lam_mix = augment_params(5, 3, 2000, ViewSpec(32, "none", ("mixup",))).lam
    lam_cut = augment_params(5, 3, 2000, ViewSpec(32, "none", ("cutmix",))).lam
    assert float(((lam_mix < 0.1) | (lam_mix > 0.9)).float().mean()) > 0.6
    assert 0.45 < float(lam_cut.mean()) < 0.55


def test_view_spec_from_config_carries_the_new_settings():
    cfg = DataConfig(dataset="digits", image_size=32, augment=["randaugment", "cutmix"],
                     randaugment={"num_ops": 3, "magnitude": 12}, cutmix_alpha=0.5)
    spec = ViewSpec.from_config(cfg, ["crop", "mixup"])
    assert spec == ViewSpec(32, "imagenet", ("crop", "mixup"), 3, 12, 0.2, 0.5)
    assert spec.mixing == "mixup" and ViewSpec.from_config(cfg).mixing == "cutmix"
    assert ViewSpec(32, "none", ("flip", "crop")).mixing is None


# --- replay: a view depends on (seed, epoch, index) only ---------------------------------------------------

@pytest.mark.parametrize("augment", MIXED)
def test_views_replay_whatever_the_batch(digits, augment):
    spec = ViewSpec(32, "imagenet", augment)
    n = len(digits.train_y)
    aug = augment_params(1, 2, n, spec)
    idx = epoch_order(1, 2, n)[:32]
    one = _views(digits.train_x, idx, spec, aug, 32)
    assert torch.equal(_views(digits.train_x, idx, spec, aug, 8), one)
    rev = _views(digits.train_x, idx.flip(0), spec, aug, 8).flip(0)  # other neighbours, other batch positions
    assert torch.equal(rev, one)
    other_epoch = _views(digits.train_x, idx, spec, augment_params(1, 3, n, spec), 32)
    other_seed = _views(digits.train_x, idx, spec, augment_params(2, 2, n, spec), 32)
    plain = make_views(digits.train_x[idx], spec)
    for other in (other_epoch, other_seed, plain):
        assert (other != one).flatten(1).any(1).float().mean() > 0.5


def test_make_views_refuses_to_mix(digits):
    spec = ViewSpec(32, "none", ("mixup",))
    with pytest.raises(ValueError, match="augment: mixup .* train_views"):
        make_views(digits.train_x[:4], spec, augment_params(0, 0, 4, spec), torch.arange(4))
    assert torch.equal(make_views(digits.train_x[:4], spec), digits.train_x[:4].float() / 255)  # eval view is fine


def test_mixup_blends_each_sample_with_its_partners_own_view(digits):
    n = len(digits.train_y)
    spec = ViewSpec(32, "none", ("crop", "flip", "mixup"))
    aug = augment_params(0, 1, n, spec)
    idx = torch.tensor([5, 700, 12, 1300, 99])
    v = train_views(digits.train_x, idx, spec, aug, CPU)
    assert torch.equal(v.partner, aug.partner[idx]) and torch.equal(v.lam, aug.lam[idx])
    unmixed = ViewSpec(32, "none", ("crop", "flip"))
    own = make_views(digits.train_x[idx], unmixed, aug, idx)
    other = make_views(digits.train_x[v.partner], unmixed, aug, v.partner)  # the partner's own crop and flip
    lam = v.lam[:, None, None, None]
    torch.testing.assert_close(v.x, lam * own + (1 - lam) * other, rtol=0, atol=1e-6)


def test_cutmix_pastes_the_partners_box_and_corrects_lambda(digits):
    n = len(digits.train_y)
    spec = ViewSpec(32, "none", ("crop", "cutmix"))
    aug = augment_params(3, 0, n, spec)
    idx = torch.arange(64)
    v = train_views(digits.train_x, idx, spec, aug, CPU)
    unmixed = ViewSpec(32, "none", ("crop",))
    own = make_views(digits.train_x[idx], unmixed, aug, idx)
    other = make_views(digits.train_x[v.partner], unmixed, aug, v.partner)
    boxes, lam = A.cutmix_boxes(aug.lam[idx], aug.center[idx], 32, 32)
    assert torch.equal(v.lam, lam)
    for j in range(64):
        y0, y1, x0, x1 = boxes[j].tolist()
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(v.x[j][:, inside], other[j][:, inside])
        assert torch.equal(v.x[j][:, ~inside], own[j][:, ~inside])
        assert float(v.lam[j]) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024, abs=1e-6)
    assert (v.lam > aug.lam[idx] + 0.01).any()  # boxes clipped at the border: less pasted than drawn


def test_cutmix_boxes_by_hand():
    # lam 0.75: side sqrt(0.25) * 32 = 16; centred at (16, 16) -> rows/cols 8..24; at the corner -> clipped to 8x8
    boxes, lam = A.cutmix_boxes(torch.tensor([0.75, 0.75, 1.0]), torch.tensor([[0.5, 0.5], [0.0, 0.0], [0.3, 0.3]]),
                                32, 32)
    assert boxes.tolist() == [[8, 24, 8, 24], [0, 8, 0, 8], [9, 9, 9, 9]]
    assert lam.tolist() == pytest.approx([0.75, 1 - 64 / 1024, 1.0])


# --- consistent teaching: cached teacher logits are the online teacher's on the same views -----------------

@pytest.mark.parametrize("augment", EACH)
def test_cached_logits_equal_the_online_teacher_for_any_batch(small, augment):
    spec = ViewSpec(32, "imagenet", augment)
    teacher = _net(1).eval()
    cached = teacher_logits(teacher, small, spec, seed=4, epochs=2, device=CPU, batch_size=40)
    n = len(small.train_y)
    for e, sizes in ((0, (24,)), (1, (8, 24))):
        aug = augment_params(4, e, n, spec)
        for bs in sizes:
            for idx in train_batches(n, bs, 4, e):
                with torch.no_grad():
                    online = teacher(train_views(small.train_x, idx, spec, aug, CPU).x)
                torch.testing.assert_close(cached[e, idx].float(), online, rtol=2e-3, atol=2e-3)
    assert not torch.allclose(cached[0].float(), cached[1].float(), atol=1e-2)  # per view, not per image


@pytest.mark.parametrize("augment", [("crop", "randaugment", "mixup"), ("flip", "randaugment", "cutmix")])
def test_train_with_cached_or_online_teacher_gives_the_same_loss(small, augment):
    spec = ViewSpec(32, "imagenet", augment)
    teacher = _net(1).eval()
    # one step (the batch is the whole set): the two runs differ only by the cache's fp16 rounding of the targets; over
    # several steps Adam amplifies that rounding, and a loose tolerance on the mean is all one could assert
    ts = TrainSpec(epochs=1, lr=1e-3, batch_size=64, seed=2, temperature=4.0, alpha=0.7, label_smoothing=0.05)
    logits = teacher_logits(teacher, small, spec, seed=2, epochs=1, device=CPU, batch_size=64)
    a = train(_net(0), small, spec, ts, CPU, teacher_logits=logits, evaluate=False)[0]
    b = train(_net(0), small, spec, ts, CPU, teacher=teacher, evaluate=False)[0]
    assert a["teacher_forward_images"] == 0 and b["teacher_forward_images"] == 64
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["train_acc"] == b["train_acc"]  # the same student logits: its hits are counted before its first step


def test_baseline_loss_with_mixup_is_the_lambda_weighted_ce(small):
    """alpha 0 (no KD): the engine's first-step loss is lam*CE(y) + (1-lam)*CE(y_partner), computed here by hand."""
    spec = ViewSpec(32, "none", ("mixup",))
    ts = TrainSpec(epochs=1, lr=0.0, batch_size=64, seed=0, label_smoothing=0.1)  # one step, weights unchanged
    model = _net(0)
    hist = train(model, small, spec, ts, CPU, evaluate=False)
    idx = train_batches(64, 64, 0, 0)[0]
    aug = augment_params(0, 0, 64, spec)
    v = train_views(small.train_x, idx, spec, aug, CPU)
    model2 = _net(0).train()
    with torch.no_grad():
        logp = torch.log_softmax(model2(v.x), 1)
    y, yb = small.train_y[idx], small.train_y[v.partner]
    ce = lambda t: -(0.9 * logp.gather(1, t[:, None])[:, 0] + 0.1 * logp.mean(1))  # smoothed CE
    want = (v.lam * ce(y) + (1 - v.lam) * ce(yb)).mean()
    assert hist[0]["train_loss"] == pytest.approx(float(want), rel=1e-4)
    assert float((y != yb).float().mean()) > 0.5 and 0.2 < float(v.lam.mean()) < 0.8  # both labels really count
    # train accuracy counts the dominant label of each mix
    pred = model2(v.x).argmax(1)
    assert hist[0]["train_acc"] == pytest.approx(float((pred == torch.where(v.lam >= 0.5, y, yb)).float().mean()))


# --- it still learns ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("augment", [("randaugment",), ("crop", "mixup")])
def test_training_with_new_augmentations_learns_digits(digits, augment):
    # measured over seeds 0-2 (6 epochs): no augmentation 0.97; randaugment 0.86-0.93; crop + mixup 0.91-0.95;
    # last/first epoch loss 0.51-0.57 (harder views learn slower in a short run; chance is 0.10)
    spec = ViewSpec(32, "imagenet", augment)
    model = _net(0)
    hist = train(model, digits, spec, TrainSpec(epochs=6, lr=3e-3, batch_size=64, seed=0), CPU, evaluate=False)
    assert hist[-1]["train_loss"] < 0.65 * hist[0]["train_loss"]
    assert accuracy(model, digits.test_x, digits.test_y, spec, CPU) >= 0.82
