"""A training trial's heartbeat (`trial.json`: pid, node, GPU ids, epoch, time of the last beat): written by the
trial, read by `kdsweep status`. Storage only: no torch, no Ray, so a trial process and the status reader both import
it cheaply.
"""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone

from . import storage

HEARTBEAT_S = 30.0  # a training trial rewrites its trial.json this often
STALE_S = 120.0  # no heartbeat for this long: nothing is training that variant any more


def now() -> float:
    """Seconds since the epoch (UTC), as trial records and heartbeats store times."""
    return datetime.now(timezone.utc).timestamp()


def hostname() -> str:
    """This machine's name, as a trial's `node` field gives it."""
    return os.uname().nodename


class Heartbeat:
    """Keeps a training trial's `trial.json` fresh: written on entry, after every epoch (`epoch(n)`) and every
    `HEARTBEAT_S` seconds from a daemon thread, so `kdsweep status` can tell a running trial from a dead one."""

    def __init__(self, path: str, info: dict, every: float = HEARTBEAT_S):
        self.path, self.info, self.every = path, dict(info, epoch=0), every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="kdsweep-heartbeat")

    def write(self) -> None:
        with self._lock:
            try:
                storage.write_bytes(self.path, json.dumps(self.info | {"beat": time.time()}).encode())
            except OSError:
                pass  # a missed beat must not fail the training it reports on

    def epoch(self, n: int) -> None:
        self.info["epoch"] = int(n)
        self.write()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.write()

    def __enter__(self) -> Heartbeat:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def is_running(trial: dict, at: float) -> bool:
    """Whether the trial that wrote heartbeat `trial` still trains at time `at`: a beat under STALE_S old and, when
    it ran on this machine, a live process."""
    beat = float(trial.get("beat", trial.get("start", 0)))
    return at - beat < STALE_S and _alive(trial)


def _alive(trial: dict) -> bool:
    """False when the trial ran on this machine and its process is gone (its heartbeat may still look fresh)."""
    pid = trial.get("pid")
    if trial.get("node") != hostname() or not isinstance(pid, int):
        return True  # another node: only the heartbeat's age can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process whose parent died too lingers as a zombie until it is reaped
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True
