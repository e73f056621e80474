"""Model registry: shapes, BatchNorm momentum, weights from a path, and offline `imagenet` weights."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from kdsweep.errors import ModelError
from kdsweep.models import REGISTRY, build_model, count_params, set_bn_momentum


def _bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_output_shape(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_registry_matches_config_archs():
    from kdsweep.config import ARCHS

    assert set(REGISTRY) == set(ARCHS)


def test_mobilenet_bn_momentum_is_raised():
    assert {m.momentum for m in _bns(tvm.mobilenet_v3_small())} == {0.01}  # torchvision's own default
    model = build_model("mobilenet_v3_small", 10)
    assert _bns(model) and {m.momentum for m in _bns(model)} == {0.1}
    assert {m.momentum for m in _bns(build_model("mobilenet_v3_small", 10, bn_momentum=0.3))} == {0.3}
    assert {m.momentum for m in _bns(build_model("mobilenet_v3_small", 10, bn_momentum=None))} == {0.01}


def test_set_bn_momentum():
    model = tvm.resnet18(num_classes=3)
    set_bn_momentum(model, 0.5)
    assert {m.momentum for m in _bns(model)} == {0.5}


def test_count_params_counts_parameters_not_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    # conv 4*3*3*3 + 4, bn 4 + 4 (running stats are buffers), linear 4*2 + 2
    assert count_params(model) == 108 + 4 + 8 + 8 + 2


@pytest.fixture(scope="module")
def resnet_imagenet_like():
    torch.manual_seed(1234)
    return tvm.resnet18(weights=None)  # 1000 classes, like torchvision's ImageNet file


def test_weights_from_state_dict_path(tmp_path, resnet_imagenet_like):
    path = tmp_path / "r18.pth"
    torch.save(resnet_imagenet_like.state_dict(), path)
    model = build_model("resnet18", 10, weights=str(path))
    src = resnet_imagenet_like.state_dict()
    dst = model.state_dict()
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight", "layer3.0.bn1.running_var"):
        assert torch.equal(dst[key], src[key]), key
    assert all(torch.equal(dst[k], v) for k, v in src.items() if not k.startswith("fc."))
    assert model.fc.out_features == 10 and model.fc.in_features == 512
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_weights_from_kdsweep_checkpoint(tmp_path, resnet_imagenet_like):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": resnet_imagenet_like.state_dict(), "epoch": 3, "history": []}, path)
    model = build_model("resnet18", 10, weights=str(path))
    assert torch.equal(model.conv1.weight, resnet_imagenet_like.conv1.weight)
    assert model.fc.out_features == 10


def test_same_head_size_keeps_the_trained_head(tmp_path):
    torch.manual_seed(5)
    student = tvm.mobilenet_v3_small(num_classes=10)
    path = tmp_path / "student.pt"
    torch.save({"model": student.state_dict()}, path)
    model = build_model("mobilenet_v3_small", 10, weights=str(path))
    assert torch.equal(model.classifier[-1].weight, student.classifier[-1].weight)
    assert torch.equal(model.features[0][0].weight, student.features[0][0].weight)


def test_wrong_arch_state_dict_names_the_weights_key(tmp_path):
    path = tmp_path / "mnv3.pt"
    torch.save(tvm.mobilenet_v3_small(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError) as info:
        build_model("resnet18", 10, weights=str(path), key="teacher")
    msg = str(info.value)
    assert "teacher.weights" in msg and str(path) in msg


def test_pickled_weights_file_is_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)  # a pickled module, not a state dict
    with pytest.raises(ModelError) as info:
        build_model("resnet18", 10, weights=str(path), key="teacher")
    msg = str(info.value)
    assert str(path) in msg and "teacher.weights" in msg and "pickled" in msg


@pytest.mark.parametrize("arch,enum", [("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1),
                                       ("mobilenet_v3_small", tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1)])
def test_imagenet_weights_offline(monkeypatch, arch, enum):
    import torchvision.models._api as tv_api

    urls = []

    def offline(url, *args, **kwargs):
        urls.append(url)
        raise urllib.error.URLError("no network")

    # WeightsEnum.get_state_dict calls the name imported into torchvision.models._api
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError) as info:
        build_model(arch, 10, weights="imagenet", key="teacher")
    msg = str(info.value)
    assert "teacher.weights" in msg
    assert "none" in msg and "path" in msg
    assert urls == [enum.url]
    if arch == "resnet18":
        assert urls == [tvm.ResNet18_Weights.IMAGENET1K_V1.url]


def test_imagenet_weights_get_a_new_head(monkeypatch):
    import torchvision.models._api as tv_api

    torch.manual_seed(3)
    fake = tvm.resnet18(weights=None).state_dict()
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: fake)
    model = build_model("resnet18", 10, weights="imagenet")
    assert torch.equal(model.conv1.weight, fake["conv1.weight"])
    assert model.fc.out_features == 10


def test_unknown_arch():
    with pytest.raises(ModelError) as info:
        build_model("resnet181", 10, key="student")
    msg = str(info.value)
    assert msg.startswith("student.arch: ") and "'resnet181'" in msg and "did you mean resnet18" in msg
    assert "\n" not in msg
