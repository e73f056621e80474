"""Experiment storage: a local/NFS path or an object-store URI (s3://bucket/prefix), through `pyarrow.fs`.

Every function takes a location string: a plain path (relative ones are made absolute) or a URI. S3-compatible
endpoints (MinIO, moto, ...) are reached through the usual AWS environment variables: `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`. No torch here: analysis and results import this.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from urllib.parse import urlsplit

import pyarrow.fs as pafs


def is_local(location: str | os.PathLike) -> bool:
    """Whether `location` is a plain path or a file:// URI (else an object store or other remote filesystem)."""
    text = os.fspath(location)
    return "://" not in text or text.startswith("file://")


def local_path(location: str | os.PathLike) -> str:
    """The filesystem path of a local location: a file:// URI's path, or a plain path as given (`~` expanded)."""
    text = os.fspath(location)
    if text.startswith("file://"):
        return pafs.FileSystem.from_uri(text)[1]
    return os.path.expanduser(text)


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    """S3FileSystem honouring AWS_ENDPOINT_URL (S3-compatible servers), and the bucket/key path of `uri`."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    parts = urlsplit(uri)
    path = f"{parts.netloc}{parts.path}"
    if not endpoint:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    ep = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    kw: dict = {"endpoint_override": ep.netloc, "scheme": ep.scheme or "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw), path


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or a URI such as s3://bucket/prefix."""
    text = os.fspath(location)
    if "://" not in text:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    if text.startswith("s3://"):
        fs, path = _s3(text)
    else:
        fs, path = pafs.FileSystem.from_uri(text)
    return fs, path.rstrip("/") or "/"


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` with '/' (local paths and URIs alike)."""
    head = os.fspath(base)
    head = head.rstrip("/") if head.rstrip("/") else ""
    return "/".join([head, *parts])


def basename(location: str | os.PathLike) -> str:
    return os.fspath(location).rstrip("/").rsplit("/", 1)[-1]


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole file; FileNotFoundError/OSError if absent or unreadable."""
    if is_local(location):
        with open(local_path(location), "rb") as f:
            return f.read()
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write `data` so readers never see a partial file: temp + fsync + rename locally; one PUT on an object store.

    The one atomic write of kdsweep: results, records, checkpoints, ONNX files and analysis outputs all come here."""
    if is_local(location):
        _atomic_write(os.path.abspath(local_path(location)), data)  # a bare file name has a folder too: the cwd
        return
    fs, path = resolve(location)
    with fs.open_output_stream(path) as f:  # the object appears only when the upload completes
        f.write(data)


def _atomic_write(path: str, data: bytes | memoryview) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a crash leaves the old file or the new one."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")  # hidden: listdir skips it
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def info(location: str | os.PathLike) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: str | os.PathLike) -> bool:
    """Whether `location` is an existing file (not a folder)."""
    if is_local(location):
        return os.path.isfile(local_path(location))
    return info(location).type == pafs.FileType.File


def listdir(location: str | os.PathLike, suffix: str = "") -> list[str]:
    """Sorted full locations of the entries directly in folder `location` whose name ends with `suffix`;
    hidden names (in-flight temp files) are left out; a missing folder is empty."""
    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    base = os.fspath(location).rstrip("/")
    return sorted(join(base, i.base_name) for i in infos
                  if i.base_name.endswith(suffix) and not i.base_name.startswith("."))


def remove(location: str | os.PathLike) -> None:
    """Delete a file; absent is fine."""
    fs, path = resolve(location)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a file (copy + delete on an object store)."""
    if is_local(src):
        os.replace(local_path(src), local_path(dst))
        return
    fs, a = resolve(src)
    fs.move(a, resolve(dst)[1])


def check_reachable(location: str | os.PathLike) -> None:
    """Raise OSError unless the bucket (first path component) of a remote `location` exists and answers."""
    fs, path = resolve(location)
    bucket = path.lstrip("/").split("/", 1)[0]
    if fs.get_file_info(bucket).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"bucket {bucket!r} does not exist")
