"""The GPU path (issue 15): bf16 training of every stage kind, device-side views, GPU teacher logits, CUDA-event
latency, ONNX Runtime's CUDA provider and 0.25-GPU packing on one physical GPU.

Marked `cuda`; without a GPU they skip and say why (CI has none). `KDSWEEP_CUDA_TESTS_ON_CPU=1` runs the
device-agnostic ones on the CPU instead, which checks the tests' own logic before a GPU session spends minutes on them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kdsweep.config import DataConfig
from kdsweep.data import ViewSpec, augment_params, load_dataset, train_views
from kdsweep.engine import TrainSpec, recalibrate_bn, teacher_logits, train
from kdsweep.measure import accuracy
from kdsweep.models import build_model
from kdsweep.pruning import apply_pruning, make_permanent
from kdsweep.runtimes import device_label, time_interleaved, torch_runner
from kdsweep.structured import structured_prune

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()
ON_CPU = os.environ.get("KDSWEEP_CUDA_TESTS_ON_CPU") == "1"
NO_GPU = ("no CUDA GPU here (CI has none): the cuda tests run on a GPU machine; KDSWEEP_CUDA_TESTS_ON_CPU=1 checks "
          "them on CPU")


@pytest.fixture(scope="module")
def dev() -> torch.device:
    if HAS_CUDA:
        return torch.device("cuda", 0)
    if ON_CPU:
        return CPU
    pytest.skip(NO_GPU)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(dataset="digits", image_size=32, augment=["crop", "flip", "randaugment", "mixup"],
                     train_limit=512, test_limit=200)
    return load_dataset(cfg), ViewSpec.from_config(cfg, []), ViewSpec.from_config(cfg)


def _bf16_forward_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    """Record the dtype of every Conv2d output of the next forwards (bf16 under CUDA autocast)."""
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_every_stage_kind_trains_a_step_in_bf16(dev, digits):
    data, plain, _ = digits
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    teacher = build_model("resnet18", 10)
    seen = _bf16_forward_dtypes(teacher)
    hist = train(teacher, data, plain, TrainSpec(epochs=2, lr=1e-3, batch_size=64), dev)
    assert seen and set(seen) == {amp_dtype}
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and hist[-1]["test_acc"] > 0.5
    logits = teacher_logits(teacher, data, plain, seed=0, epochs=3, device=dev)
    student = build_model("mobilenet_v3_small", 10)
    kd = dict(temperature=4.0, alpha=0.9, label_smoothing=0.05)
    s_hist = train(student, data, plain, TrainSpec(epochs=1, lr=1e-3, batch_size=64, **kd), dev, teacher_logits=logits)
    assert torch.isfinite(torch.tensor(s_hist[0]["train_loss"]))
    for method in ("l1_unstructured", "l1_structured"):
        pruned = build_model("mobilenet_v3_small", 10)
        pruned.load_state_dict(student.state_dict())
        pruned.to(CPU)
        if method == "l1_structured":
            structured_prune(pruned, 0.5, 32)  # traced on CPU, as stages does, then moved
            pruned.to(dev)
        else:
            pruned.to(dev)
            apply_pruning(pruned, 0.5, "layer")
        recalibrate_bn(pruned, data, plain, dev, batch_size=64)
        p_hist = train(pruned, data, plain, TrainSpec(epochs=1, lr=1e-3, batch_size=64, schedule="constant",
                                                      epoch_offset=1, **kd), dev, teacher_logits=logits)
        make_permanent(pruned)
        assert torch.isfinite(torch.tensor(p_hist[0]["train_loss"])), method
        assert next(pruned.parameters()).device.type == dev.type


def test_device_views_equal_cpu_views(dev, digits):
    data, _, view = digits
    n = len(data.train_y)
    aug = augment_params(0, 1, n, view)
    idx = torch.arange(0, n, 3)[:48]
    on_dev = train_views(data.train_x.to(dev), idx, view, aug, dev)
    on_cpu = train_views(data.train_x, idx, view, aug, CPU)
    assert torch.equal(on_dev.partner.cpu(), on_cpu.partner) and torch.equal(on_dev.lam.cpu(), on_cpu.lam)
    # uint8 ops are exact; the float resize and normalisation may differ in the last bits between kernels
    torch.testing.assert_close(on_dev.x.cpu(), on_cpu.x, atol=1e-4, rtol=1e-4)


def test_gpu_teacher_logits_match_cpu_and_kd_from_them_trains(dev, digits):
    data, plain, view = digits
    torch.manual_seed(0)
    teacher = build_model("resnet18", 10)
    train(teacher, data, plain, TrainSpec(epochs=2, lr=1e-3, batch_size=64), CPU)
    on_dev = teacher_logits(teacher, data, view, seed=0, epochs=3, device=dev)
    on_cpu = teacher_logits(teacher, data, view, seed=0, epochs=3, device=CPU)
    scale = on_cpu.float().abs().max().item()
    # bf16 keeps 8 bits of mantissa: ~0.4 % of the logit scale, plus fp16 storage
    torch.testing.assert_close(on_dev.float(), on_cpu.float(), atol=0.02 * scale, rtol=0.02)
    assert (on_dev.float().argmax(-1) == on_cpu.float().argmax(-1)).float().mean() > 0.97
    # KD from logits the GPU computed (un-augmented views here: a ResNet-18 student learns digits in 3 short epochs)
    plain_logits = teacher_logits(teacher, data, plain, seed=0, epochs=3, device=dev)
    student = build_model("resnet18", 10)
    hist = train(student, data, plain, TrainSpec(epochs=3, lr=1e-3, batch_size=64, temperature=4.0, alpha=0.9,
                                                 label_smoothing=0.05), dev, teacher_logits=plain_logits)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert accuracy(student, data.test_x, data.test_y, plain, dev) > 0.5


def test_latency_on_the_device_is_named_and_positive(dev):
    model = build_model("mobilenet_v3_small", 10)
    runner = torch_runner(model, 224, dev)
    lat = time_interleaved({"m": runner}, warmup=5, iters=20)["m"]
    assert runner.device == device_label(dev) and 0 < lat.median_ms <= lat.p90_ms
    if dev.type == "cuda":
        assert runner.device.startswith("cuda:")


def test_onnxruntime_cuda_provider_runs_what_it_claims(dev):
    import onnxruntime as ort

    from kdsweep.export import export_onnx
    from kdsweep.runtimes import ort_runner, ort_session

    if dev.type != "cuda":
        pytest.skip("ONNX Runtime's CUDA provider needs a GPU")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()}): install "
                    "onnxruntime-gpu")
    model = build_model("mobilenet_v3_small", 10).eval()
    blob = export_onnx(model, torch.randn(4, 3, 224, 224)).onnx
    session = ort_session(blob, "cuda", 1)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    stats = time_interleaved({"ort": ort_runner(session, 224)}, 5, 20)["ort"]
    assert stats.median_ms > 0


@pytest.mark.slow
def test_quarter_gpu_trials_share_one_physical_gpu(tmp_path):
    if not HAS_CUDA:
        pytest.skip(NO_GPU if not ON_CPU else "packing on a physical GPU cannot be checked on CPU")
    import kdsweep
    from kdsweep.results import read_results
    from kdsweep.status import most_at_once

    over = ["teacher.epochs=1", "student.epochs=3", "prune.recovery_epochs=1", "prune.amount=[0.3]",
            "kd.temperature=[2,4]", "kd.alpha=[0.5,0.7,0.9]", "measure.runtimes=[torch]", "data.train_limit=1024",
            "resources.cpus_per_trial=1", "resources.gpus_per_trial=0.25", "measure.iters=20", "measure.warmup=5"]
    exp = kdsweep.run(str(ROOT / "configs" / "smoke.yaml"), overrides=over, storage=tmp_path, name="packing")
    df = read_results(exp / "results")
    assert (df.status == "ok").all()
    assert df.latency_device.str.startswith("cuda:").all()
    kd = df[df.stage.isin(["student", "pruned"])]
    assert kd.gpu_ids.nunique() == 1  # one physical GPU, 0.25 each
    # at some moment 4 trials were running at once on it
    most = most_at_once(list(zip(kd.trial_start, kd.trial_end)))
    assert most >= 4, f"at most {most} trials overlapped"
