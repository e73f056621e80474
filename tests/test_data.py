"""Datasets (digits, synthetic, CIFAR-format archives) and replayable views."""
from __future__ import annotations

import io
import pickle
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from kdsweep import preflight
from kdsweep.config import DataConfig, load_config
from kdsweep.data import (
    CROP_PAD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViewSpec,
    augment_params,
    digits_arrays,
    epoch_order,
    load_dataset,
    make_views,
    train_batches,
)
from kdsweep.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits"))


# --- digits ----------------------------------------------------------------------------------------------------

def test_digits_shapes_and_dtypes(digits):
    assert digits.train_x.shape == (1437, 3, 32, 32)
    assert digits.test_x.shape == (360, 3, 32, 32)
    assert digits.train_x.dtype == digits.test_x.dtype == torch.uint8
    assert digits.train_y.dtype == digits.test_y.dtype == torch.int64
    assert digits.train_y.shape == (1437,) and digits.test_y.shape == (360,)
    assert digits.num_classes == 10
    assert digits.classes == tuple(str(i) for i in range(10))
    # grey digits: the three channels are equal; the images are not blank
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 1])
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 2])
    assert int(digits.train_x.max()) > 200 and int(digits.train_x.min()) == 0


def test_digits_labels_cover_sklearn_digits(digits):
    from sklearn.datasets import load_digits

    want = np.bincount(load_digits().target, minlength=10)
    got = np.bincount(np.concatenate([digits.train_y.numpy(), digits.test_y.numpy()]), minlength=10)
    assert (got == want).all()


def test_digits_split_is_stratified(digits):
    counts = np.bincount(digits.test_y.numpy(), minlength=10)
    assert counts.sum() == 360
    assert all(abs(int(c) - 36) <= 1 for c in counts)


def test_digits_split_is_deterministic(digits):
    again = load_dataset(DataConfig(dataset="digits"))
    for a, b in [(digits.train_x, again.train_x), (digits.train_y, again.train_y), (digits.test_x, again.test_x),
                 (digits.test_y, again.test_y)]:
        assert torch.equal(a, b)
    other = load_dataset(DataConfig(dataset="digits", split_seed=1))
    assert other.test_x.shape == digits.test_x.shape
    assert not torch.equal(other.test_y, digits.test_y)


def test_limits_subset_digits(digits):
    ds = load_dataset(DataConfig(dataset="digits", train_limit=100, test_limit=30))
    assert torch.equal(ds.train_x, digits.train_x[:100]) and torch.equal(ds.train_y, digits.train_y[:100])
    assert torch.equal(ds.test_x, digits.test_x[:30]) and torch.equal(ds.test_y, digits.test_y[:30])
    only_train = load_dataset(DataConfig(dataset="digits", train_limit=50))
    assert len(only_train.train_y) == 50 and len(only_train.test_y) == 360


def test_synthetic_sizes_follow_limits():
    ds = load_dataset(DataConfig(dataset="synthetic", train_limit=40, test_limit=12))
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (12, 3, 32, 32)
    assert ds.train_y.shape == (40,) and ds.test_y.shape == (12,)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert int(ds.train_y.min()) >= 0 and int(ds.train_y.max()) < ds.num_classes == 10
    default = load_dataset(DataConfig(dataset="synthetic"))
    assert (len(default.train_y), len(default.test_y)) == (1024, 256)
    again = load_dataset(DataConfig(dataset="synthetic", train_limit=40, test_limit=12))
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)


# --- views -----------------------------------------------------------------------------------------------------

def test_views_resize_to_image_size(digits):
    v = make_views(digits.train_x[:3], ViewSpec(image_size=224))
    assert v.shape == (3, 3, 224, 224) and v.dtype == torch.float32
    small = make_views(digits.train_x[:3], ViewSpec(image_size=16, normalize="none"))
    assert small.shape == (3, 3, 16, 16)
    assert float(small.min()) >= 0.0 and float(small.max()) <= 1.0


