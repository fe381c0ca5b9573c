"""LocalCluster: a broker and workers as subprocesses on free loopback ports.

The embedded default: ``Client()`` with no address, tests and benchmarks use
it. Every process gets its own process group and is stopped (SIGTERM, then
SIGKILL) on exit, so nothing outlives the cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, TYPE_CHECKING

import psutil

from .errors import LoomError

if TYPE_CHECKING:
    from .client import Client

START_TIMEOUT = 60.0


class LocalCluster:
    """``with LocalCluster(workers=2, cpus=1) as cluster: client = cluster.client()``.

    ``cpus`` is per worker; by default the machine's cores are shared out
    (at least one each), and each worker pins its run tasks to cores of its own
    (``--cores``), in turn, as far as the machine has them: otherwise all would pin
    theirs to the first cores. ``worker_args`` are extra ``loom-worker`` options.
    ``dashboard=True`` also starts loom-dashboard; its page is at ``dashboard_url``.
    """

    def __init__(self, workers: int = 2, cpus: int | None = None, host: str = "127.0.0.1",
                 log_dir: str | None = None, worker_args=(), broker_args=(),
                 log_level: str = "warning", secret_file: str | None = None,
                 dashboard: bool = False):
        if cpus is None:
            cpus = max(1, (psutil.cpu_count(logical=True) or 1) // max(1, workers))
        self.n_workers = workers
        self.cpus = cpus
        self.host = host
        self.port: int | None = None
        self.log_dir = log_dir
        self.worker_args = tuple(worker_args)
        self.broker_args = tuple(broker_args)
        self.log_level = log_level
        self.secret_file = secret_file
        secure = ("--secret-file", secret_file) if secret_file else ()
        self.worker_args += secure
        self.broker_args += secure
        self.broker: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.dashboard = dashboard    # True until started, then its DashboardProcess
        self.dashboard_url = None
        self._clients: list[Client] = []
        self._cores_given = 0         # cores handed to workers so far (--cores)
        self._log_files: list[IO[bytes]] = []

    @property
    def broker_pid(self):
        return self.broker.pid if self.broker else None

    @property
    def address(self):
        return (self.host, self.port)

    def start(self):
        try:
            self._start_broker()
            for _ in range(self.n_workers):
                self.add_worker()
            self.wait_for_workers(self.n_workers)
            if self.dashboard:
                from .dashboard import start_dashboard
                self.dashboard = start_dashboard(self.host, self.port, self.secret_file,
                                                 stderr=self._log("dashboard.log"))
                self.dashboard_url = self.dashboard.url
        except BaseException:
            self.stop()
            raise
        return self

    def _log(self, name):
        if self.log_dir is None:
            return subprocess.DEVNULL if self.log_level == "none" else None
        os.makedirs(self.log_dir, exist_ok=True)
        f = open(os.path.join(self.log_dir, name), "ab")
        self._log_files.append(f)
        return f

    def _start_broker(self):
        command = [sys.executable, "-m", "hyperloom.broker", "--host", self.host, "--port", "0",
                   "--log-level", self.log_level, "--exit-with-parent", *self.broker_args]
        self.broker = subprocess.Popen(command, stdout=subprocess.PIPE,
                                       stderr=self._log("broker.log"), start_new_session=True)
        line = self.broker.stdout.readline().decode().strip()
        if not line.startswith("tcp://"):
            raise LoomError(f"loom-broker did not start (printed {line!r}, "
                            f"exit code {self.broker.poll()})")
        self.port = int(line.rsplit(":", 1)[1])

    def add_worker(self, cpus: int | None = None, extra_args=()):
        """Start one more worker; returns its Popen."""
        work_dir = tempfile.gettempdir()
        cpus = cpus or self.cpus
        command = [sys.executable, "-m", "hyperloom.worker", "--cpus", str(cpus),
                   "--wdir", work_dir, "--log-level", self.log_level, "--exit-with-parent",
                   *self._cores_for(cpus), *self.worker_args,
                   *extra_args, self.host, str(self.port)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stderr=self._log(f"worker-{len(self.workers)}.log"),
                                   start_new_session=True)
        self.workers.append(process)
        return process

    def _cores_for(self, cpus: int) -> list[str]:
        """``--cores`` for the next worker: the next ``cpus`` cores this process may run
        on, wrapping around (pinning two workers to the same cores halved the
        throughput of short programs on a 2-core machine)."""
        try:
            available = sorted(os.sched_getaffinity(0))
        except AttributeError:  # no affinity on this platform: the worker's default
            return []
        first, self._cores_given = self._cores_given, self._cores_given + cpus
        cores = [available[(first + i) % len(available)] for i in range(cpus)]
        return ["--cores", ",".join(map(str, cores))] if cores else []

    def wait_for_workers(self, count: int, timeout: float = START_TIMEOUT):
        client = self.client()
        try:
            deadline = time.monotonic() + timeout
            while client.get_stats()["n_workers"] < count:
                # No broker: not started (then the client above could not connect either).
                for process in [p for p in (self.broker, *self.workers) if p is not None]:
                    if process.poll() is not None:
                        raise LoomError(f"a cluster process exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise LoomError(f"{count} workers did not register within {timeout:.0f} s")
                time.sleep(0.02)
        finally:
            client.close()

    def client(self):
        from .client import Client
        client = Client(self.host, self.port, secret_file=self.secret_file)
        self._clients.append(client)
        return client

    def stop(self, timeout: float = 10.0):
        """Stop every process; return ``{name: exit code}`` (a crash shows as non-zero)."""
        codes = {}
        if self.dashboard and self.dashboard is not True:
            self.dashboard.stop()  # first: it is a client of the broker
        for client in self._clients:
            client.close()
        self._clients = []
        named = [(f"worker-{i}", p) for i, p in enumerate(self.workers)]
        if self.broker is not None:
            named.append(("broker", self.broker))
        crashed = {name: p.returncode for name, p in named if p.poll() is not None}
        # Workers first, so they leave cleanly instead of seeing their broker vanish.
        deadline = time.monotonic() + timeout
        workers = [p for name, p in named if name != "broker"]
        brokers = [p for name, p in named if name == "broker"]
        for group in (workers, brokers):
            for process in group:
                _signal_group(process, signal.SIGTERM)
            for process in group:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait()
        if self.broker is not None and self.broker.stdout:
            self.broker.stdout.close()
        for f in self._log_files:
            f.close()
        self._log_files = []
        self.workers = []
        self.broker = None
        for name, process in named:
            codes[name] = crashed.get(name, process.returncode)
        return codes

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _signal_group(process, sig):
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
