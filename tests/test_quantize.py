"""INT8 static quantization with ONNX Runtime on real trained models (the shared smoke sweep's, digits at 32 px)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kdsweep.config import DataConfig
from kdsweep.data import ViewSpec, load_dataset, make_views, train_batches
from kdsweep.quantize import (
    calibration_batches,
    cpu_has_vnni,
    evaluate,
    int8_settings,
    quantize_int8,
    vnni_in_cpuinfo,
)

# fp32 models trained by the shared reduced smoke sweep (conftest), exported by kdsweep; allowed int8 accuracy drop
SOURCES = {"resnet18": ("teacher-s0", 0.02), "mobilenet_v3_small": ("student-T4-a0.9-s0", 0.03)}
AVX2_FLAGS = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512vl"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on a shared 2-core CI machine, two spinning OpenMP threads cost more CPU than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    cfg = DataConfig(dataset="digits", image_size=32, augment=[])
    return load_dataset(cfg), ViewSpec.from_config(cfg)


def _session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=list(SOURCES))
def quantized(request, digits, smoke_exp):
    """(arch, fp32 bytes, int8 bytes, calibration, settings) of a model the smoke sweep trained, quantized here."""
    data, view = digits
    arch = request.param
    fp32 = next(smoke_exp.glob(f"artifacts/{SOURCES[arch][0]}-*/model.onnx")).read_bytes()
    calibration = calibration_batches(data, view, seed=0, batches=4, batch_size=64)
    settings = int8_settings()
    return arch, fp32, quantize_int8(fp32, calibration, settings), calibration, settings


# --- VNNI detection and settings ---------------------------------------------------------------------------

def test_vnni_parsed_from_cpuinfo_flags():
    cpu = "processor\t: {i}\nmodel name\t: Some CPU\nflags\t\t: {flags}\nvmx flags\t: vnmi preemption_timer\n\n"
    no_vnni = "".join(cpu.format(i=i, flags=AVX2_FLAGS) for i in range(2))
    assert not vnni_in_cpuinfo(no_vnni)
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert vnni_in_cpuinfo("".join(cpu.format(i=i, flags=f"{AVX2_FLAGS} {flag}") for i in range(2)))
    # whole flags only, and only on the `flags` line
    assert not vnni_in_cpuinfo(cpu.format(i=0, flags=AVX2_FLAGS + " avx512_vnnix"))
    assert not vnni_in_cpuinfo(f"bugs\t\t: avx512_vnni\n{cpu.format(i=0, flags=AVX2_FLAGS)}")
    assert not vnni_in_cpuinfo("")


def test_cpu_has_vnni_reads_this_machine():
    try:
        with open("/proc/cpuinfo") as f:
            expected = vnni_in_cpuinfo(f.read())
    except OSError:
        expected = False
    assert cpu_has_vnni() is expected


@pytest.mark.parametrize("vnni", [True, False])
def test_settings_are_json_and_reduce_range_without_vnni(vnni):
    s = int8_settings(vnni)
    assert json.loads(json.dumps(s)) == s
    assert s["vnni"] is vnni and s["reduce_range"] is (not vnni)
    assert (s["format"], s["per_channel"], s["activation_type"], s["weight_type"], s["calibrate_method"]) == (
        "QDQ", True, "QUInt8", "QInt8", "MinMax")
    assert s["onnxruntime"] == ort.__version__
    assert int8_settings()["vnni"] is cpu_has_vnni()


# --- calibration data --------------------------------------------------------------------------------------

def test_calibration_batches_are_unaugmented_training_views_in_seed_order(digits):
    data, _ = digits
    view = ViewSpec(32, "imagenet", ("flip", "crop"))  # augmentation configured, and still not applied
    first = calibration_batches(data, view, seed=3, batches=5, batch_size=32)
    assert len(first) == 5
    assert all(b.shape == (32, 3, 32, 32) and b.dtype == np.float32 and b.flags.c_contiguous for b in first)
    idx = train_batches(len(data.train_y), 32, 3, 0)
    for b, i in zip(first, idx):
        np.testing.assert_array_equal(b, make_views(data.train_x[i], view).numpy())
    again = calibration_batches(data, view, seed=3, batches=5, batch_size=32)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other = calibration_batches(data, view, seed=4, batches=1, batch_size=32)
    assert not np.array_equal(first[0], other[0])


def test_calibration_batches_capped_by_the_training_set_and_validated(digits):
    data, view = digits
    assert len(calibration_batches(data, view, 0, 10_000, 512)) == len(train_batches(len(data.train_y), 512, 0, 0))
    with pytest.raises(ValueError, match="batches >= 1"):
        calibration_batches(data, view, 0, 0, 64)


# --- quantization ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_int8_accuracy_close_to_fp32(digits, quantized):
    data, view = digits
    arch, fp32, int8, _, _ = quantized
    acc32, pred32 = evaluate(_session(fp32), data.test_x, data.test_y, view, batch_size=100)
    acc8, pred8 = evaluate(_session(int8), data.test_x, data.test_y, view, batch_size=100)
    agreement = float((pred32 == pred8).mean())
    print(f"{arch}: fp32 {acc32:.4f} int8 {acc8:.4f} top-1 agreement {agreement:.4f} size {len(int8) / len(fp32):.3f}x")
    assert acc32 >= 0.8, f"{arch} fp32 only reached {acc32:.3f}; the comparison needs a trained model"
    assert acc8 >= acc32 - SOURCES[arch][1]
    assert agreement >= 0.95


@pytest.mark.slow
def test_int8_graph_is_qdq_and_small(quantized):
    arch, fp32, int8, _, _ = quantized
    assert len(int8) <= 0.3 * len(fp32)
    model = onnx.load_model_from_string(int8)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "BatchNormalization" not in ops  # folded into the convolutions before quantization
    produced_by = {out: n.op_type for n in model.graph.node for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(produced_by.get(n.input[0]) == produced_by.get(n.input[1]) == "DequantizeLinear"
                         for n in convs), "every Conv reads int8 activations and weights"
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]


@pytest.mark.slow
@pytest.mark.parametrize("quantized", ["mobilenet_v3_small"], indirect=True)  # the cheaper one to quantize again
def test_quantization_is_deterministic(quantized):
    arch, fp32, int8, calibration, settings = quantized
    assert quantize_int8(fp32, calibration, settings) == int8


def test_quantize_int8_rejects_bad_inputs():
    with pytest.raises(ValueError, match="settings lack"):
        quantize_int8(b"", [np.zeros((1, 3, 8, 8), np.float32)], {"format": "QDQ"})
    with pytest.raises(ValueError, match="no calibration batches"):
        quantize_int8(b"", [], int8_settings(True))
    with pytest.raises(ValueError, match="'weight_type'.*QInt8"):
        quantize_int8(b"", [np.zeros((1, 3, 8, 8), np.float32)], {**int8_settings(True), "weight_type": "int8"})


# --- evaluation --------------------------------------------------------------------------------------------

class _FakeSession:
    """Predicts class (sum of the first pixel's channels > 0) for every image; records batch sizes."""

    def __init__(self):
        self.batches: list[int] = []

    def get_inputs(self):
        return [type("Input", (), {"name": "input"})()]

    def run(self, outputs, feeds):
        x = feeds["input"]
        self.batches.append(len(x))
        positive = x[:, :, 0, 0].sum(1) > 0
        return [np.stack([~positive, positive], 1).astype(np.float32)]


def test_evaluate_batches_views_and_scores():
    x = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    x[[1, 3], :, 0, 0] = 255  # bright top-left pixel -> class 1 after normalisation to [0, 1]
    y = torch.tensor([0, 1, 0, 0, 0])  # the last-but-one label is "wrong"
    session = _FakeSession()
    acc, pred = evaluate(session, x, y, ViewSpec(4, "none", ()), batch_size=2)
    assert session.batches == [2, 2, 1]
    assert pred.tolist() == [0, 1, 0, 1, 0] and pred.dtype == np.int64
    assert acc == pytest.approx(0.8)
