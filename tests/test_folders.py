"""Folder datasets (tiny-imagenet, imagefolder) written from real sklearn digits: layout, labels, cache, errors."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from kdsweep import folders
from kdsweep.cli import main as cli_main
from kdsweep.config import DataConfig
from kdsweep.data import load_dataset
from kdsweep.errors import DataError, DataWarning

N_CLASSES, N_TRAIN, N_VAL = 10, 4, 2
# wnids.txt order is deliberately not sorted: it, not the folder names, defines the labels
WNIDS = [f"n{9 - i:08d}" for i in range(N_CLASSES)]
WORDS = {w: f"digit {i}, numeral {i}" for i, w in enumerate(WNIDS)}


@pytest.fixture(scope="module")
def digits() -> dict[int, list[np.ndarray]]:
    """Real 8x8 digit images (0-255 float), the first N_TRAIN + N_VAL of every class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return {c: [img * 255 / 16 for img in d.images[d.target == c][:N_TRAIN + N_VAL]] for c in range(N_CLASSES)}


def _picture(digit: np.ndarray, size: tuple[int, int], gray: bool, tint: int) -> Image.Image:
    """A digit upscaled to `size` (w, h), centred on a black canvas when not square; coloured unless `gray`."""
    side = min(size)
    glyph = Image.fromarray(digit.astype(np.uint8), "L").resize((side, side), Image.NEAREST)
    canvas = Image.new("L", size)
    canvas.paste(glyph, ((size[0] - side) // 2, (size[1] - side) // 2))
    if gray:
        return canvas
    rgb = np.asarray(canvas)[..., None] * np.array([1.0, 0.6 + 0.04 * tint, 0.9])  # a class-dependent colour
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _write_tiny(root: Path, digits) -> dict:
    """A tiny-imagenet-200 folder in the standard layout; returns the (8x8 source, label) of every split's image."""
    folder = root / folders.TINY_FOLDER
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in WORDS.items()) + "n99999999\tunused\n")
    written: dict = {"train": [], "test": []}
    ann = []
    for label, w in enumerate(WNIDS):
        (folder / "train" / w / "images").mkdir(parents=True)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")  # real archives have it; not an image
        for k, digit in enumerate(digits[label]):
            img = _picture(digit, (64, 64), gray=k % 3 == 0, tint=label)
            if k < N_TRAIN:
                img.save(folder / "train" / w / "images" / f"{w}_{k}.JPEG", quality=95)
                written["train"].append((digit, label))
            else:
                name = f"val_{label * N_VAL + k - N_TRAIN}.JPEG"
                img.save(folder / "val" / "images" / name, quality=95)
                ann.append(f"{name}\t{w}\t0\t0\t63\t63")
                written["test"].append((digit, label))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return written


def _write_imagefolder(root: Path, digits, val_classes: int = 8) -> dict:
    """train/<class>/ (all classes) and val/<class>/ (a subset), non-square PNG and .JPG files, some nested."""
    written: dict = {"train": [], "test": []}
    names = [f"class_{c}" for c in range(N_CLASSES)]  # sorted order == digit order
    for label, name in enumerate(names):
        for k, digit in enumerate(digits[label]):
            split = "train" if k < N_TRAIN else "val"
            if split == "val" and label >= val_classes:
                continue
            folder = root / split / name / ("nested" if k == 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            img = _picture(digit, (48, 80) if k % 2 else (72, 40), gray=k % 3 == 0, tint=label)
            if k % 2:
                img.save(folder / f"img{k}.PNG")
            else:
                img.save(folder / f"img{k}.JPG", quality=95)
            written["train" if split == "train" else "test"].append((digit, label))
    (root / "train" / "class_0" / "notes.txt").write_text("not an image")
    (root / "train" / "class_0" / "._img0.JPG").write_bytes(b"macOS metadata, not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return written


def _assert_matches(x: torch.Tensor, y: torch.Tensor, written: list) -> None:
    """Every stored image is one of the written digits (nearest 8x8 source) and carries that digit's label."""
    sources = torch.tensor(np.stack([d for d, _ in written]), dtype=torch.float32).flatten(1)
    labels = torch.tensor([lab for _, lab in written])
    small = F.interpolate(x[:, :1].float(), size=(8, 8), mode="area").flatten(1)  # red: the untinted channel
    dist = torch.cdist(small, sources)
    nearest = dist.argmin(1)
    assert (labels[nearest] == y).all()
    assert sorted(nearest.tolist()) == list(range(len(written)))  # each written image exactly once
    assert (dist.min(1).values / 8 < 25).all()  # close in pixel terms (rms per pixel), despite JPEG and resizing


def _tiny_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="tiny-imagenet", root=str(root), download=False, **kw)


def _folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), **kw)


def _data_error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(cfg)
    msg = str(info.value)
    assert msg.startswith("data.root: ") and "\n" not in msg
    return msg


