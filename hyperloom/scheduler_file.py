"""The scheduler file: how a broker tells its peers where it is, through shared storage.

``loom-broker --scheduler-file PATH`` writes a small JSON object; workers, clients and
``loom-status`` given the same PATH read it, waiting for it to appear. On a cluster PATH
lies on a file system every node mounts, so nobody copies host:port by hand. The file is
written atomically (a temporary file in the same directory, then ``os.replace``), so a
reader never sees half of it, and the broker removes it when it exits cleanly.

Fields (all required): ``address`` (the ZeroMQ endpoint, ``tcp://HOST:PORT``), ``host``
and ``port`` (the same, apart), ``protocol_version``, ``curve`` (true when the broker
demands the cluster's secret file), ``pid`` and ``hostname`` (of the broker process).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

import psutil

from . import protocol
from .errors import LoomError

DEFAULT_WAIT = 60.0
POLL_INTERVAL = 0.1


@dataclass(frozen=True)
class SchedulerInfo:
    address: str
    host: str
    port: int
    protocol_version: int
    curve: bool
    pid: int
    hostname: str


def describe(host: str, port: int, curve: bool) -> SchedulerInfo:
    """What this process (a broker listening at ``host:port``) writes."""
    return SchedulerInfo(address=f"tcp://{host}:{port}", host=host, port=port,
                         protocol_version=protocol.PROTOCOL_VERSION, curve=curve,
                         pid=os.getpid(), hostname=socket.gethostname())


def write(path: str, info: SchedulerInfo):
    """Write ``info`` to ``path`` atomically: readers see the old file, none, or all of it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "w") as f:
        json.dump(asdict(info), f, indent=1)
        f.write("\n")
    os.replace(temporary, path)


def remove(path: str, pid: int | None = None):
    """Remove ``path`` if it still names the broker ``pid`` (default: this process): a
    newer broker that took the path over keeps its file."""
    pid = os.getpid() if pid is None else pid
    try:
        with open(path) as f:
            if json.load(f).get("pid") != pid:
                return
        os.unlink(path)
    except (OSError, ValueError, AttributeError):
        pass


def parse(path: str, text: str) -> SchedulerInfo:
    """The file's content as a SchedulerInfo; a LoomError naming ``path`` if it is not one."""
    try:
        values = json.loads(text)
        info = SchedulerInfo(address=str(values["address"]), host=str(values["host"]),
                             port=int(values["port"]),
                             protocol_version=int(values["protocol_version"]),
                             curve=bool(values["curve"]), pid=int(values["pid"]),
                             hostname=str(values["hostname"]))
    except (ValueError, KeyError, TypeError) as error:
        raise LoomError(f"scheduler file {path} is not a hyperloom scheduler file "
                        f"({type(error).__name__}: {error})") from None
    if info.protocol_version != protocol.PROTOCOL_VERSION:
        raise LoomError(f"scheduler file {path} names a broker speaking protocol version "
                        f"{info.protocol_version}; this hyperloom speaks "
                        f"{protocol.PROTOCOL_VERSION}")
    return info


def read(path: str, timeout: float = DEFAULT_WAIT) -> SchedulerInfo:
    """Wait up to ``timeout`` seconds for ``path`` to exist and hold a scheduler file.

    A file still naming a broker process of this machine that has ended is stale (left by a
    killed broker): it is waited past like a missing one, so a restarted broker is found."""
    deadline = time.monotonic() + timeout
    stale = None
    while True:
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            text = None
        except OSError as error:
            raise LoomError(f"cannot read scheduler file {path}: {error}") from None
        if text is not None:
            info = parse(path, text)
            if not _is_stale(info):
                return info
            stale = info
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    if stale is not None:
        raise LoomError(f"scheduler file {path} names broker pid {stale.pid} on "
                        f"{stale.hostname}, which is no longer running (waited {timeout:g} s "
                        f"for a new one)")
    raise LoomError(f"scheduler file {path} did not appear within {timeout:g} s "
                    f"(is loom-broker --scheduler-file {path} running, and is the path on "
                    f"storage this machine shares with it?)")


def _is_stale(info: SchedulerInfo) -> bool:
    return info.hostname == socket.gethostname() and not psutil.pid_exists(info.pid)


def interface_address(name: str) -> str:
    """The IPv4 address of network interface ``name``; a clear error if it has none."""
    addresses = psutil.net_if_addrs()
    if name not in addresses:
        raise LoomError(f"no network interface {name!r} on {socket.gethostname()} "
                        f"(there are: {', '.join(sorted(addresses))})")
    for entry in addresses[name]:
        if entry.family == socket.AF_INET:
            return entry.address
    raise LoomError(f"network interface {name!r} has no IPv4 address")


def advertised_host(listen_host: str) -> str:
    """The address peers should use for a socket bound to ``listen_host``: a wildcard bind
    is advertised as this machine's own address, anything else as itself."""
    if listen_host not in ("0.0.0.0", "*", ""):
        return listen_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def connect_address(path: str, address, timeout: float, secret_file) -> tuple[str, int]:
    """(host, port) of the broker ``path`` names, for a client; errors name the file."""
    if address is not None:
        raise LoomError("give either an address or scheduler_file, not both")
    info = read(path, timeout)
    if info.curve and not secret_file:
        raise LoomError(f"the broker in scheduler file {path} demands the cluster's secret "
                        f"file: give secret_file")
    return info.host, info.port
