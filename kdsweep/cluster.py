"""Connecting the driver to Ray: a local Ray on loopback, or a cluster at an address (token auth), and how many
trials it runs at once. Failures to connect are one ConfigError line (exit 2), with Ray's retry noise kept off the
terminal."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

from .errors import ConfigError

LOCAL_NODE_IP = "127.0.0.2" if sys.platform.startswith("linux") else "127.0.0.1"


@contextlib.contextmanager
def _stderr_to(file: IO[bytes]) -> Iterator[None]:
    """Send file descriptor 2 (where Ray's C++ core logs) to `file` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def host_port(address: str) -> tuple[str, int | None]:
    """(host, port) of a Ray address, `ray://` ones too; port None for other forms ("auto")."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    return (host.strip("[]"), int(port)) if sep and port.isdigit() else (address.split("://")[-1], None)


def listening(address: str, timeout: float = 5.0) -> bool:
    """Whether anything accepts a TCP connection at a HOST:PORT address; True for other forms."""
    host, port = host_port(address)
    if port is None:
        return True  # "auto" and the like: Ray resolves those itself
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def connect(address: str, kw: dict, key: str = "--address") -> None:
    """`ray.init(address=...)` whose failures are one line (ConfigError): a cluster that refuses this driver's token,
    or none at the address. Ray itself retries, printing a gRPC warning a second; those stay off the terminal (shown
    if the connection succeeds, or fails some other way). With nothing listening at the address at all Ray waited
    more than 5 minutes; a TCP probe answers that case at once."""
    import ray

    no_cluster = ConfigError(f"{key} {address}: no Ray cluster answered there (start one with `ray start "
                             "--head`, or leave --address and RAY_ADDRESS unset to run locally)")
    if not listening(address):
        raise no_cluster
    with tempfile.TemporaryFile() as log:
        try:
            with _stderr_to(log):
                ray.init(address=address, **kw)
        except ConnectionError as exc:
            why = f"{exc} {exc.__cause__ or ''}"
            if "InvalidAuthToken" in why or "AuthenticationError" in why:
                raise ConfigError(
                    f"{key} {address}: the Ray cluster refused this driver's token: set RAY_AUTH_MODE=token and "
                    "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, as on every node "
                    "(`ray get-auth-token` on the head prints it)") from None
            raise no_cluster from None
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))


def init_ray(address: str | None) -> bool:
    """Connect to `address` (or RAY_ADDRESS) or start Ray locally on loopback; True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    kw = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    key = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        if (host := host_port(address)[0]).startswith("127."):
            kw["_node_ip_address"] = host  # Ray would otherwise swap loopback for the routable address
        connect(address, kw, key)
    else:
        # stay on loopback: a local sweep has no reason to open Ray's unauthenticated ports to the network
        ray.init(_node_ip_address=os.environ.get("KDSWEEP_NODE_IP", LOCAL_NODE_IP), **kw)
    return True


def cluster_size(address: str | None) -> tuple[int, float]:
    """CPUs and GPUs of the Ray cluster at `address` (or RAY_ADDRESS), connecting only for the question (plan)."""
    import ray

    started = init_ray(address)
    try:
        have = ray.cluster_resources()
        return int(have.get("CPU", 0)), float(have.get("GPU", 0))
    finally:
        if started:
            ray.shutdown()


def gpus_total() -> float:
    """GPUs in the Ray cluster (logical ones included)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can run at once with each trial's resources (at least 1)."""
    import ray

    have = ray.cluster_resources()
    n = have.get("CPU", 1) / cpus_per_trial
    if gpus_per_trial:
        n = min(n, have.get("GPU", 0) / gpus_per_trial)
    return max(1, int(n + 1e-9))
