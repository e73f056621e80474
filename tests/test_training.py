"""Real training on real (small) data: sklearn digits at 32 px, CPU. Accuracy bounds are the issue's acceptance."""
from __future__ import annotations

import pytest
import torch

from kdsweep.config import DataConfig
from kdsweep.data import ViewSpec, augment_params, load_dataset, make_views, train_batches
from kdsweep.engine import TrainSpec, recalibrate_bn, teacher_logits, train
from kdsweep.errors import DivergedError
from kdsweep.losses import kd_loss
from kdsweep.measure import accuracy
from kdsweep.models import build_model
from kdsweep.pruning import apply_pruning, make_permanent, sparsity_report

CPU = torch.device("cpu")
KD = dict(temperature=4.0, alpha=0.9, label_smoothing=0.05)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(dataset="digits", image_size=32, augment=[])
    return load_dataset(cfg), ViewSpec.from_config(cfg)


@pytest.fixture(scope="module")
def trained(digits):
    """Teacher (5 epochs) -> cached logits -> KD student (8 epochs), the recipe of configs/smoke.yaml."""
    data, view = digits
    torch.manual_seed(0)
    teacher = build_model("resnet18", 10)
    t_hist = train(teacher, data, view, TrainSpec(epochs=5, lr=1e-3, batch_size=64), CPU)
    logits = teacher_logits(teacher, data, view, seed=0, epochs=10, device=CPU)
    student = build_model("mobilenet_v3_small", 10)
    s_hist = train(student, data, view, TrainSpec(epochs=8, lr=1e-3, batch_size=64, **KD), CPU, teacher_logits=logits)
    return teacher, t_hist, logits, student, s_hist


@pytest.mark.slow
def test_teacher_reaches_95_percent_in_5_epochs(digits, trained):
    data, view = digits
    teacher, hist = trained[0], trained[1]
    assert len(hist) == 5
    assert accuracy(teacher, data.test_x, data.test_y, view, CPU) >= 0.95
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


@pytest.mark.slow
def test_kd_student_reaches_90_percent_in_eval_mode(digits, trained):
    data, view = digits
    student, hist = trained[3], trained[4]
    student.eval()
    assert accuracy(student, data.test_x, data.test_y, view, CPU) >= 0.90
    # cached logits: the KD student never ran the teacher
    assert sum(r["teacher_forward_images"] for r in hist) == 0


@pytest.mark.slow
def test_half_pruned_student_recovers(digits, trained):
    data, view = digits
    student = build_model("mobilenet_v3_small", 10)
    student.load_state_dict(trained[3].state_dict())
    apply_pruning(student, 0.5, "layer")
    recalibrate_bn(student, data, view, CPU, batch_size=64)
    spec = TrainSpec(epochs=2, lr=1e-3, batch_size=64, schedule="constant", epoch_offset=8, **KD)
    train(student, data, view, spec, CPU, teacher_logits=trained[2])
    make_permanent(student)
    assert not any("weight_mask" in k for k in student.state_dict())
    assert sparsity_report(student).sparsity == pytest.approx(0.50, abs=0.01)
    assert accuracy(student, data.test_x, data.test_y, view, CPU) >= 0.88


@pytest.mark.slow
def test_bn_recalibration_after_pruning_helps(digits, trained):
    data, view = digits
    student = build_model("mobilenet_v3_small", 10)
    student.load_state_dict(trained[3].state_dict())
    apply_pruning(student, 0.5, "layer")
    before = accuracy(student, data.test_x, data.test_y, view, CPU)
    recalibrate_bn(student, data, view, CPU, batch_size=64)
    after = accuracy(student, data.test_x, data.test_y, view, CPU)
    assert after > before + 0.1