@pytest.mark.parametrize("size", [32, 224])
def test_imagenet_normalisation_on_constant_image(size):
    value = 200
    x = torch.full((2, 3, 32, 32), value, dtype=torch.uint8)
    v = make_views(x, ViewSpec(image_size=size, normalize="imagenet", augment=()))
    for c in range(3):
        expected = (value / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(v[:, c], torch.full_like(v[:, c], expected), atol=1e-5)
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_normalize_none_is_unit_range(digits):
    x = digits.train_x[:4]
    v = make_views(x, ViewSpec(image_size=32, normalize="none", augment=()))
    assert torch.allclose(v, x.float() / 255)
    big = make_views(x, ViewSpec(image_size=224, normalize="none", augment=()))
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0 + 1e-6


def test_augment_params_are_pure():
    a, b = augment_params(3, 2, 500), augment_params(3, 2, 500)
    assert torch.equal(a.flip, b.flip) and torch.equal(a.dy, b.dy) and torch.equal(a.dx, b.dx)
    c = augment_params(3, 5, 500)
    assert not torch.equal(a.flip, c.flip) and not torch.equal(a.dy, c.dy)
    d = augment_params(4, 2, 500)
    assert not torch.equal(a.dx, d.dx)
    assert a.flip.dtype == torch.bool
    assert int(a.dy.min()) >= 0 and int(a.dy.max()) <= 2 * CROP_PAD
    assert int(a.dx.min()) >= 0 and int(a.dx.max()) <= 2 * CROP_PAD
    # both outcomes and the whole offset range actually occur
    assert 0 < int(a.flip.sum()) < 500
    assert set(a.dy.tolist()) == set(range(2 * CROP_PAD + 1))


def test_augmented_views_replay_exactly(digits):
    x, n = digits.train_x[:64], 64
    spec = ViewSpec(image_size=48, normalize="imagenet", augment=("flip", "crop"))
    idx = torch.arange(n)
    v1 = make_views(x, spec, augment_params(0, 1, n), idx)
    v2 = make_views(x.clone(), spec, augment_params(0, 1, n), idx)
    assert torch.equal(v1, v2)
    v3 = make_views(x, spec, augment_params(0, 2, n), idx)
    assert not torch.equal(v1, v3)


def test_flip_mirrors_exactly_the_flipped_samples(digits):
    n = 40
    x = digits.train_x[:n]
    aug = augment_params(7, 0, n)
    v = make_views(x, ViewSpec(image_size=32, normalize="none", augment=("flip",)), aug, torch.arange(n))
    ref = x.float() / 255
    assert 0 < int(aug.flip.sum()) < n
    for i in range(n):
        want = ref[i].flip(-1) if aug.flip[i] else ref[i]
        assert torch.equal(v[i], want), i


def _manual_crop(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * CROP_PAD, w + 2 * CROP_PAD), dtype=img.dtype)
    padded[:, CROP_PAD:CROP_PAD + h, CROP_PAD:CROP_PAD + w] = img
    return padded[:, dy:dy + h, dx:dx + w]


def test_crop_is_a_translation_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (30, 3, 32, 32), generator=g, dtype=torch.uint8)  # no zeros: padding is visible
    aug = augment_params(1, 3, 30)
    v = make_views(x, ViewSpec(image_size=32, normalize="none", augment=("crop",)), aug, torch.arange(30))
    assert v.shape == x.shape
    got = (v * 255).round().to(torch.uint8).numpy()
    for i in range(30):
        dy, dx = int(aug.dy[i]), int(aug.dx[i])
        assert (got[i] == _manual_crop(x[i].numpy(), dy, dx)).all(), i
        # a translation by (dy-4, dx-4): interior pixels move, the uncovered border is zero
        sy, sx = dy - CROP_PAD, dx - CROP_PAD
        src = x[i].numpy()
        ys = slice(max(0, -sy), 32 - max(0, sy))
        xs = slice(max(0, -sx), 32 - max(0, sx))
        assert (got[i][:, ys, xs] == src[:, max(0, sy):32 + min(0, sy), max(0, sx):32 + min(0, sx)]).all()
        zeros = (got[i] == 0).sum()
        assert zeros == 3 * (32 * 32 - (32 - abs(sy)) * (32 - abs(sx)))