@pytest.fixture
def tiny(tmp_path, digits):
    return tmp_path, _write_tiny(tmp_path, digits)


@pytest.fixture
def no_decode(monkeypatch):
    """Any image decode fails the test (the data must come from the cache, or an error must come first)."""
    def refuse(path, size):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(folders, "decode_image", refuse)


# --- tiny-imagenet ------------------------------------------------------------------------------------------------

def test_tiny_imagenet_layout_loads_with_labels_in_wnids_order(tiny):
    root, written = tiny
    ds = load_dataset(_tiny_cfg(root))
    assert ds.name == "tiny-imagenet"
    assert ds.classes == tuple(f"digit {i}" for i in range(N_CLASSES))  # words.txt's first synonym, wnids order
    assert ds.train_x.shape == (N_CLASSES * N_TRAIN, 3, 64, 64) and ds.test_x.shape == (N_CLASSES * N_VAL, 3, 64, 64)
    assert ds.train_x.dtype == ds.test_x.dtype == torch.uint8 and ds.train_y.dtype == ds.test_y.dtype == torch.int64
    _assert_matches(ds.train_x, ds.train_y, written["train"])
    _assert_matches(ds.test_x, ds.test_y, written["test"])
    # the first image of every class was written grayscale: stored as three equal channels
    gray = ds.train_x[:N_CLASSES]
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    assert not (ds.train_x[N_CLASSES:2 * N_CLASSES, 0] == ds.train_x[N_CLASSES:2 * N_CLASSES, 1]).all()
    assert (root / "tiny-imagenet-200.kdsweep.pt").is_file()


def test_limits_keep_every_class_because_samples_are_interleaved(tiny):
    root, _ = tiny
    ds = load_dataset(_tiny_cfg(root, train_limit=N_CLASSES, test_limit=5))
    assert ds.train_x.shape[0] == N_CLASSES and ds.test_x.shape[0] == 5
    assert sorted(ds.train_y.tolist()) == list(range(N_CLASSES))
    assert ds.test_y.tolist() == [0, 1, 2, 3, 4]


def test_second_load_reads_the_cache(tiny, monkeypatch):
    root, _ = tiny
    first = load_dataset(_tiny_cfg(root))
    cache = root / "tiny-imagenet-200.kdsweep.pt"
    mtime = cache.stat().st_mtime_ns
    monkeypatch.setattr(folders, "decode_image", lambda path, size: pytest.fail(f"decoded {path}"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        again = load_dataset(_tiny_cfg(root))
    for key in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, key), getattr(again, key))
    assert again.classes == first.classes
    assert cache.stat().st_mtime_ns == mtime  # read, not rewritten


def test_cache_is_loaded_with_weights_only(tiny, monkeypatch):
    root, _ = tiny
    load_dataset(_tiny_cfg(root))
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("weights_only")) or real(*a, **kw))
    load_dataset(_tiny_cfg(root))
    assert seen == [True]


def test_stale_cache_is_rebuilt_with_the_new_images(tiny, digits):
    root, _ = tiny
    before = load_dataset(_tiny_cfg(root))
    # replace class 0's first training image by a class-7 digit: same name, new content and mtime
    img = root / folders.TINY_FOLDER / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_0.JPEG"
    _picture(digits[7][0], (64, 64), gray=False, tint=0).save(img, quality=95)
    with pytest.warns(DataWarning, match=r"^data\.root: .*is stale"):
        after = load_dataset(_tiny_cfg(root))
    assert not torch.equal(before.train_x[0], after.train_x[0])
    small = F.interpolate(after.train_x[:1].float().mean(1, keepdim=True), size=(8, 8), mode="area").flatten()
    assert (small - torch.tensor(digits[7][0]).flatten()).norm() < (small - torch.tensor(digits[0][0]).flatten()).norm()
    with warnings.catch_warnings():  # and the rebuilt cache is good again
        warnings.simplefilter("error", DataWarning)
        assert torch.equal(load_dataset(_tiny_cfg(root)).train_x, after.train_x)


def test_added_image_makes_the_cache_stale(tiny, digits):
    root, _ = tiny
    load_dataset(_tiny_cfg(root))
    extra = root / folders.TINY_FOLDER / "train" / WNIDS[3] / "images" / "extra.JPEG"
    _picture(digits[3][0], (64, 64), gray=True, tint=3).save(extra)
    with pytest.warns(DataWarning, match="stale"):
        ds = load_dataset(_tiny_cfg(root))
    assert ds.train_x.shape[0] == N_CLASSES * N_TRAIN + 1 and (ds.train_y == 3).sum() == N_TRAIN + 1


