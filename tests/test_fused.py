"""Fused training (`engine.train_group`, `fused.Fused`) does the science of separate runs, member by member.

Real training on digits at 32 px (CPU, fp32). In a group of 3 members each member's first-step loss and gradients
match its separate run within 1e-5 relative, its first-epoch mean loss within 1e-3 relative and its test accuracy
within 1 point; for KD students with plain, RandAugment and Mixup views, and for unstructured and structured
recoveries. Measured margins on both CPU kinds: benchmarks/RESULTS.md, "Fused students".
"""
from __future__ import annotations

import math

import pytest
import torch

from kdsweep.checkpoint import load_checkpoint
from kdsweep.config import DataConfig
from kdsweep.data import ViewSpec, augment_params, load_dataset, train_batches, train_views
from kdsweep.engine import Member, TrainSpec, recalibrate_bn, teacher_logits, train, train_group
from kdsweep.errors import DivergedError
from kdsweep.fused import Fused
from kdsweep.losses import kd_loss, kd_losses
from kdsweep.models import build_model
from kdsweep.pruning import apply_pruning
from kdsweep.structured import structured_prune

CPU = torch.device("cpu")
TA = [(2.0, 0.5), (4.0, 0.7), (6.0, 0.9)]  # three members: they differ only in temperature and alpha
LS = 0.05
VIEWS = {"plain": [], "randaugment": ["randaugment"], "mixup": ["mixup"]}
STEP_TOL, EPOCH_TOL, ACC_TOL = 1e-5, 1e-3, 0.01
ACC_FLOOR = {"unstructured": 0.80, "structured": 0.65}  # after one 23-step recovery epoch (measured: RESULTS.md)


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mobilenet_v3_small", 10, "none", 0.1)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(dataset="digits", image_size=32, augment=[])
    return load_dataset(cfg), cfg


@pytest.fixture(scope="module")
def small_digits():
    """512 training images: 8 steps per epoch."""
    cfg = DataConfig(dataset="digits", image_size=32, augment=[], train_limit=512)
    return load_dataset(cfg), cfg


@pytest.fixture(scope="module")
def teacher(digits):
    data, cfg = digits
    torch.manual_seed(0)
    model = build_model("resnet18", 10, "none", 0.1)
    train(model, data, ViewSpec.from_config(cfg), TrainSpec(epochs=2, lr=1e-3, batch_size=64), CPU)
    return model


def _view(cfg: DataConfig, name: str) -> ViewSpec:
    return ViewSpec.from_config(cfg, VIEWS[name])


def _logits(teacher, data, view, epochs: int) -> torch.Tensor:
    return teacher_logits(teacher, data, view, seed=0, epochs=epochs, device=CPU)


def _first_step(models: list[torch.nn.Module], data, view: ViewSpec, logits: torch.Tensor | None,
                ta: list[tuple[float, float]]) -> None:
    """One KD step's loss and gradients, fused against each member alone, on the engine's first batch."""
    n = len(data.train_y)
    idx = train_batches(n, 64, 0, 0)[0]
    v = train_views(data.train_x, idx, view, augment_params(0, 0, n, view), CPU)
    x = v.x.contiguous(memory_format=torch.channels_last)
    y = data.train_y[idx]
    y_mix = None if v.partner is None else data.train_y[v.partner]
    t = None if logits is None else logits[0, idx]
    models = [m.to(memory_format=torch.channels_last).train() for m in models]
    group = Fused(models, 1e-3, 1e-4)
    temps, alphas = torch.tensor([a for a, _ in ta]), torch.tensor([b for _, b in ta])
    torch.manual_seed(7)  # the dropout mask: every separate run below draws the same one
    losses = kd_losses(group.forward(x), t, y, temps, alphas, LS, lam=v.lam, partner_targets=y_mix)
    losses.sum().backward()
    for i, (m, (temp, alpha)) in enumerate(zip(models, ta)):
        torch.manual_seed(7)
        loss = kd_loss(m(x), t, y, temp, alpha, LS, lam=v.lam, partner_targets=y_mix)
        loss.backward()
        assert abs(losses[i].item() - loss.item()) <= STEP_TOL * abs(loss.item())
        diff = sum(float((group.params[k].grad[i] - p.grad).square().sum()) for k, p in m.named_parameters())
        norm = sum(float(p.grad.square().sum()) for p in m.parameters())
        worst = max((float((group.params[k].grad[i] - p.grad).norm()), k) for k, p in m.named_parameters())
        assert math.sqrt(diff / norm) <= STEP_TOL, (i, math.sqrt(diff / norm), worst, norm)


