"""Fixtures shared by all tests: real clusters on free loopback ports, cleaned up."""

import faulthandler
import os
import random
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

import hyperloom

# Exit codes of a process stopped by us: 0 (clean SIGTERM handling) or -15/-9 (signal).
CLEAN_EXIT = {0, -15}


# Each console script of setup.cfg and the module that ``python -m`` runs for it.
PROGRAM_MODULES = {
    "loom-broker": "hyperloom.broker",
    "loom-worker": "hyperloom.worker",
    "loom-keygen": "hyperloom.security",
    "loom-report": "hyperloom.report",
    "loom-status": "hyperloom.status",
    "loom-dashboard": "hyperloom.dashboard",
}


def loom_program(name):
    """The command line that starts program ``name`` of the interpreter running the tests.

    Never the bare name: PATH may hold no ``loom-*`` at all (a venv that was never
    activated) or another installation's. The console script beside
    ``sys.executable`` is what a user of this interpreter runs; where there is
    none (the package imported from a source tree), ``python -m`` runs the same code.
    """
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", PROGRAM_MODULES[name]]


def data_port(process, client):
    """The port of a worker's data socket: of the TCP ports it listens on (its data socket
    and its bulk lane), the one the broker knows as a worker's data address."""
    port = data_port_or_none(process.pid, client)
    assert port is not None, f"worker {process.pid} has no data address the broker knows"
    return port


def data_port_or_none(pid, client):
    """``data_port``, or None while the worker is not registered (or is gone)."""
    try:
        listening = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
    except psutil.NoSuchProcess:
        return None
    known = {int(w["address"].rsplit(":", 1)[1]) for w in client.info()["workers"]}
    ports = listening & known
    return ports.pop() if len(ports) == 1 else None


def port_to_bind_later(exclude=()):
    """A free port for a program that must be told its port before it starts (it binds
    the port itself: a worker started before its broker, Slurm's daemons).

    A port found free may be taken before the program binds it. This one is drawn below
    the kernel's ephemeral range, which is where every port-0 bind (all the other tests'
    brokers and workers) and every outgoing connection gets its port: nothing else this
    machine runs is handed it meanwhile. Callers still restart their program on another
    port if it finds the port taken (someone binding that very number), so the
    remaining race costs a retry, never a failed test.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    while True:
        port = random.randrange(max(1024, ephemeral_low - 12000), ephemeral_low)
        if port in exclude:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition", details=None):
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds, with what
    ``details()`` says then (the state a rare failure needs to be understood)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = f"\n{details()}" if details else ""
            pytest.fail(f"timed out after {timeout} s waiting for {message}{said}")
        time.sleep(interval)


def wait_for_retirement(client, retiring, futures):
    """Once ``futures`` finished, with results on both workers of the cluster, wait until
    ``retiring`` (a worker started with ``--lifetime 3``) retires and exits 0; returns the
    bytes each worker held before."""
    client.wait(futures)
    held = {w["id"]: w["bytes_held"] for w in client.info()["workers"]}
    assert all(held.values()), f"both workers hold results: {held}"
    wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=30,
               message="the worker with a 3 s lifetime to retire")
    assert retiring.wait(timeout=30) == 0
    return held


def process_gone(pid: int) -> bool:
    """The process ``pid`` ended (exited, or a zombie waiting for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class ClusterFactory:
    """Starts LocalClusters with logs in the test's tmp dir; stops them all at teardown."""

    def __init__(self, log_root):
        self.log_root = log_root
        self.clusters = []

    def __call__(self, workers=2, cpus=1, **kwargs):
        log_dir = os.path.join(self.log_root, f"cluster-{len(self.clusters)}")
        kwargs.setdefault("log_level", "info")
        cluster = hyperloom.LocalCluster(workers=workers, cpus=cpus, log_dir=log_dir, **kwargs)
        self.clusters.append(cluster)
        return cluster.start()

    def stop_all(self, allow_crash=False):
        problems = []
        for cluster in self.clusters:
            codes = cluster.stop()
            crashed = {name: code for name, code in codes.items()
                       if code not in CLEAN_EXIT}
            if crashed and not allow_crash:
                problems.append(f"{crashed} (logs in {cluster.log_dir})")
        self.clusters = []
        return problems


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test marked with a longer ``timeout`` than the default gets its stack dump
    (``faulthandler_timeout`` of setup.cfg) that much later too.

    pytest arms one dump for every test at 80 s; a chaos test allowed 20 minutes would
    otherwise print every thread's stack in the middle of a healthy run, which reads
    as a hang that never happened. Re-armed on pytest's own copy of stderr, 10 s
    before pytest-timeout ends the test.
    """
    marker = item.get_closest_marker("timeout")
    dump_after = float(item.config.getini("faulthandler_timeout") or 0)
    if marker is None or not marker.args or dump_after <= 0:
        return
    allowed = float(marker.args[0])
    if allowed - 10 <= dump_after:
        return
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        stderr = item.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError):
        return  # another pytest: its default dump stays as it was
    faulthandler.dump_traceback_later(allowed - 10, file=stderr)


@pytest.fixture
def processes():
    """``processes(*argv, **popen_kwargs)`` starts a program in its own process group;
    teardown kills whatever still runs (SIGKILL to the group) and closes its pipes."""
    started = []

    def start(*args, **kwargs):
        process = subprocess.Popen(list(args), start_new_session=True, **kwargs)
        started.append(process)
        return process
    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


@pytest.fixture
def make_cluster(tmp_path, request):
    factory = ClusterFactory(str(tmp_path))
    yield factory
    problems = factory.stop_all()
    if problems and not request.node.get_closest_marker("allow_crash"):
        pytest.fail(f"cluster processes exited abnormally: {problems}")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One 2-worker cluster for a whole test module (for tests that do not break it)."""
    factory = ClusterFactory(str(tmp_path_factory.mktemp("shared")))
    cluster = factory()
    yield cluster
    problems = factory.stop_all()
    assert not problems, f"cluster processes exited abnormally: {problems}"


@pytest.fixture
def client(shared_cluster):
    client = shared_cluster.client()
    yield client
    client.close()


class HandMadeBroker:
    """A bare ZeroMQ ROUTER where a broker would listen (loopback, a free port), for tests
    that need a broker to do what a real one cannot be made to do at a chosen moment;
    ``restart()`` closes it (the broker dies) and binds a new one on the same port."""

    def __init__(self):
        import zmq
        self._zmq = zmq
        self.context = zmq.Context()
        self.router = self._new_router()
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")

    def _new_router(self):
        router = self.context.socket(self._zmq.ROUTER)
        router.setsockopt(self._zmq.LINGER, 0)
        return router

    def restart(self, timeout=10.0):
        """The broker dies, and comes back on its port: the new ROUTER. (ZeroMQ lets go
        of the port in its I/O thread, a moment after close: the bind waits for that.)"""
        self.router.close(linger=0)
        self.router = self._new_router()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.router.bind(f"tcp://127.0.0.1:{self.port}")
                return self.router
            except self._zmq.ZMQError as error:
                if error.errno != self._zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self):
        self.router.close(linger=0)
        self.context.term()