def test_augmentation_follows_sample_index_not_batch_position(digits):
    n = 100
    x_all = digits.train_x[:n]
    aug = augment_params(2, 0, n)
    spec = ViewSpec(image_size=32, normalize="none", augment=("crop", "flip"))
    idx = torch.tensor([57, 3, 91, 12])
    part = make_views(x_all[idx], spec, aug, idx)
    full = make_views(x_all, spec, aug, torch.arange(n))
    assert torch.equal(part, full[idx])
    for j, i in enumerate(idx.tolist()):
        want = _manual_crop(x_all[i].numpy(), int(aug.dy[i]), int(aug.dx[i]))
        if aug.flip[i]:
            want = want[:, :, ::-1]
        assert ((part[j] * 255).round().to(torch.uint8).numpy() == want).all()


def test_no_augmentation_without_params_or_list(digits):
    x = digits.train_x[:8]
    plain = make_views(x, ViewSpec(image_size=32, normalize="none", augment=()))
    assert torch.equal(make_views(x, ViewSpec(32, "none", ("flip", "crop"))), plain)  # aug=None: eval view
    aug = augment_params(0, 0, 8)
    assert torch.equal(make_views(x, ViewSpec(32, "none", ()), aug, torch.arange(8)), plain)


def test_view_spec_from_config():
    spec = ViewSpec.from_config(DataConfig(dataset="digits", image_size=64, normalize="none", augment=["crop"]))
    assert spec == ViewSpec(64, "none", ("crop",))


def test_epoch_order_is_a_permutation():
    order = epoch_order(0, 0, 1000)
    assert torch.equal(order.sort().values, torch.arange(1000))
    assert torch.equal(order, epoch_order(0, 0, 1000))
    assert not torch.equal(order, epoch_order(0, 1, 1000))
    assert not torch.equal(order, epoch_order(1, 0, 1000))


def test_train_batches_drop_a_trailing_single_sample():
    b = train_batches(257, 128, 0, 0)
    assert [len(x) for x in b] == [128, 128]
    flat = torch.cat(b)
    assert len(set(flat.tolist())) == 256 and int(flat.max()) < 257
    assert torch.equal(flat, epoch_order(0, 0, 257)[:256])
    kept = train_batches(258, 128, 0, 0)
    assert [len(x) for x in kept] == [128, 128, 2]
    assert torch.equal(torch.cat(kept).sort().values, torch.arange(258))
    assert [len(x) for x in train_batches(256, 128, 0, 0)] == [128, 128]


# --- CIFAR-format archives -------------------------------------------------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way the real CIFAR files were written (Python 2: keys and names are byte strings)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):  # the real files reference numpy.core, not numpy 2's numpy._core
        if getattr(obj, "__name__", None) == "_reconstruct" and "numpy" in getattr(obj, "__module__", ""):
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump_py2(obj, path: Path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _batch(x: np.ndarray, y: np.ndarray, label_key: bytes, title: bytes) -> dict:
    # one row per image: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    rows = np.ascontiguousarray(x.reshape(len(x), 3 * 32 * 32))
    return {b"batch_label": title, label_key: [int(v) for v in y], b"data": rows,
            b"filenames": [b"img_%05d.png" % i for i in range(len(x))]}


@pytest.fixture(scope="module")
def digit_images():
    xtr, xte, ytr, yte = digits_arrays()
    # give the three channels different content so a channel/plane mix-up cannot pass
    def colour(x):
        x = x.copy()
        x[:, 1] = 255 - x[:, 1]
        x[:, 2] = x[:, 2] // 2
        return x
    return colour(xtr[:60]), ytr[:60], colour(xte[:25]), yte[:25]


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_cifar10(root: Path, images) -> Path:
    xtr, ytr, xte, yte = images
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(xtr)), 5)):
        batch = _batch(xtr[part], ytr[part], b"labels", b"training batch %d of 5" % (i + 1))
        _dump_py2(batch, folder / f"data_batch_{i + 1}")
    _dump_py2(_batch(xte, yte, b"labels", b"testing batch 1 of 1"), folder / "test_batch")
    _dump_py2({b"num_cases_per_batch": 12, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072},
              folder / "batches.meta")
    return folder