@pytest.mark.parametrize("views", list(VIEWS))
def test_first_kd_step_matches_separate_runs(digits, teacher, views):
    data, cfg = digits
    view = _view(cfg, views)
    _first_step([_student() for _ in TA], data, view, _logits(teacher, data, view, 1), TA)


def _compare(separate: list[list[dict]], fused: list[list[dict]], loss: bool = True, acc: bool = True) -> None:
    for s, f in zip(separate, fused):
        assert len(s) == len(f)
        if loss:
            assert abs(f[0]["train_loss"] - s[0]["train_loss"]) <= EPOCH_TOL * s[0]["train_loss"]
        if acc:
            assert abs(f[-1]["test_acc"] - s[-1]["test_acc"]) <= ACC_TOL


def _kd_runs(data, view, logits, epochs: int, models_sep, models_fused, offset: int = 0):
    specs = [TrainSpec(epochs=epochs, lr=1e-3, batch_size=64, temperature=t, alpha=a, label_smoothing=LS,
                       epoch_offset=offset, schedule="constant" if offset else "cosine") for t, a in TA]
    separate = [train(m, data, view, s, CPU, teacher_logits=logits) for m, s in zip(models_sep, specs)]
    fused = train_group([Member(m, s) for m, s in zip(models_fused, specs)], data, view, CPU, teacher_logits=logits)
    assert not any(isinstance(f, DivergedError) for f in fused)
    return separate, fused


@pytest.fixture(scope="module")
def students(digits, teacher):
    """Three KD students trained 4 epochs alone and fused: (separate histories, fused histories, the separate ones'
    models, logits)."""
    data, cfg = digits
    view = _view(cfg, "plain")
    logits = _logits(teacher, data, view, 5)  # 4 student epochs + 1 recovery epoch
    sep_models = [_student() for _ in TA]
    separate, fused = _kd_runs(data, view, logits, 4, sep_models, [_student() for _ in TA])
    return separate, fused, sep_models, logits


def test_fused_kd_students_reach_the_accuracy_of_separate_ones(students):
    separate, fused = students[0], students[1]
    _compare(separate, fused, loss=False)
    for s in separate:  # they learned: the comparison is between real classifiers
        assert s[-1]["test_acc"] >= 0.80


@pytest.mark.parametrize("views", list(VIEWS))
def test_first_fused_epoch_matches_separate_runs(small_digits, teacher, views):
    data, cfg = small_digits
    view = _view(cfg, views)
    separate, fused = _kd_runs(data, view, _logits(teacher, data, view, 1), 1, [_student() for _ in TA],
                               [_student() for _ in TA])
    _compare(separate, fused, acc=False)


def _pruned(parents, kind: str, data, view) -> list[torch.nn.Module]:
    """Each parent pruned (unstructured: 0.2 / 0.3 / 0.5, masks kept for recovery; structured: 0.3 each, which
    gives one shape) and its BatchNorm recalibrated, as `stages.setup_variant` does."""
    out = []
    for parent, amount in zip(parents, (0.2, 0.3, 0.5)):
        m = build_model("mobilenet_v3_small", 10, "none", 0.1)
        m.load_state_dict(parent.state_dict())
        if kind == "structured":
            structured_prune(m, 0.3, 32, 8, "layer", arch="mobilenet_v3_small")
        else:
            apply_pruning(m, amount, "layer")
        recalibrate_bn(m, data, view, CPU, batch_size=64)
        out.append(m)
    return out


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_fused_recoveries_match_separate_ones(digits, small_digits, students, kind):
    parents, logits = students[2], students[3]
    full, cfg = digits
    view = _view(cfg, "plain")
    # the first step on the full set's first batch (on some batches a pruned network's gradient is ill-conditioned:
    # benchmarks/RESULTS.md, "Fused students"), then one recovery epoch of 8 steps: its mean loss
    _first_step(_pruned(parents, kind, full, view), full, view, logits[4:], TA)
    data = small_digits[0]
    sep = _pruned(parents, kind, data, view)
    shapes = {tuple(tuple(t.shape) for t in m.state_dict().values()) for m in sep}
    assert len(shapes) == 1  # one fusable shape
    separate, fused = _kd_runs(data, view, logits[:, :len(data.train_y)], 1, sep, _pruned(parents, kind, data, view),
                               offset=4)  # train_limit keeps the first images
    _compare(separate, fused, acc=False)
    # accuracy after a whole recovery epoch (23 steps): after 8 the networks sit at 0.5-0.6, where a handful of test
    # images flip on float noise alone (RESULTS.md)
    separate, fused = _kd_runs(full, view, logits, 1, _pruned(parents, kind, full, view),
                               _pruned(parents, kind, full, view), offset=4)
    _compare(separate, fused, loss=False)
    for s in separate:  # they recovered: the comparison is between real classifiers
        assert s[-1]["test_acc"] >= ACC_FLOOR[kind]


