"""L1 unstructured pruning of Conv2d weights: per-layer and global amounts, live masks, permanence, reports."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torchvision import models as tvm

from kdsweep.pruning import (
    add_identity_masks,
    apply_pruning,
    conv_layers,
    make_permanent,
    sparsity_report,
)


def _mnv3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return tvm.mobilenet_v3_small(num_classes=10)


def _conv_zero_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d)}


def test_dense_report():
    model = _mnv3()
    rep = sparsity_report(model)
    convs = conv_layers(model)
    assert len(convs) == len(rep.layers) > 10
    assert rep.total == sum(m.weight.numel() for _, m in convs)
    assert rep.zeros == 0 and rep.sparsity == 0.0
    assert all(isinstance(m, nn.Conv2d) for _, m in convs)


def test_layer_scope_prunes_every_conv_by_half():
    model = _mnv3()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # layer scope at 50 % must not trigger the collapse warning
        rep = apply_pruning(model, 0.5, "layer")
    counts = _conv_zero_counts(model)
    assert set(counts) == set(rep.layers)
    for name, (zeros, n) in counts.items():
        assert abs(zeros - 0.5 * n) <= 1, name
        assert rep.layers[name] == pytest.approx(zeros / n)
    zeros = sum(z for z, _ in counts.values())
    total = sum(n for _, n in counts.values())
    assert (rep.zeros, rep.total) == (zeros, total)
    assert rep.sparsity == pytest.approx(0.5, abs=0.01)


def test_layer_scope_removes_the_smallest_magnitudes():
    model = _mnv3()
    before = {n: m.weight.detach().abs().clone() for n, m in conv_layers(model)}
    apply_pruning(model, 0.3, "layer")
    for name, m in conv_layers(model):
        w = before[name].flatten()
        kept = m.weight.detach().flatten() != 0
        if kept.all() or not (~kept).any():
            continue
        assert float(w[~kept].max()) <= float(w[kept].min()), name


def test_masks_stay_active_through_training_steps():
    model = _mnv3()
    apply_pruning(model, 0.5, "layer")
    masks = {n: m.weight_mask.clone() for n, m in conv_layers(model)}
    orig = {n: m.weight_orig.detach().clone() for n, m in conv_layers(model)}
    # weight decay moves weight_orig even where the mask is 0: the effective weight must stay 0 there anyway
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        model.eval()(x[:1])  # the forward pre-hook recomputes weight = weight_orig * weight_mask
    for name, m in conv_layers(model):
        assert prune.is_pruned(m)
        dead = masks[name] == 0
        assert not torch.equal(m.weight_orig.detach()[dead], orig[name][dead]), name
        assert (m.weight[dead] == 0).all(), name
        assert torch.equal(m.weight_mask, masks[name]), name
    assert sparsity_report(model).sparsity == pytest.approx(0.5, abs=0.01)


def test_make_permanent_drops_reparametrisation_and_keeps_zeros():
    model = _mnv3()
    apply_pruning(model, 0.5, "layer")
    pruned = {n: m.weight.detach().clone() for n, m in conv_layers(model)}
    assert any(k.endswith("weight_orig") for k in model.state_dict())
    make_permanent(model)
    keys = list(model.state_dict())
    assert not any(k.endswith(("weight_orig", "weight_mask")) for k in keys)
    for name, m in conv_layers(model):
        assert not prune.is_pruned(m)
        assert isinstance(m.weight, nn.Parameter)
        assert torch.equal(m.weight.detach(), pruned[name])
    assert sparsity_report(model).sparsity == pytest.approx(0.5, abs=0.01)
    # a fresh, unpruned model takes the permanent state dict as is
    fresh = _mnv3(seed=1)
    fresh.load_state_dict(model.state_dict())
    assert sparsity_report(fresh).zeros == sparsity_report(model).zeros
    make_permanent(model)  # idempotent


def test_identity_masks_let_a_masked_state_dict_load():
    model = _mnv3()
    apply_pruning(model, 0.5, "layer")
    state = model.state_dict()
    fresh = _mnv3(seed=1)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)
    add_identity_masks(fresh)
    assert all(prune.is_pruned(m) for _, m in conv_layers(fresh))
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(conv_layers(model), conv_layers(fresh)):
        assert torch.equal(a.weight_orig, b.weight_orig), name
        assert torch.equal(a.weight_mask, b.weight_mask), name
    # `weight` is recomputed from weight_orig * weight_mask by the forward pre-hook (or by make_permanent)
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    for (name, a), (_, b) in zip(conv_layers(model), conv_layers(fresh)):
        assert torch.equal(a.weight, b.weight), name
    assert sparsity_report(fresh).zeros == sparsity_report(model).zeros
    # already-masked layers are left alone
    add_identity_masks(fresh)
    assert torch.equal(conv_layers(fresh)[0][1].weight_mask, conv_layers(model)[0][1].weight_mask)


def test_global_scope_warns_about_collapsed_layers():
    model = _mnv3()
    with pytest.warns(UserWarning, match="above 90%") as record:
        rep = apply_pruning(model, 0.5, "global")
    worst_name, worst = max(rep.layers.items(), key=lambda kv: kv[1])
    assert worst > 0.9
    assert rep.worst() == (worst_name, worst)
    assert any(worst_name in str(w.message) for w in record)
    assert len(rep.layers) == len(conv_layers(model))
    assert all(0.0 <= s <= 1.0 for s in rep.layers.values())
    assert rep.sparsity == pytest.approx(0.5, abs=0.01)
    # global: per-layer amounts differ, unlike layer scope
    assert max(rep.layers.values()) - min(rep.layers.values()) > 0.3


def test_global_scope_removes_the_smallest_magnitudes_overall():
    model = _mnv3()
    w = torch.cat([m.weight.detach().abs().flatten() for _, m in conv_layers(model)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pruning(model, 0.5, "global")
    kept = torch.cat([m.weight.detach().flatten() for _, m in conv_layers(model)]) != 0
    assert float(w[~kept].max()) <= float(w[kept].min())


def test_amount_zero_leaves_weights_unchanged():
    model = _mnv3()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = apply_pruning(model, 0.0, "layer")
    assert rep.zeros == 0 and rep.sparsity == 0.0
    for name, m in conv_layers(model):
        assert torch.equal(m.weight, before[f"{name}.weight"]), name
    make_permanent(model)
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_unknown_scope():
    with pytest.raises(ValueError, match="scope"):
        apply_pruning(_mnv3(), 0.3, "channel")


def test_report_on_tiny_model_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.ReLU(), nn.Conv2d(2, 1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8]).view(2, 1, 2, 2))
        model[2].weight.copy_(torch.tensor([0.5, -0.25]).view(1, 2, 1, 1))
    rep = apply_pruning(model, 0.5, "layer")
    # layer 0: round(0.5*8)=4 smallest |w| = 1,2,3,4; layer 2: round(0.5*2)=1 -> -0.25
    assert model[0].weight.flatten().tolist() == [0, 0, 0, 0, 5, -6, 7, -8]
    assert model[2].weight.flatten().tolist() == [0.5, 0]
    assert rep.layers == {"0": 0.5, "2": 0.5}
    assert (rep.zeros, rep.total) == (5, 10)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruning_a_channels_last_model_in_training_layout(scope):
    # the engine trains in channels_last; pruning a model straight after training must work and prune the same
    # weights as in the default layout
    ref = _mnv3()
    model = _mnv3().to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_pruning(ref, 0.3, scope)
        rep = apply_pruning(model, 0.3, scope)
    assert rep.sparsity == pytest.approx(0.3, abs=0.01)
    for (n, a), (_, b) in zip(conv_layers(ref), conv_layers(model)):
        assert torch.equal(a.weight_mask, b.weight_mask), n
    model.to(memory_format=torch.channels_last)(torch.randn(2, 3, 64, 64).contiguous(
        memory_format=torch.channels_last)).sum().backward()  # and it trains on in channels_last
    assert model.features[0][0].weight_orig.grad is not None