def _write_cifar100(root: Path, images) -> tuple[Path, list[str]]:
    xtr, ytr, xte, yte = images
    names = [f"class_{i:02d}" for i in range(100)]
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, x, y in [("train", xtr, ytr), ("test", xte, yte)]:
        d = _batch(x, y, b"fine_labels", name.encode())
        d[b"coarse_labels"] = [int(v) // 5 for v in y]
        _dump_py2(d, folder / name)
    _dump_py2({b"fine_label_names": [n.encode() for n in names],
               b"coarse_label_names": [b"super_%02d" % i for i in range(20)]}, folder / "meta")
    return folder, names


def test_generated_archive_matches_torchvision_expectations(tmp_path, digit_images):
    # the writer itself: readable as torchvision reads it (latin1) and as the CIFAR page documents it (bytes keys)
    folder = _write_cifar10(tmp_path, digit_images)
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) >= {"data", "labels"} and entry["data"].dtype == np.uint8 and entry["data"].shape[1] == 3072
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"


def test_cifar10_archive_round_trips(tmp_path, digit_images):
    xtr, ytr, xte, yte = digit_images
    _write_cifar10(tmp_path, digit_images)
    ds = load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=False, verify=False))
    assert ds.name == "cifar10"
    assert ds.classes == tuple(CIFAR10_NAMES)
    assert ds.train_x.shape == (60, 3, 32, 32) and ds.test_x.shape == (25, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert (ds.train_x.numpy() == xtr).all() and (ds.train_y.numpy() == ytr).all()
    assert (ds.test_x.numpy() == xte).all() and (ds.test_y.numpy() == yte).all()


def test_cifar100_archive_round_trips(tmp_path, digit_images):
    xtr, ytr, xte, yte = digit_images
    _, names = _write_cifar100(tmp_path, digit_images)
    ds = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), download=False, verify=False,
                                 train_limit=50, test_limit=20))
    assert ds.classes == tuple(names) and ds.num_classes == 100
    assert (ds.train_x.numpy() == xtr[:50]).all() and (ds.train_y.numpy() == ytr[:50]).all()
    assert (ds.test_x.numpy() == xte[:20]).all() and (ds.test_y.numpy() == yte[:20]).all()


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(tv_utils, "download_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.mark.parametrize("download", [False, True])
def test_checksum_mismatch_is_reported_not_redownloaded(tmp_path, digit_images, no_network, download):
    folder = _write_cifar10(tmp_path, digit_images)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=download))  # verify defaults to True
    msg = str(info.value)
    assert "checksum" in msg and str(folder / "data_batch_1") in msg
    assert no_network == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # nothing fetched beside it


@pytest.mark.parametrize("verify,name", [(True, "data_batch_1"), (False, "data_batch_3"), (False, "test_batch"),
                                         (False, "batches.meta")])
def test_missing_file_names_the_path(tmp_path, digit_images, no_network, verify, name):
    folder = _write_cifar10(tmp_path, digit_images)
    (folder / name).unlink()
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset="cifar10", root=str(tmp_path), download=True, verify=verify))
    assert str(folder / name) in str(info.value) and "missing" in str(info.value)
    assert no_network == []


def test_missing_meta_file_names_the_path(tmp_path, digit_images, no_network):
    _, _ = _write_cifar100(tmp_path, digit_images)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path), download=False, verify=False))
    assert str(tmp_path / "cifar-100-python" / "meta") in str(info.value)


def test_missing_root_is_caught_by_preflight(tmp_path):
    cfg = load_config({"data": {"dataset": "cifar10", "root": str(tmp_path / "none"), "download": False}})
    with pytest.raises(ConfigError) as info:
        preflight.check(cfg)
    assert str(info.value).startswith("config key 'data.root': ")


@pytest.mark.parametrize("dataset,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_root_at_data_level_names_the_path(tmp_path, no_network, dataset, folder):
    root = tmp_path / "none"
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(dataset=dataset, root=str(root), download=False))
    assert str(root / folder) in str(info.value)
    assert no_network == []
