"""ONNX export: dynamic batch, opset, ORT agreement, the per-process template cache and its safety check."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from kdsweep import export
from kdsweep.errors import ExportError
from kdsweep.export import export_onnx
from kdsweep.models import build_model
from kdsweep.runtimes import ort_predict, ort_session

# Each dynamo export costs seconds: this file does three (resnet18, mobilenet_v3_small, resnet18 with 5 classes)
# and shares them through module fixtures; every other export here is filled from a template.
SIZE = 32


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb weights and BN statistics so logits are far from zero and differ between seeds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def _torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model.eval()(x).numpy()


def _within_tolerance(out: np.ndarray, ref: np.ndarray) -> bool:
    return float(np.abs(out - ref).max()) <= export.ATOL + export.RTOL * float(np.abs(ref).max())


@pytest.fixture(scope="module", autouse=True)
def fresh_cache():
    """An empty template cache for this module, so 'first export of a key' holds whatever ran before."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "_TEMPLATES", {})
        yield


@pytest.fixture(scope="module")
def check_x() -> torch.Tensor:
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet(check_x):
    model = _randomise(build_model("resnet18", 10, "none"), 0)
    return model, export_onnx(model, check_x)


@pytest.fixture(scope="module")
def mobilenet(check_x):
    """MobileNetV3-Small in channels_last and training mode, as the engine leaves a trained student."""
    model = _randomise(build_model("mobilenet_v3_small", 10, "none"), 1).to(memory_format=torch.channels_last)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exported = export_onnx(model, check_x)
    # recorded now: other tests put the shared model in eval mode for their PyTorch reference
    left = {"training": model.training, "channels_last": _is_channels_last(model), "state": model.state_dict()}
    return model, exported, before, left


def _is_channels_last(model: torch.nn.Module) -> bool:
    w = model.features[0][0].weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize("which", ["resnet", "mobilenet"])
def test_export_is_single_file_opset_and_dynamic_batch(which, request):
    exported = request.getfixturevalue(which)[1]
    proto = onnx.load_from_string(exported.onnx)
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param and out.type.tensor_type.shape.dim[0].dim_param
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, SIZE, SIZE]
    assert not any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)
    assert exported.file_bytes == len(exported.onnx) > 1_000_000  # the weights are inside
    assert not exported.reused_template and exported.agreement == 1.0


@pytest.mark.parametrize("which", ["resnet", "mobilenet"])
@pytest.mark.parametrize("batch", [1, 5])
def test_ort_matches_torch_at_batch_1_and_5(which, batch, request):
    model, exported = request.getfixturevalue(which)[:2]
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    ref = _torch_logits(model, x)
    out = ort_predict(ort_session(exported.onnx, "cpu", threads=1), x.numpy())
    assert out.shape == (batch, 10)
    assert _within_tolerance(out, ref)
    assert np.abs(ref).max() > 1e-2  # not a vacuous match of near-zero logits


def test_channels_last_training_model_is_left_as_it_was(mobilenet):
    _, exported, before, left = mobilenet
    assert left["training"] and left["channels_last"]
    assert all(torch.equal(before[k], left["state"][k]) for k in before)  # no BN statistics updated by the export
    assert exported.max_abs_diff <= export.ATOL + export.RTOL * 10


def test_same_arch_other_weights_is_filled_from_the_template(resnet, check_x):
    first_model, first = resnet
    model = _randomise(build_model("resnet18", 10, "none"), 7)
    second = export_onnx(model, check_x)
    assert second.reused_template
    assert len(second.onnx) == len(first.onnx)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    out2 = ort_predict(ort_session(second.onnx, "cpu", threads=1), x.numpy())
    out1 = ort_predict(ort_session(first.onnx, "cpu", threads=1), x.numpy())
    assert _within_tolerance(out2, _torch_logits(model, x))
    assert np.abs(out2 - out1).max() > 0.1 * np.abs(out1).max()  # its own weights, not the first model's


def test_a_template_is_shared_with_other_processes_through_storage(resnet, check_x, tmp_path, monkeypatch):
    first_model, _ = resnet
    shared = str(tmp_path / "templates")
    export_onnx(first_model, check_x, shared=shared)  # found in this process's cache: nothing new to share
    monkeypatch.setattr(export, "_TEMPLATES", {})  # another process: an empty cache
    fresh = export_onnx(first_model, check_x, shared=shared)
    assert not fresh.reused_template and len(list((tmp_path / "templates").glob("template-*.onnx"))) == 1
    monkeypatch.setattr(export, "_TEMPLATES", {})  # a third process finds the stored graph
    model = _randomise(build_model("resnet18", 10, "none"), 11)
    third = export_onnx(model, check_x, shared=shared)
    assert third.reused_template
    assert _within_tolerance(ort_predict(ort_session(third.onnx, "cpu", threads=1), check_x.numpy()),
                             _torch_logits(model, check_x))


def test_other_shapes_get_a_fresh_export(resnet, check_x):
    model = _randomise(build_model("resnet18", 5, "none"), 2)
    exported = export_onnx(model, check_x)
    assert not exported.reused_template
    out = ort_predict(ort_session(exported.onnx, "cpu", threads=1), check_x.numpy())
    assert out.shape == (4, 5) and _within_tolerance(out, _torch_logits(model, check_x))


def test_a_wrong_template_raises_instead_of_returning_wrong_bytes(resnet, check_x, monkeypatch):
    (key, template), = [(k, t) for k, t in export._TEMPLATES.items()
                        if t is not None and ("fc.weight", (10, 512), "torch.float32") in k[1]]
    corrupt = onnx.ModelProto()
    corrupt.CopyFrom(template)
    # the first block's first conv reads its neighbour's weight (same shape): a well-formed file, wrong numbers
    conv, = [n for n in corrupt.graph.node if n.op_type == "Conv" and "layer1.0.conv1.weight" in n.input]
    conv.input[list(conv.input).index("layer1.0.conv1.weight")] = "layer1.0.conv2.weight"
    monkeypatch.setitem(export._TEMPLATES, key, corrupt)
    with pytest.raises(ExportError, match="disagrees with PyTorch on the template-filled"):
        export_onnx(_randomise(build_model("resnet18", 10, "none"), 3), check_x)


def test_a_graph_that_does_not_map_onto_the_state_dict_is_always_exported_afresh(monkeypatch):
    monkeypatch.setattr(export, "_maps_onto", lambda proto, state: False)
    x = torch.randn(2, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).eval()
    first, second = export_onnx(model, x), export_onnx(model, x)
    assert not first.reused_template and not second.reused_template
    assert [t for k, t in export._TEMPLATES.items() if k[0] == "torch.nn.modules.container.Sequential"] == [None]


class _DataDependent(torch.nn.Module):
    """Branches on a tensor value, which torch.export cannot trace."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x.mean((2, 3)))
        return y if x.sum() > 0 else -y


def test_an_unexportable_model_raises_one_line_naming_it():
    with pytest.raises(ExportError, match="^ONNX export of _DataDependent failed: [A-Za-z]+: [^\n]+$"):
        export_onnx(_DataDependent(), torch.randn(2, 3, 4, 4))


def test_check_input_must_have_a_batch_of_two():
    model = build_model("resnet18", 10, "none")
    with pytest.raises(ValueError, match="check_input"):
        export_onnx(model, torch.randn(1, 3, SIZE, SIZE))
