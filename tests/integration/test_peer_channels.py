"""Data channels between real workers: when a worker leaves (goodbye) or is lost, the
broker tells the others (PeersGone) and they close their channel to it, so a long
campaign with churning workers keeps flat file descriptors and memory."""

import os
import shutil
import signal
import socket
import struct
import sys
import tempfile

import psutil
import pytest

from hyperloom.client import tasks

from ..conftest import data_port, wait_until

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
from my_count import my_count  # noqa: E402


def connections_to(process, port):
    return [c for c in psutil.Process(process.pid).net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


def worker_log(cluster, index):
    with open(os.path.join(cluster.log_dir, f"worker-{index}.log")) as f:
        return f.read()


@pytest.fixture
def extension_path(monkeypatch):
    """``my/count`` is provided only by the workers started with ``--extension my_count``:
    a task of that type makes the other worker push its input there."""
    monkeypatch.setenv("PYTHONPATH", os.path.abspath(EXAMPLES) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))


def pull_from(client, held, survivor, newcomer):
    """Run a my/count on ``newcomer`` on data held by ``survivor``; return the port of the
    newcomer's data socket, to which the survivor now has a connection."""
    assert client.submit_one(my_count(held, "a")).gather() == struct.pack("<Q", 3)
    port = data_port(newcomer, client)
    assert connections_to(survivor, port), "the data did not go worker to worker"
    return port


@pytest.mark.timeout(90)
def test_a_worker_closes_its_channels_to_workers_that_leave(make_cluster, extension_path):
    """Three workers come, take data from the survivor, and leave (SIGTERM: Goodbye).
    The old code kept a PUSH socket per departed peer for ever, reconnecting in the
    background: one more open file descriptor in the survivor per departure."""
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    survivor = cluster.workers[0]
    held = client.submit_one(tasks.const("banana"))
    held.wait()
    baseline = psutil.Process(survivor.pid).num_fds()
    addresses = []
    for round_ in range(3):
        newcomer = cluster.add_worker(extra_args=("--extension", "my_count"))
        wait_until(lambda: client.get_stats()["n_workers"] == 2, timeout=30,
                   message="the newcomer to register")
        port = pull_from(client, held, survivor, newcomer)
        addresses.append(f"tcp://127.0.0.1:{port}")
        assert psutil.Process(survivor.pid).num_fds() > baseline  # the channel and its TCP
        newcomer.send_signal(signal.SIGTERM)
        assert newcomer.wait(10) == 0
        wait_until(lambda: psutil.Process(survivor.pid).num_fds() <= baseline, timeout=10,
                   message=f"round {round_}: the survivor to close its channel "
                           f"(fds {psutil.Process(survivor.pid).num_fds()}, was {baseline})")
    log = worker_log(cluster, 0)
    for address in addresses:
        assert f"closed the data channel to {address}: the worker left" in log
    assert client.gather(client.submit([tasks.merge((held, tasks.const("!")))])) \
        == [b"banana!"]


@pytest.mark.allow_crash
@pytest.mark.timeout(90)
def test_a_worker_closes_its_channel_to_a_worker_the_broker_lost(make_cluster,
                                                                  extension_path):
    """A peer that hangs (SIGSTOP: its TCP stack still answers) is lost by heartbeat.
    The survivor's connection to it stays ESTABLISHED until PeersGone closes it; the old
    code kept it open for ever."""
    beat = ("--heartbeat", "0.2")
    cluster = make_cluster(workers=1, cpus=1, worker_args=beat,
                           broker_args=(*beat, "--heartbeat-misses", "5"))
    client = cluster.client()
    survivor = cluster.workers[0]
    held = client.submit_one(tasks.const("banana"))
    held.wait()
    hung = cluster.add_worker(extra_args=("--extension", "my_count"))
    cluster.wait_for_workers(2)
    port = pull_from(client, held, survivor, hung)
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=20,
                   message="the broker to count the hung worker lost")
        wait_until(lambda: not connections_to(survivor, port), timeout=10,
                   message="the survivor to close its connection to the lost worker")
        assert f"closed the data channel to tcp://127.0.0.1:{port}" in worker_log(cluster, 0)
    finally:
        os.kill(hung.pid, signal.SIGKILL)
        hung.wait(10)
        shutil.rmtree(os.path.join(tempfile.gettempdir(),
                                   f"worker-{socket.gethostname()}-{hung.pid}"),
                      ignore_errors=True)
    assert client.submit_one(tasks.merge((held, tasks.const("!")))).gather() == b"banana!"