def test_corrupt_cache_is_rebuilt(tiny):
    root, _ = tiny
    good = load_dataset(_tiny_cfg(root))
    cache = root / "tiny-imagenet-200.kdsweep.pt"
    blob = torch.load(cache, weights_only=True)
    blob["train_x"][0, 0, 0, 0] ^= 1  # one flipped bit, checksum left as it was
    torch.save(blob, cache)
    with pytest.warns(DataWarning, match=r"^data\.root: .*corrupt \(checksum mismatch\)"):
        ds = load_dataset(_tiny_cfg(root))
    assert torch.equal(ds.train_x, good.train_x)
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated
    with pytest.warns(DataWarning, match=r"^data\.root: .*unreadable"):
        ds = load_dataset(_tiny_cfg(root))
    assert torch.equal(ds.test_x, good.test_x)
    assert torch.equal(torch.load(cache, weights_only=True)["train_x"], good.train_x)  # rewritten whole


def test_unwritable_cache_location_still_loads(tiny):
    root, written = tiny
    (root / "tiny-imagenet-200.kdsweep.pt").mkdir()  # something that cannot be replaced by a file
    with pytest.warns(DataWarning, match=r"^data\.root: could not write the dataset cache"):
        ds = load_dataset(_tiny_cfg(root))
    _assert_matches(ds.train_x, ds.train_y, written["train"])


def test_missing_folder_downloads_the_official_archive(tmp_path, digits, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, md5=None, **kw):  # what the real archive unpacks to, no network
        calls.append((url, md5))
        _write_tiny(Path(download_root), digits)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    ds = load_dataset(DataConfig(dataset="tiny-imagenet", root=str(tmp_path), download=True))
    assert calls == [("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")]
    assert ds.train_x.shape[0] == N_CLASSES * N_TRAIN


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def broken(*a, **kw):
        raise RuntimeError("File not found or corrupted.\nmore detail")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", broken)
    msg = _data_error(DataConfig(dataset="tiny-imagenet", root=str(tmp_path), download=True))
    assert "could not download" in msg and "File not found or corrupted." in msg


def test_permission_error_is_one_line(tiny, monkeypatch):
    root, _ = tiny
    real = Path.is_dir

    def denied(self):  # what pathlib raises for a folder under a parent the user may not search
        if self.name == folders.TINY_FOLDER:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_dir", denied)
    msg = _data_error(_tiny_cfg(root))
    assert msg == f"data.root: cannot read {str(root / folders.TINY_FOLDER)!r}: Permission denied"


def _break_tiny(root: Path, how: str) -> str:
    """Damage a written tiny-imagenet folder one way; return what the error must mention."""
    folder = root / folders.TINY_FOLDER
    if how == "missing folder":
        (root / "elsewhere").mkdir()
        folder.rename(root / "elsewhere" / folders.TINY_FOLDER)
        return f"{str(folder)!r} not found and data.download is false"
    if how == "root is the folder":
        return "looks like the tiny-imagenet-200 folder itself"
    if how == "no wnids":
        (folder / "wnids.txt").unlink()
        return f"{str(folder / 'wnids.txt')!r} is missing"
    if how == "class without images":
        for f in (folder / "train" / WNIDS[2] / "images").iterdir():
            f.unlink()
        return f"class {WNIDS[2]!r} has no images"
    if how == "corrupt image":
        bad = folder / "val" / "images" / "val_3.JPEG"
        bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
        return f"cannot decode image {str(bad)!r}"
    if how == "not an image":
        bad = folder / "train" / WNIDS[5] / "images" / f"{WNIDS[5]}_1.JPEG"
        bad.write_text("<html>404</html>")
        return f"cannot decode image {str(bad)!r}"
    if how == "empty val":
        (folder / "val" / "val_annotations.txt").write_text("\n")
        return "the val split is empty"
    if how == "unknown wnid":
        ann = folder / "val" / "val_annotations.txt"
        ann.write_text(ann.read_text().replace(WNIDS[4], "n12345678", 1))
        return "names wnid 'n12345678', which is not in wnids.txt"
    if how == "listed val image missing":
        (folder / "val" / "images" / "val_0.JPEG").unlink()
        return "val_0.JPEG"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing folder", "root is the folder", "no wnids", "class without images",
                                 "corrupt image", "not an image", "empty val", "unknown wnid",
                                 "listed val image missing"])
def test_tiny_imagenet_errors_are_one_line_naming_data_root(tiny, how):
    root, _ = tiny
    expected = _break_tiny(root, how)
    if how == "root is the folder":
        root = root / folders.TINY_FOLDER
    assert expected in _data_error(_tiny_cfg(root))


@pytest.mark.parametrize("how", ["no wnids", "class without images", "empty val", "unknown wnid"])
def test_layout_errors_come_before_any_decoding(tiny, no_decode, how):
    root, _ = tiny
    assert _break_tiny(root, how) in _data_error(_tiny_cfg(root))


# --- imagefolder --------------------------------------------------------------------------------------------------

