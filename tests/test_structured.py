"""Structured channel pruning with torch-pruning: consistent shapes, real savings, rounding, replay, determinism."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from kdsweep.models import build_model
from kdsweep.structured import replay, structured_prune

ARCHS = ["resnet18", "mobilenet_v3_small"]
CLASSES = 10


def _model(arch: str, seed: int = 0) -> nn.Module:
    """A random model whose BN affine/stats differ per channel, so importances and replayed buffers are not trivial."""
    torch.manual_seed(seed)
    model = build_model(arch, CLASSES, "none")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _assert_consistent(model: nn.Module) -> None:
    """Depthwise convs, SE blocks, BN widths and the classifier agree with their neighbours; forward works."""
    last_conv = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            last_conv = m
            if m.groups > 1:
                assert m.groups == m.in_channels == m.out_channels, name
        elif isinstance(m, nn.BatchNorm2d):
            # in both archs a BN normalises the Conv2d that precedes it in module order
            assert m.num_features == last_conv.out_channels, name
            assert m.running_mean.shape == m.weight.shape == (m.num_features,), name
        elif isinstance(m, SqueezeExcitation):
            assert m.fc1.in_channels == m.fc2.out_channels, name
            assert m.fc2.in_channels == m.fc1.out_channels, name
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert head.out_features == CLASSES
    model.eval()
    with torch.no_grad():
        for size in (32, 224):
            for batch in (1, 4):
                assert model(torch.randn(batch, 3, size, size)).shape == (batch, CLASSES)
    model.train()
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, CLASSES)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_shapes_consistent_and_rounded(arch):
    model = _model(arch)
    dense = {n: m.out_channels for n, m in _convs(model).items()}
    history = structured_prune(model, 0.5, image_size=32)
    _assert_consistent(model)
    pruned = {n: m.out_channels for n, m in _convs(model).items()}
    assert all(c % 8 == 0 and c > 0 for c in pruned.values()), pruned
    assert sum(pruned[n] < dense[n] for n in dense) > len(dense) // 2
    if arch == "mobilenet_v3_small":
        depthwise = [m for m in _convs(model).values() if m.groups > 1]
        assert len(depthwise) == 11 and any(m.out_channels < 96 for m in depthwise)
    assert history["steps"] and history["scope"] == "layer" and history["round_to"] == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_half_pruning_removes_most_params_and_macs(arch):
    example = torch.zeros(1, 3, 32, 32)
    dense_macs, dense_params = tp.utils.count_ops_and_params(_model(arch), example)
    fractions = {}
    for amount in (0.3, 0.5):
        model = _model(arch)
        structured_prune(model, amount, image_size=32)
        macs, params = tp.utils.count_ops_and_params(model, example)
        fractions[amount] = (params / dense_params, macs / dense_macs)
    assert fractions[0.5][0] <= 0.40 and fractions[0.5][1] <= 0.40, fractions
    assert fractions[0.3][0] > fractions[0.5][0] and fractions[0.3][1] > fractions[0.5][1], fractions


def test_round_to_one_gives_unrounded_widths():
    model = _model("mobilenet_v3_small")
    structured_prune(model, 0.3, image_size=32, round_to=1)
    _assert_consistent(model)
    assert any(m.out_channels % 8 for m in _convs(model).values())


def test_global_scope_is_consistent_and_differs_from_layer():
    layer, glob = _model("mobilenet_v3_small"), _model("mobilenet_v3_small")
    h_layer = structured_prune(layer, 0.5, image_size=32)
    h_glob = structured_prune(glob, 0.5, image_size=32, scope="global")
    _assert_consistent(glob)
    assert all(m.out_channels % 8 == 0 for m in _convs(glob).values())
    assert h_glob["scope"] == "global" and h_glob["steps"] != h_layer["steps"]


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_state_and_history_replay_on_a_fresh_model(arch, tmp_path):
    model = _model(arch)
    history = structured_prune(model, 0.5, image_size=32)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "history.json").write_text(json.dumps(history))

    fresh = build_model(arch, CLASSES, "none")
    replay(fresh, json.loads((tmp_path / "history.json").read_text()))
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.eval()
    fresh.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_replay_rejects_foreign_history():
    history = structured_prune(_model("mobilenet_v3_small"), 0.5, image_size=32)
    with pytest.raises(ValueError, match="format"):
        replay(build_model("resnet18", CLASSES, "none"), {"steps": history["steps"]})
    with pytest.raises(ValueError, match="does not fit"):
        replay(build_model("resnet18", CLASSES, "none"), history)


def test_pruning_is_deterministic_and_runs_under_no_grad():
    model = _model("resnet18")
    twin = copy.deepcopy(model)
    first = structured_prune(model, 0.3, image_size=32)
    with torch.no_grad():
        second = structured_prune(twin, 0.3, image_size=32)
    assert first == second
    assert {n: p.shape for n, p in model.state_dict().items()} == {n: p.shape for n, p in twin.state_dict().items()}


def test_channels_last_model_prunes_like_a_contiguous_one():
    model = _model("mobilenet_v3_small")
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert twin.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert structured_prune(twin, 0.5, image_size=32) == structured_prune(model, 0.5, image_size=32)
    _assert_consistent(twin)


def test_pruning_keeps_training_mode_and_bn_statistics():
    model = _model("resnet18").train()
    tracked = sum(int(m.num_batches_tracked) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    stem_mean = model.bn1.running_mean.clone()
    history = structured_prune(model, 0.5, image_size=32)
    assert model.training
    assert sum(int(m.num_batches_tracked) for m in model.modules() if isinstance(m, nn.BatchNorm2d)) == tracked
    kept = sorted(set(range(64)) - set(next(i for n, out, i in history["steps"] if n == "conv1" and out)))
    assert torch.equal(model.bn1.running_mean, stem_mean[kept])


def test_training_step_after_pruning_updates_weights():
    model = _model("mobilenet_v3_small")
    structured_prune(model, 0.5, image_size=32)
    model = model.to(memory_format=torch.channels_last).train()  # as the engine resumes training
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.features[0][0].weight, before["features.0.0.weight"])
    assert not torch.equal(model.classifier[-1].weight, before["classifier.3.weight"])


def test_amount_zero_is_a_no_op():
    model = _model("resnet18")
    state = copy.deepcopy(model.state_dict())
    history = structured_prune(model, 0.0, image_size=32)
    assert history["steps"] == []
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    fresh = build_model("resnet18", CLASSES, "none")
    replay(fresh, history)
    fresh.load_state_dict(state)


@pytest.mark.parametrize("kwargs, key", [({"scope": "channel"}, "prune.scope"), ({"amount": 1.0}, "prune.amount"),
                                         ({"amount": -0.1}, "prune.amount"), ({"round_to": 0}, "prune.round_to")])
def test_bad_arguments_are_clear_errors_and_leave_the_model_alone(kwargs, key):
    model = _model("mobilenet_v3_small")
    shapes = {n: p.shape for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=key):
        structured_prune(model, **{"amount": 0.5, "image_size": 32, **kwargs})
    assert {n: p.shape for n, p in model.state_dict().items()} == shapes
