"""Runtimes: availability reasons, provider checks, runners, and the interleaved timer's order and statistics."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from kdsweep import runtimes
from kdsweep.names import runtime_label
from kdsweep.runtimes import (
    LatencyStats,
    Runner,
    latency_stats,
    ort_predict,
    ort_runner,
    ort_session,
    runtime_problem,
    time_interleaved,
    torch_runner,
)

ort = pytest.importorskip("onnxruntime")
SIZE = 8
WEIGHT = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
NO_CUDA_EP = not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers()
NO_TRT_EP = not torch.cuda.is_available() or "TensorrtExecutionProvider" not in ort.get_available_providers()


@pytest.fixture(scope="module")
def conv_onnx() -> bytes:
    """Conv -> global average pool -> flatten, batch axis dynamic: built by hand, no exporter run needed."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    graph = helper.make_graph(nodes, "conv", [x], [y], [numpy_helper.from_array(WEIGHT, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_runtime_problem_on_cpu():
    assert runtime_problem("torch", "cpu") is None
    assert runtime_problem("onnxruntime", "cpu") is None
    assert runtime_problem("tensorrt", "cpu") == "tensorrt runs on CUDA GPUs only"
    assert "unknown runtime 'tvm'" in runtime_problem("tvm", "cpu")
    assert "unknown device 'tpu'" in runtime_problem("torch", "tpu")


@pytest.mark.skipif(not NO_CUDA_EP, reason="a CUDA GPU and ORT's CUDA provider are both here")
def test_runtime_problem_says_why_cuda_is_out():
    assert runtime_problem("onnxruntime", "cuda")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in runtime_problem("torch", "cuda")
        assert "no CUDA GPU" in runtime_problem("onnxruntime", "cuda")


@pytest.mark.skipif(not NO_TRT_EP, reason="a CUDA GPU and ORT's TensorRT provider are both here")
def test_runtime_problem_says_why_tensorrt_is_out():
    assert runtime_problem("tensorrt", "cuda")


def test_runtime_labels():
    assert [runtime_label("torch", "cuda"), runtime_label("onnxruntime", "cpu"), runtime_label("onnxruntime", "cuda"),
            runtime_label("tensorrt", "cuda")] == ["torch", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this ORT has CUDA")
@pytest.mark.parametrize("tensorrt, provider", [(False, "CUDAExecutionProvider"), (True, "TensorrtExecutionProvider")])
def test_gpu_session_refuses_to_fall_back_to_cpu(conv_onnx, tensorrt, provider):
    with pytest.raises(RuntimeError, match=f"^onnxruntime: {provider} requested but ORT runs CPUExecutionProvider"):
        ort_session(conv_onnx, "cuda", threads=1, tensorrt=tensorrt)


def test_cpu_session_runs_on_cpu_with_the_given_threads(conv_onnx):
    session = ort_session(conv_onnx, "cpu", threads=2)
    assert session.get_providers()[0] == "CPUExecutionProvider"
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    x = np.random.default_rng(1).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(WEIGHT), padding=1).mean((2, 3)).numpy()
    out = ort_predict(session, x.astype(np.float64))  # converted to the model's float32
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_torch_and_ort_runners_time_a_tiny_model(conv_onnx):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).train()
    runners = {"torch": torch_runner(model, SIZE, torch.device("cpu"), precision="bf16"),
               "ort": ort_runner(ort_session(conv_onnx, "cpu", threads=1), SIZE)}
    assert not model.training
    assert (runners["torch"].label, runners["torch"].device, runners["torch"].precision) == ("torch", "cpu", "bf16")
    assert (runners["ort"].label, runners["ort"].device, runners["ort"].precision) == ("onnxruntime-cpu", "cpu", "fp32")
    stats = time_interleaved(runners, warmup=2, iters=5)
    assert all(s.iters == 5 and 0 < s.median_ms <= s.p90_ms and s.ci95_ms >= 0 for s in stats.values())


def test_unknown_precision_is_refused(conv_onnx):
    with pytest.raises(ValueError, match="precision: 'int8'"):
        torch_runner(torch.nn.Identity(), SIZE, torch.device("cpu"), precision="int8")
    with pytest.raises(ValueError, match="precision: 'fp8'"):
        ort_runner(ort_session(conv_onnx, "cpu", threads=1), SIZE, precision="fp8")


def _fake_runners(names: list[str], calls: list[str], times: dict[str, list[float]] | None = None) -> dict:
    def make(name: str) -> Runner:
        queue = list(times[name]) if times else []

        def timed() -> float:
            calls.append(name)
            return queue.pop(0) if queue else 1.0
        return Runner(name, "cpu", "fp32", timed)
    return {name: make(name) for name in names}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_interleaving_runs_each_once_per_iteration_in_varying_order(k):
    names = [f"r{i}" for i in range(k)]
    calls: list[str] = []
    warmup, iters = 3, 40
    time_interleaved(_fake_runners(names, calls), warmup=warmup, iters=iters)
    assert len(calls) == k * (warmup + iters)
    rounds = [calls[i:i + k] for i in range(0, len(calls), k)]
    assert all(sorted(r) == names for r in rounds)  # each runner once per iteration
    # no runner keeps a fixed slot or a fixed predecessor (a cache-evicting neighbour must not always precede it)
    assert all(len({r.index(n) for r in rounds}) == k for n in names)
    if k >= 3:
        before = {n: {r[r.index(n) - 1] for r in rounds if r.index(n) > 0} for n in names}
        assert all(len(b) >= 2 for b in before.values())
    again: list[str] = []
    time_interleaved(_fake_runners(names, again), warmup=warmup, iters=iters)
    assert again == calls  # the order is drawn from a seed: reruns time in the same order


