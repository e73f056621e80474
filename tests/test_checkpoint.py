"""Atomic checkpoint writes and safe (weights_only) loading."""
from __future__ import annotations

import math
import os
import pickle

import pytest
import torch

from kdsweep.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.errors import CheckpointError
from kdsweep.storage import write_bytes


class Payload:
    """A custom class: torch.save pickles it by reference, which weights_only loading must refuse."""

    def __init__(self):
        self.value = 42


def _sample() -> dict:
    return {
        "model": {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "n": torch.tensor(5, dtype=torch.int64)},
        "epoch": 3,
        "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}],
        "lr": 3e-4,
        "name": "student",
        "flags": [True, False, None],
        "shape": (2, 3),
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
    }


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    obj = _sample()
    save_checkpoint(obj, path)
    got = load_checkpoint(path)
    assert set(got) == set(obj)
    assert torch.equal(got["model"]["w"], obj["model"]["w"])
    assert got["model"]["n"].dtype == torch.int64 and int(got["model"]["n"]) == 5
    assert got["half"].dtype == torch.float16 and torch.equal(got["half"], obj["half"])
    assert got["epoch"] == 3 and isinstance(got["epoch"], int)
    assert got["history"] == obj["history"]
    assert math.isclose(got["lr"], 3e-4)
    assert got["name"] == "student" and got["flags"] == [True, False, None] and tuple(got["shape"]) == (2, 3)


def test_round_trip_of_a_model_and_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    path = tmp_path / "train.pt"
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, path)
    got = load_checkpoint(path)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    fresh.load_state_dict(got["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    opt2.load_state_dict(got["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_no_temp_files_left_and_parent_created(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt.pt"
    save_checkpoint(_sample(), path)
    save_checkpoint({"epoch": 2}, path)  # overwrite
    assert os.listdir(path.parent) == ["ckpt.pt"]
    assert load_checkpoint(path) == {"epoch": 2}


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_checkpoint({"fn": lambda x: x}, path)  # lambdas cannot be pickled
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert load_checkpoint(path) == {"epoch": 1}


@pytest.mark.parametrize("payload", [Payload(), {"obj": Payload()}, {"fn": math.sqrt}, {"cls": Payload}],
                         ids=["object", "nested-object", "function", "class"])
def test_pickled_objects_are_refused(tmp_path, payload):
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "pickled" in msg


def test_plain_pickle_with_a_global_is_refused(tmp_path):
    # a legacy (non-zip) torch file is just a pickle stream; a global reference in it must not be executed
    path = tmp_path / "legacy.pt"
    torch.save({"fn": os.getcwd}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "pickled" in str(info.value)


@pytest.mark.parametrize("cut", [0.5, 0.1, 0.9])
def test_truncated_file(tmp_path, cut):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"w": torch.randn(256, 64), "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(255, 191, -1)),
                                     b"PK\x03\x04" + b"\0" * 60],
                         ids=["empty", "text", "binary", "zip-header"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_write_bytes_replaces_content(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    write_bytes(path, b"first version, longer")
    assert path.read_bytes() == b"first version, longer"
    write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    write_bytes(str(path), b"")
    assert path.read_bytes() == b""
    assert os.listdir(path.parent) == ["file.bin"]


def test_write_bytes_to_a_bare_relative_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bytes("bare.bin", b"in the working directory")
    assert (tmp_path / "bare.bin").read_bytes() == b"in the working directory"
    assert os.listdir(tmp_path) == ["bare.bin"]


def test_write_bytes_failure_keeps_old_content(tmp_path):
    path = tmp_path / "file.bin"
    write_bytes(path, b"old")
    with pytest.raises(TypeError):
        write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]


def test_write_bytes_output_is_a_loadable_checkpoint(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"x": torch.ones(3)}, buf)
    path = tmp_path / "c.pt"
    write_bytes(path, buf.getvalue())
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))


def _every_truncation_is_a_checkpoint_error(tmp_path, data: bytes, step: int) -> None:
    path = tmp_path / "cut.pt"
    for n in range(0, len(data), step):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_every_truncation_of_a_saved_checkpoint_is_reported(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"w": torch.arange(64.0).view(8, 8), "epoch": 1, "history": [{"loss": 0.5}]}, path)
    _every_truncation_is_a_checkpoint_error(tmp_path, path.read_bytes(), step=5)


def test_every_truncation_of_a_legacy_checkpoint_is_reported(tmp_path):
    import io
    import warnings

    buf = io.BytesIO()
    torch.save({"w": torch.arange(64.0).view(8, 8), "epoch": 1}, buf, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _every_truncation_is_a_checkpoint_error(tmp_path, buf.getvalue(), step=1)