def test_imagefolder_resizes_to_stored_size_with_sorted_classes(tmp_path, digits):
    written = _write_imagefolder(tmp_path, digits)
    ds = load_dataset(_folder_cfg(tmp_path, stored_size=32))
    assert ds.name == "imagefolder" and ds.classes == tuple(f"class_{c}" for c in range(N_CLASSES))
    assert ds.train_x.shape == (N_CLASSES * N_TRAIN, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (8 * N_VAL, 3, 32, 32) and ds.test_y.dtype == torch.int64
    _assert_matches(ds.train_x, ds.train_y, written["train"])  # also: notes.txt, ._img0.JPG not taken as images
    _assert_matches(ds.test_x, ds.test_y, written["test"])
    assert set(ds.test_y.tolist()) == set(range(8))  # val is a subset of the classes, labels from the train order
    assert (tmp_path / "imagefolder-32px.kdsweep.pt").is_file()


def test_imagefolder_cache_is_per_stored_size(tmp_path, digits, monkeypatch):
    _write_imagefolder(tmp_path, digits)
    small = load_dataset(_folder_cfg(tmp_path, stored_size=16, train_limit=6, test_limit=3))
    assert small.train_x.shape == (6, 3, 16, 16) and small.test_x.shape == (3, 3, 16, 16)
    assert sorted(small.train_y.tolist()) == [0, 1, 2, 3, 4, 5]
    big = load_dataset(_folder_cfg(tmp_path, stored_size=24))
    assert big.train_x.shape[-1] == 24
    monkeypatch.setattr(folders, "decode_image", lambda path, size: pytest.fail(f"decoded {path}"))
    assert torch.equal(load_dataset(_folder_cfg(tmp_path, stored_size=16)).train_x[:6], small.train_x)
    assert sorted(p.name for p in tmp_path.glob("*.kdsweep.pt")) == ["imagefolder-16px.kdsweep.pt",
                                                                    "imagefolder-24px.kdsweep.pt"]


def _break_folder(root: Path, how: str) -> tuple[Path, str]:
    if how == "missing root":
        return root / "nowhere", f"{str(root / 'nowhere')!r} not found"
    if how == "missing val":
        (root / "val").rename(root / "validation")
        return root, f"{str(root / 'val')!r} not found"
    if how == "stray val class":
        (root / "val" / "zebra").mkdir()
        return root, "val class 'zebra' has no train folder"
    if how == "class without images":
        for f in (root / "train" / "class_4").rglob("img*"):
            f.unlink()
        return root, "class 'class_4' has no images"
    if how == "corrupt image":
        bad = root / "train" / "class_6" / "img2.JPG"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return root, f"cannot decode image {str(bad)!r}"
    if how == "empty val":
        for f in (root / "val").rglob("img*"):
            f.unlink()
        return root, "the val split is empty"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing root", "missing val", "stray val class", "class without images",
                                 "corrupt image", "empty val"])
def test_imagefolder_errors_are_one_line_naming_data_root(tmp_path, digits, how):
    _write_imagefolder(tmp_path, digits)
    root, expected = _break_folder(tmp_path, how)
    assert expected in _data_error(_folder_cfg(root, stored_size=16))


def test_cli_exits_2_on_a_data_error_before_ray(tmp_path, digits, capsys):
    _write_imagefolder(tmp_path / "data", digits)
    (tmp_path / "data" / "val" / "zebra").mkdir()
    cfg = {"name": "folders", "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "image_size": 16},
           "teacher": {"arch": "resnet18", "epochs": 1, "lr": 1e-3}, "student": {"arch": "mobilenet_v3_small",
                                                                          "epochs": 1, "lr": 1e-3}}
    path = tmp_path / "folders.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = cli_main(["run", str(path), "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("kdsweep: error: data.root: val class 'zebra'") and "\n" not in err
    assert not (tmp_path / "runs" / "folders").exists()  # nothing written


def test_progress_lines_only_for_long_decodes(tiny, capsys, monkeypatch):
    root, _ = tiny
    load_dataset(_tiny_cfg(root, train_limit=4))
    assert capsys.readouterr().err == ""  # 60 images: silent
    (root / "tiny-imagenet-200.kdsweep.pt").unlink()
    monkeypatch.setattr(folders, "PROGRESS_MIN_IMAGES", 10)  # as if this were a long decode, reported often
    monkeypatch.setattr(folders, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(folders, "CHUNK", 4)
    real = folders.decode_image
    monkeypatch.setattr(folders, "decode_image", lambda path, size: time.sleep(0.01) or real(path, size))
    load_dataset(_tiny_cfg(root))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("kdsweep: decoded tiny-imagenet in ")
    assert all(ln.startswith("kdsweep: decoding tiny-imagenet: ") and ln.endswith("%)") for ln in lines[:-1])