def test_interleaved_stats_drop_warmup_and_are_exact():
    calls: list[str] = []
    times = {"a": [1000.0, 1000.0] + [float(v) for v in range(1, 11)],  # two warm-ups that must not count
             "b": [1000.0, 1000.0] + [5.0] * 10}
    stats = time_interleaved(_fake_runners(["a", "b"], calls, times), warmup=2, iters=10)
    assert stats["a"].median_ms == 5.5 and stats["a"].p90_ms == pytest.approx(9.1) and stats["a"].iters == 10
    assert stats["b"] == LatencyStats(5.0, 5.0, 0.0, 10)


def test_ci95_of_the_median_from_order_statistics():
    # n=100: ranks floor(50 - 9.8) = 40 and ceil(51 + 9.8) = 61 (1-based)
    assert latency_stats([float(v) for v in range(1, 101)]).ci95_ms == pytest.approx(10.5)
    squares = latency_stats([float(v * v) for v in range(1, 101)])  # skewed: the upper side is wider
    assert squares.median_ms == 2550.5 and squares.ci95_ms == pytest.approx(61 ** 2 - 2550.5)
    assert latency_stats([3.0, 1.0, 2.0, 10.0, 4.0]).ci95_ms == 7.0  # n=5: ranks clamp to min and max
    with pytest.raises(ValueError):
        latency_stats([])


def test_time_interleaved_rejects_bad_arguments():
    with pytest.raises(ValueError):
        time_interleaved({}, warmup=1, iters=1)
    with pytest.raises(ValueError):
        time_interleaved(_fake_runners(["a"], []), warmup=0, iters=0)


def test_runtimes_tuple_is_the_config_contract():
    assert runtimes.RUNTIMES == ("torch", "onnxruntime", "tensorrt")


def _fake_gpu_box(monkeypatch, ort_cuda: bool) -> None:
    """torch reports a GPU; onnxruntime has, or has not, its CUDA provider (pip's default build has not)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if ort_cuda else ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)


@pytest.mark.parametrize("ort_cuda", [False, True])
def test_auto_latency_on_a_gpu_box_times_each_runtime_on_the_best_device_it_has(monkeypatch, ort_cuda):
    """Seen on an H200 with pip's default onnxruntime: `auto` used to refuse a config the user never chose."""
    from kdsweep.config import load_config
    from kdsweep.plan import make_plan
    from kdsweep.preflight import check, latency_line, measure_devices
    from kdsweep.stages import runtime_rows

    from .conftest import SMOKE as smoke
    _fake_gpu_box(monkeypatch, ort_cuda)
    cfg = load_config(smoke, ["measure.runtimes=[torch,onnxruntime]"])
    check(cfg)  # nothing refused before Ray
    assert measure_devices(cfg, 1.0) is None
    v = make_plan(cfg).stage("student")[0]
    ort_dev = "cuda" if ort_cuda else "cpu"
    assert runtime_rows(cfg, v, None, "cuda") == [("torch", "cuda"), ("onnxruntime", ort_dev)]
    assert runtime_rows(cfg, v, None, "cpu") == [("torch", "cpu"), ("onnxruntime", "cpu")]  # a CPU trial: CPU
    line = latency_line(cfg, None, 1.0)
    assert line.startswith(f"latency: torch on cuda, onnxruntime on {ort_dev} (measure.latency_device: auto")
    assert ("no CUDA provider" in line) != ort_cuda
    assert latency_line(cfg, None, 0.0).startswith("latency: torch on cpu, onnxruntime on cpu")  # no GPU in Ray
    assert latency_line(cfg, ["cpu"], 1.0) == "latency: torch on cpu, onnxruntime on cpu"


@pytest.mark.parametrize("key", ["measure.devices=[cuda]", "measure.latency_device=cuda"])
def test_cuda_asked_by_name_with_a_cpu_only_onnxruntime_exits_2_before_ray_starts(monkeypatch, tmp_path, capsys, key):
    import ray

    from kdsweep.cli import main

    from .conftest import SMOKE as smoke
    _fake_gpu_box(monkeypatch, ort_cuda=False)
    assert not ray.is_initialized()
    assert main(["run", smoke, "--storage", str(tmp_path), "--set", key]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = key.split("=")[0]
    assert len(err) == 1 and "onnxruntime-gpu" in err[0]
    assert err[0].startswith(f"kdsweep: error: config key '{name}': onnxruntime would time models on cuda")
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


def test_a_run_with_both_onnxruntime_builds_installed_says_how_to_fix_it(monkeypatch):
    from importlib import metadata

    from kdsweep import runtimes
    from kdsweep.config import load_config
    from kdsweep.preflight import latency_line

    from .conftest import SMOKE as smoke

    cfg = load_config(smoke)
    assert runtimes.ort_packages() == ["onnxruntime"]  # this environment: pip's CPU build alone
    assert runtimes.ORT_GPU_FIX not in latency_line(cfg, None, 0.0)
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.20.0" if name == "onnxruntime-gpu" else real(name))
    assert runtimes.ort_packages() == ["onnxruntime", "onnxruntime-gpu"]
    line = latency_line(cfg, None, 0.0)
    assert line.endswith("both onnxruntime and onnxruntime-gpu are installed and shadow each other: "
                         + runtimes.ORT_GPU_FIX)
    assert runtimes.ORT_GPU_FIX not in latency_line(load_config(smoke, ["measure.runtimes=[torch]"]), None, 0.0)