@pytest.fixture(scope="module")
def small(small_digits, teacher):
    """The fault and resume tests' data, views and logits."""
    data, cfg = small_digits
    view = ViewSpec.from_config(cfg)
    return data, view, _logits(teacher, data, view, 3)


def _specs(epochs: int, ta=TA) -> list[TrainSpec]:
    return [TrainSpec(epochs=epochs, lr=1e-3, batch_size=64, temperature=t, alpha=a, label_smoothing=LS)
            for t, a in ta]


def test_a_diverging_member_leaves_its_group_and_the_others_finish(small, tmp_path):
    data, view, logits = small
    ta = [TA[0], (1e-39, 0.9), TA[2]]  # T underflows: that member's loss is NaN from its first step
    ckpts = [tmp_path / f"m{i}.pt" for i in range(3)]
    out = train_group([Member(_student(), s, c) for s, c in zip(_specs(2, ta), ckpts)], data, view, CPU,
                      teacher_logits=logits)
    assert isinstance(out[1], DivergedError) and "non-finite loss" in str(out[1]) and "epoch 1, step 1" in str(out[1])
    assert not ckpts[1].exists()  # no good epoch to keep
    separate = [train(_student(), data, view, s, CPU, teacher_logits=logits) for s in _specs(2, [TA[0], TA[2]])]
    for f, c in zip([out[0], out[2]], [ckpts[0], ckpts[2]]):
        assert [r["epoch"] for r in f] == [1, 2] and load_checkpoint(c)["epoch"] == 2
        assert all(math.isfinite(r["train_loss"]) for r in f)
    _compare(separate, [out[0], out[2]])


class _Killed(Exception):
    pass


def test_a_killed_group_resumes_each_member_from_its_own_epoch(small, tmp_path):
    data, view, logits = small
    ckpts = [tmp_path / f"m{i}.pt" for i in range(3)]

    def kill_at_epoch_2(row: dict) -> None:
        if row["epoch"] == 2:
            raise _Killed  # after members 0 and 1 saved epoch 2, before member 2 did

    members = [Member(_student(), s, c, on_epoch=kill_at_epoch_2 if i == 1 else None, tag={"run": 1})
               for i, (s, c) in enumerate(zip(_specs(3), ckpts))]
    with pytest.raises(_Killed):
        train_group(members, data, view, CPU, teacher_logits=logits)
    assert [load_checkpoint(c)["epoch"] for c in ckpts] == [2, 2, 1]
    resumed = train_group([Member(_student(), s, c, tag={"run": 2}) for s, c in zip(_specs(3), ckpts)], data, view,
                          CPU, teacher_logits=logits)
    whole = train_group([Member(_student(), s) for s in _specs(3)], data, view, CPU, teacher_logits=logits)
    assert [[r["run"] for r in h] for h in resumed] == [[1, 1, 2], [1, 1, 2], [1, 2, 2]]  # each epoch once
    for r, w in zip(resumed, whole):
        assert [x["epoch"] for x in r] == [1, 2, 3]
        for a, b in zip(r, w):
            assert abs(a["train_loss"] - b["train_loss"]) <= EPOCH_TOL * b["train_loss"]
        assert abs(r[-1]["test_acc"] - w[-1]["test_acc"]) <= ACC_TOL
    # a finished member is not trained again: its history comes back as saved
    again = train_group([Member(_student(), s, c) for s, c in zip(_specs(3), ckpts)], data, view, CPU,
                        teacher_logits=logits)
    assert again == resumed