@pytest.mark.slow
def test_cached_and_online_teacher_give_the_same_loss(digits, trained):
    data, _ = digits
    view = ViewSpec(32, "imagenet", ("flip", "crop"))  # augmentation must replay exactly for caching to be exact
    teacher = trained[0].eval()
    cached = teacher_logits(teacher, data, view, seed=3, epochs=3, device=CPU)
    idx = train_batches(len(data.train_y), 64, seed=3, epoch=2)[0]
    x = make_views(data.train_x[idx], view, augment_params(3, 2, len(data.train_y)), idx)
    with torch.no_grad():
        online = teacher(x)
    student_logits = torch.randn(len(idx), 10)
    y = data.train_y[idx]
    a = kd_loss(student_logits, cached[2, idx], y, **KD)
    b = kd_loss(student_logits, online, y, **KD)
    assert a.item() == pytest.approx(b.item(), rel=2e-3)
    # and a different epoch's views give different logits: the cache is per view, not per image
    assert not torch.allclose(cached[1, idx].float(), cached[2, idx].float(), atol=1e-2)


def test_resume_from_checkpoint_is_exact(digits, tmp_path):
    data, _ = digits
    small = type(data)("digits", data.train_x[:256], data.train_y[:256], data.test_x[:64],
                       data.test_y[:64], data.classes)
    view = ViewSpec(32, "imagenet", ("flip", "crop"))
    spec = TrainSpec(epochs=2, lr=1e-3, batch_size=64, seed=1)

    torch.manual_seed(0)
    straight = build_model("mobilenet_v3_small", 10)
    init = {k: v.clone() for k, v in straight.state_dict().items()}
    train(straight, small, view, spec, CPU, evaluate=False)

    ckpt = tmp_path / "ckpt.pt"
    first = build_model("mobilenet_v3_small", 10)
    first.load_state_dict(init)

    class Crash(Exception):
        pass

    def crash_after_first_epoch(row):
        raise Crash

    with pytest.raises(Crash):  # the process "dies" right after epoch 1's checkpoint
        train(first, small, view, spec, CPU, checkpoint=ckpt, evaluate=False, on_epoch=crash_after_first_epoch)
    assert ckpt.is_file()
    resumed = build_model("mobilenet_v3_small", 10)  # a fresh process would start from a fresh model
    hist = train(resumed, small, view, spec, CPU, checkpoint=ckpt, evaluate=False)
    assert [r["epoch"] for r in hist] == [1, 2]
    for k, v in straight.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


def test_online_teacher_counts_its_forward_passes(digits):
    data, view = digits
    small = type(data)("digits", data.train_x[:128], data.train_y[:128], data.test_x[:32],
                       data.test_y[:32], data.classes)
    teacher = build_model("resnet18", 10)
    student = build_model("mobilenet_v3_small", 10)
    hist = train(student, small, view, TrainSpec(epochs=1, lr=1e-3, batch_size=64, **KD), CPU, teacher=teacher,
                 evaluate=False)
    assert hist[0]["teacher_forward_images"] == 128


@pytest.mark.parametrize("lr", [1e4, 1e8])
def test_diverging_training_raises(digits, lr):
    data, view = digits
    small = type(data)("digits", data.train_x[:256], data.train_y[:256], data.test_x[:32],
                       data.test_y[:32], data.classes)
    model = build_model("mobilenet_v3_small", 10)
    with pytest.raises(DivergedError, match="loss .* at epoch 1"):
        train(model, small, view, TrainSpec(epochs=3, lr=lr, batch_size=32, schedule="constant"), CPU, evaluate=False)


def test_a_healthy_run_is_not_called_diverged(digits):
    data, view = digits
    small = type(data)("digits", data.train_x[:256], data.train_y[:256], data.test_x[:32],
                       data.test_y[:32], data.classes)
    hist = train(build_model("mobilenet_v3_small", 10), small, view, TrainSpec(epochs=2, lr=3e-3, batch_size=32,
                 temperature=6, alpha=0.9), CPU, teacher=build_model("resnet18", 10), evaluate=False)
    assert len(hist) == 2
