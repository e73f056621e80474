"""Folder datasets (`tiny-imagenet`, `imagefolder`): decoded once into uint8 tensors and cached beside the folder.

Decoding 110k JPEGs takes a minute on a small machine; every later load reads one tensor file instead. The cache
holds a fingerprint of its source files (relative path, label, size, mtime) and a checksum of its own tensors, so a
changed folder or a damaged cache is rebuilt (with a warning) rather than trusted.

Samples are stored class-interleaved (the k-th image of every class, then the (k+1)-th, ...), so that
`data.train_limit` / `data.test_limit` ("the first N images") keep every class instead of the first few.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError

from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataConfig
from .dataset import Dataset
from .errors import DataError, DataWarning, one_line

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_SIZE = 64
CACHE_FORMAT = "kdsweep-folder-cache/1"  # bump when the stored layout or decoding changes: old caches become stale
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's set
PROGRESS_MIN_IMAGES = 10_000  # smaller decodes finish in seconds and print nothing
PROGRESS_EVERY_S = 10.0
CHUNK = 256  # images per thread-pool task: few futures, yet progress and errors surface quickly

Items = list[tuple[str, int]]  # (absolute image path, label)


@dataclass(frozen=True)
class Source:
    """What a folder dataset is: image files and labels per split, class names, stored size, metadata files."""

    name: str
    root: Path  # the fingerprint names files relative to it, so a moved folder keeps its cache
    train: Items
    test: Items
    classes: tuple[str, ...]
    size: int
    meta_files: tuple[Path, ...] = ()


# --- the two layouts -------------------------------------------------------------------------------------------

def tiny_imagenet(cfg: DataConfig) -> Dataset:
    """Tiny ImageNet from `<data.root>/tiny-imagenet-200` (val is the test split), downloaded if allowed."""
    with _os_errors():
        return _tiny_imagenet(cfg)


def imagefolder(cfg: DataConfig) -> Dataset:
    """`<data.root>/train/<class>/*` and `<data.root>/val/<class>/*`, each image resized to `data.stored_size`."""
    root = Path(cfg.root).expanduser()
    with _os_errors():
        return load_source(imagefolder_source(root, cfg.stored_size),
                           root / f"imagefolder-{cfg.stored_size}px.kdsweep.pt")


@contextmanager
def _os_errors() -> Iterator[None]:
    """A file-system error not handled where it arose (permissions, I/O) is still a one-line data.root error."""
    try:
        yield
    except OSError as exc:
        where = f" {str(exc.filename)!r}" if exc.filename else ""
        raise DataError(f"data.root: cannot read{where}: {exc.strerror or _line(exc)}") from exc


def _tiny_imagenet(cfg: DataConfig) -> Dataset:
    root = Path(cfg.root).expanduser()
    folder = root / TINY_FOLDER
    if not folder.is_dir():
        if (root / "wnids.txt").is_file():  # a common slip: root set to the dataset folder itself
            raise DataError(f"data.root: {str(root)!r} looks like the {TINY_FOLDER} folder itself; set data.root to "
                            f"the folder that holds {TINY_FOLDER}/")
        if not cfg.download:
            raise DataError(f"data.root: {str(folder)!r} not found and data.download is false")
        _download(root, folder, cfg.verify)
    return load_source(tiny_imagenet_source(folder), root / f"{TINY_FOLDER}.kdsweep.pt")


def _download(root: Path, folder: Path, verify: bool) -> None:
    from torchvision.datasets import utils as tv_utils  # attribute lookup at call time: tests replace it

    try:
        tv_utils.download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5 if verify else None)
    except Exception as exc:  # urllib/zipfile/md5 errors all mean the same to the user
        raise DataError(f"data.root: could not download {TINY_URL} into {str(root)!r}: {_line(exc)}") from exc
    if not folder.is_dir():
        raise DataError(f"data.root: the downloaded archive did not create {str(folder)!r}")


def tiny_imagenet_source(folder: Path) -> Source:
    """The standard tiny-imagenet-200 layout: wnids.txt (class order), train/<wnid>/images, val/images + annotations."""
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"data.root: {str(wnids_file)!r} is missing (expected the standard {TINY_FOLDER} layout)")
    wnids = [ln.strip() for ln in _read_lines(wnids_file)]
    if not wnids:
        raise DataError(f"data.root: {str(wnids_file)!r} lists no classes")
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise DataError(f"data.root: {str(wnids_file)!r} lists {dup!r} twice")
    index = {w: i for i, w in enumerate(wnids)}
    train: Items = []
    for w in wnids:
        images = _images(folder / "train" / w / "images")
        if not images:
            raise DataError(f"data.root: class {w!r} has no images in {str(folder / 'train' / w / 'images')!r}")
        train += [(p, index[w]) for p in images]
    ann = folder / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"data.root: {str(ann)!r} is missing (the val split's labels)")
    test: Items = []
    for n, line in enumerate(_read_lines(ann), 1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"data.root: {str(ann)!r} line {n} is not 'file<TAB>wnid<TAB>...': {line[:80]!r}")
        name, w = fields[0].strip(), fields[1].strip()
        if w not in index:
            raise DataError(f"data.root: {str(ann)!r} line {n} names wnid {w!r}, which is not in wnids.txt")
        test.append((str(folder / "val" / "images" / name), index[w]))
    if not test:
        raise DataError(f"data.root: the val split is empty ({str(ann)!r} lists no images)")
    words = folder / "words.txt"
    meta = (wnids_file, ann) + ((words,) if words.is_file() else ())
    return Source("tiny-imagenet", folder, _interleave(train), _interleave(test),
                  _readable_names(wnids, words), TINY_SIZE, meta)


def imagefolder_source(root: Path, size: int) -> Source:
    """train/<class>/ and val/<class>/ (any depth, common extensions); classes are the sorted train folders."""
    layout = "imagefolder expects train/<class>/<images> and val/<class>/<images>"
    if not root.is_dir():
        raise DataError(f"data.root: {str(root)!r} not found ({layout})")
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"data.root: {str(d)!r} not found ({layout})")
    classes = _subfolders(train_dir)
    if not classes:
        raise DataError(f"data.root: {str(train_dir)!r} has no class folders ({layout})")
    index = {c: i for i, c in enumerate(classes)}
    val_classes = _subfolders(val_dir)
    stray = [c for c in val_classes if c not in index]
    if stray:
        raise DataError(f"data.root: val class {stray[0]!r} has no train folder {str(train_dir / stray[0])!r}")
    train: Items = []
    for c in classes:
        images = _images(train_dir / c)
        if not images:
            raise DataError(f"data.root: class {c!r} has no images in {str(train_dir / c)!r}")
        train += [(p, index[c]) for p in images]
    test = [(p, index[c]) for c in val_classes for p in _images(val_dir / c)]  # an empty val class is harmless
    if not test:
        raise DataError(f"data.root: the val split is empty (no images under {str(val_dir)!r})")
    return Source("imagefolder", root, _interleave(train), _interleave(test), tuple(classes), size)


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, trailing whitespace removed."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"data.root: cannot read {str(path)!r}: {_line(exc)}") from exc
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def _readable_names(wnids: list[str], words: Path) -> tuple[str, ...]:
    """words.txt's first synonym per wnid ('goldfish'), the wnid where it is missing or the name is taken twice."""
    names: dict[str, str] = {}
    if words.is_file():
        for line in _read_lines(words):
            w, _, text = line.partition("\t")
            names[w.strip()] = text.split(",")[0].strip()
    first = [names.get(w) or w for w in wnids]
    return tuple(n if first.count(n) == 1 else f"{n} ({w})" for n, w in zip(first, wnids))


