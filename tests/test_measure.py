"""Size (dense / non-zero / compressed), exact compressed round-trip, accuracy, and where latency was measured."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kdsweep.data import ViewSpec
from kdsweep.measure import accuracy, compressed_state_bytes, load_compressed_state, model_size, predict
from kdsweep.pruning import apply_pruning, make_permanent
from kdsweep.runtimes import device_label

CPU = torch.device("cpu")


def _mnv3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tvm.mobilenet_v3_small(num_classes=10)


def test_dense_size_resnet18():
    torch.manual_seed(0)
    s = model_size(tvm.resnet18(num_classes=10))
    assert s.size_mb == pytest.approx(44.73, abs=0.01)
    assert s.size_mb == pytest.approx(s.params * 4 / 1e6)


def test_dense_size_mobilenet_v3_small():
    s = model_size(_mnv3())
    assert s.size_mb == pytest.approx(6.11, abs=0.01)
    assert s.params == sum(p.numel() for p in _mnv3().parameters())
    assert s.nonzero_params <= s.params


def test_nonzero_size_drops_by_the_pruned_conv_elements():
    model = _mnv3()
    before = model_size(model)
    rep = apply_pruning(model, 0.5, "layer")
    make_permanent(model)
    after = model_size(model)
    assert after.params == before.params and after.size_mb == before.size_mb
    assert rep.zeros > 0
    # dense init has no exact zeros in conv weights, so every pruned element is a newly zero parameter
    assert before.nonzero_params - after.nonzero_params == rep.zeros
    assert before.size_nonzero_mb - after.size_nonzero_mb == pytest.approx(rep.zeros * 4 / 1e6, rel=1e-9)
    assert after.sparsity == pytest.approx(1 - after.nonzero_params / after.params)
    assert after.size_compressed_mb < after.size_mb
    assert after.size_compressed_mb < before.size_compressed_mb


class _Buffers(nn.Module):
    """A state dict with every dtype/shape corner: ints, bools, halfs, doubles, 0-d, empty, all-zero, -0.0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.register_buffer("i32", torch.tensor([[1, -2, 3], [2**31 - 1, -(2**31), 0]], dtype=torch.int32))
        self.register_buffer("i64_scalar", torch.tensor(2**40 + 7, dtype=torch.int64))
        self.register_buffer("flags", torch.tensor([True, False, True, True, False, False, True, False, True]))
        self.register_buffer("u8", torch.arange(0, 250, 7, dtype=torch.uint8))
        self.register_buffer("f16", torch.tensor([0.0, 1.5, -2.25, 65504.0, 0.0], dtype=torch.float16))
        self.register_buffer("f64", torch.tensor([1e-300, 0.0, -3.5, 1e300], dtype=torch.float64))
        self.register_buffer("f_scalar", torch.tensor(3.25))
        self.register_buffer("f_zero_scalar", torch.tensor(0.0))
        self.register_buffer("empty", torch.zeros(0, 4))
        self.register_buffer("all_zero", torch.zeros(5, 3))
        self.register_buffer("special", torch.tensor([float("inf"), float("-inf"), 0.0, 7.0]))


def _assert_same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        g = got[k]
        assert g.dtype == v.dtype, k
        assert tuple(g.shape) == tuple(v.shape), k
        assert torch.equal(g, v.cpu()), k


def test_compressed_round_trip_of_all_dtypes():
    m = _Buffers()
    m.bn.num_batches_tracked.fill_(123)
    with torch.no_grad():
        m.lin.weight[0, 1] = 0.0
    want = m.state_dict()
    got = load_compressed_state(compressed_state_bytes(m))
    _assert_same_state(got, want)
    assert got["bn.num_batches_tracked"].item() == 123


def test_compressed_round_trip_of_a_pruned_model():
    model = _mnv3()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))  # non-trivial running stats and num_batches_tracked
    apply_pruning(model, 0.5, "layer")
    make_permanent(model)
    blob = compressed_state_bytes(model)
    assert isinstance(blob, bytes)
    _assert_same_state(load_compressed_state(blob), model.state_dict())
    assert len(blob) / 1e6 < model_size(model).size_mb
    fresh = _mnv3(seed=1)
    fresh.load_state_dict(load_compressed_state(blob))
    fresh.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_compressed_size_reflects_sparsity():
    dense = _mnv3()
    sparse = _mnv3()
    apply_pruning(sparse, 0.5, "layer")
    make_permanent(sparse)
    assert len(compressed_state_bytes(sparse)) < len(compressed_state_bytes(dense))


class _Constant(nn.Module):
    """Always predicts class `k` (one-hot logits), whatever the input."""

    def __init__(self, k: int, classes: int = 10):
        super().__init__()
        self.k, self.classes = k, classes
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        out = torch.zeros(x.shape[0], self.classes)
        out[:, self.k] = 1.0
        return out


@pytest.mark.parametrize("k", [0, 3, 7])
def test_accuracy_of_a_constant_model_is_the_class_frequency(k):
    g = torch.Generator().manual_seed(k)
    y = torch.randint(0, 10, (97,), generator=g)
    x = torch.randint(0, 256, (97, 3, 8, 8), generator=g, dtype=torch.uint8)
    model = _Constant(k)
    model.train()
    acc = accuracy(model, x, y, ViewSpec(image_size=8, normalize="none", augment=()), CPU, batch_size=10)
    freq = np.bincount(y.numpy(), minlength=10)[k] / 97
    assert acc == pytest.approx(freq)
    assert model.seen_training and not any(model.seen_training)  # evaluated in eval mode
    assert model.training  # and the mode is restored
    assert len(model.seen_training) == 10  # ceil(97 / 10) batches


def test_predict_feeds_un_augmented_views():
    class Echo(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    out = predict(Echo(), x, ViewSpec(image_size=4, normalize="none", augment=("flip", "crop")), CPU, batch_size=2)
    assert torch.allclose(out, (x.float() / 255).flatten(1))


def test_device_label_cpu():
    assert device_label(torch.device("cpu")) == "cpu"