def _subfolders(path: Path) -> list[str]:
    # hidden folders (.ipynb_checkpoints, .git) are tooling, not classes
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    except OSError as exc:
        raise DataError(f"data.root: cannot list {str(path)!r}: {_line(exc)}") from exc


def _images(folder: Path) -> list[str]:
    """Image files under `folder` (recursive, sorted, extension case-insensitive, hidden files skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        # '._x.jpg' (macOS metadata) has an image extension but is not an image
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _interleave(items: Items) -> Items:
    """Round-robin over classes, keeping each class's file order: the first N items cover every class."""
    seen: dict[int, int] = {}
    keyed = []
    for path, y in items:
        k = seen[y] = seen.get(y, -1) + 1
        keyed.append((k, y, path))
    return [(p, y) for _, y, p in sorted(keyed)]


# --- cache -----------------------------------------------------------------------------------------------------

def load_source(src: Source, cache: Path) -> Dataset:
    """The decoded dataset: from `cache` when it matches the folder, else decoded (and cached where possible)."""
    fingerprint = _fingerprint(src)
    ds = _read_cache(cache, fingerprint)
    if ds is not None:
        return ds
    t0 = time.monotonic()
    train_x, test_x = decode_splits(src)
    ds = Dataset(src.name, train_x, _labels(src.train), test_x, _labels(src.test), src.classes)
    blob = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "checksum": _checksum(ds), "name": ds.name,
            "train_x": ds.train_x, "train_y": ds.train_y, "test_x": ds.test_x, "test_y": ds.test_y,
            "classes": list(ds.classes)}
    try:
        save_checkpoint(blob, cache)
    except Exception as exc:  # noqa: BLE001 - read-only folder, full disk, a directory in the way: load anyway
        warnings.warn(f"data.root: could not write the dataset cache {str(cache)!r} ({_line(exc)}); loaded "
                      f"without it, so the next run decodes the {len(src.train) + len(src.test)} images again",
                      DataWarning, stacklevel=3)
    else:
        if len(src.train) + len(src.test) >= PROGRESS_MIN_IMAGES:
            print(f"kdsweep: decoded {src.name} in {time.monotonic() - t0:.0f} s, cached in {str(cache)!r}",
                  file=sys.stderr)
    return ds


def _labels(items: Items) -> torch.Tensor:
    return torch.tensor([y for _, y in items], dtype=torch.int64)


def _fingerprint(src: Source) -> str:
    """Hash of what the cache was built from: format, name, size, classes, and every file's path, label, size, mtime."""
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{src.name}\0{src.size}\0{chr(1).join(src.classes)}\n".encode())
    prefix = str(src.root) + os.sep  # every listed path was built from the root: strip it (relpath is 10x slower)
    meta: Items = [(str(p), -1) for p in src.meta_files]
    for section, items in (("meta", meta), ("train", src.train), ("test", src.test)):
        h.update(f"[{section}]\n".encode())
        for path, y in items:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise DataError(f"data.root: {path!r} is missing") from None
            except OSError as exc:
                raise DataError(f"data.root: cannot read {path!r}: {_line(exc)}") from exc
            rel = path[len(prefix):] if path.startswith(prefix) else path
            h.update(f"{rel}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _checksum(ds: Dataset) -> str:
    h = hashlib.sha256()
    for key in ("train_x", "train_y", "test_x", "test_y"):
        t = getattr(ds, key)
        h.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.contiguous().numpy().data)
    h.update("\0".join(ds.classes).encode())
    return h.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> Dataset | None:
    """The cached dataset if `path` holds an intact cache of the same files; None (with a warning why) otherwise."""
    if not path.is_file():
        return None
    try:
        blob = load_checkpoint(path)  # weights_only=True: a cache file can never run code
        stale = blob["format"] != CACHE_FORMAT or blob["fingerprint"] != fingerprint
        ds = Dataset(blob["name"], blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"],
                     tuple(blob["classes"]))
        intact = stale or blob["checksum"] == _checksum(ds)  # a stale cache is rebuilt anyway: skip the 1 s hash
    except Exception as exc:  # noqa: BLE001 - truncated file, missing key, wrong types: all mean "rebuild"
        warnings.warn(f"data.root: dataset cache {str(path)!r} is unreadable ({_line(exc)}); rebuilding it",
                      DataWarning, stacklevel=4)
        return None
    if stale:
        warnings.warn(f"data.root: dataset cache {str(path)!r} is stale (the image files changed); rebuilding it",
                      DataWarning, stacklevel=4)
        return None
    if not intact:
        warnings.warn(f"data.root: dataset cache {str(path)!r} is corrupt (checksum mismatch); rebuilding it",
                      DataWarning, stacklevel=4)
        return None
    return ds


# --- decoding --------------------------------------------------------------------------------------------------

def decode_image(path: str, size: int) -> np.ndarray:
    """One image file -> (3, size, size) uint8 RGB: shorter side resized to `size` (antialiased), centre-cropped."""
    try:
        with Image.open(path) as im:
            im.draft(None, (size, size))  # JPEG: the decoder itself downscales by 2^k (still >= size): far faster
            rgb = im.convert("RGB")  # grayscale / CMYK / palette files become 3 channels
    except UnidentifiedImageError:
        raise DataError(f"data.root: cannot decode image {path!r}: not an image format PIL can read") from None
    except Exception as exc:  # PIL raises OSError (truncated), ValueError, DecompressionBombError...
        raise DataError(f"data.root: cannot decode image {path!r}: {_line(exc)}") from exc
    if rgb.size != (size, size):
        rgb = TF.center_crop(TF.resize(rgb, [size], antialias=True), [size, size])
    return np.asarray(rgb).transpose(2, 0, 1)


def decode_splits(src: Source) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode both splits with a thread pool (PIL releases the GIL while decoding and resizing)."""
    arrays = [np.empty((len(items), 3, src.size, src.size), np.uint8) for items in (src.train, src.test)]
    total = len(src.train) + len(src.test)

    def work(split: int, lo: int, hi: int) -> int:
        items, out = (src.train, src.test)[split], arrays[split]
        for i in range(lo, hi):
            out[i] = decode_image(items[i][0], src.size)
        return hi - lo

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(16, 2 * cores)  # 2x cores: reads from network disks overlap with decoding
    with ThreadPoolExecutor(workers, thread_name_prefix="kdsweep-decode") as pool:
        pending = {pool.submit(work, s, lo, min(lo + CHUNK, len(items)))
                   for s, items in enumerate((src.train, src.test)) for lo in range(0, len(items), CHUNK)}
        done, last = 0, time.monotonic()
        try:
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_EVERY_S, return_when=FIRST_EXCEPTION)
                done += sum(f.result() for f in finished)  # re-raises a chunk's DataError
                if total >= PROGRESS_MIN_IMAGES and pending and time.monotonic() - last >= PROGRESS_EVERY_S:
                    print(f"kdsweep: decoding {src.name}: {done}/{total} images ({100 * done // total} %)",
                          file=sys.stderr)
                    last = time.monotonic()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # stop queued chunks: the first bad file is the answer
            raise
    return torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1])


def _line(exc: BaseException) -> str:
    """An exception as one short line; an OSError with a file name: only its reason (the message names the path)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return exc.strerror
    return one_line(exc, limit=10_000)
