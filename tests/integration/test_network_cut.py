"""Connections to a running broker cut in the network (the broker lives on): real
processes, a client's or a worker's TCP going through a proxy that the test cuts.

With ``--journal`` a client re-attaches its session to the same broker and its
waits carry on; without one, the cut ends them with ConnectionLost. A worker cut
off re-attaches with the data it holds (journal or not), and the plan completes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from hyperloom.client import Client, tasks
from hyperloom.errors import ConnectionLost

from .test_broker_restart import (CHAINS, STEPS, Processes, _expected, _no_resubmission,
                                  _submit, a_task_running)
from ..conftest import loom_program, wait_until


class CuttableProxy:
    """Forwards TCP connections from its own port to the broker's; ``cut()`` closes
    every connection open now (as a network failure would), and later ones pass."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return              # closed
            try:
                far = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:         # the broker is gone (the test is ending)
                near.close()
                continue
            with self.lock:
                self.open += [near, far]
                self.accepted += 1
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def cut(self):
        with self.lock:
            cut, self.open = self.open, []
        for sock in cut:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.listener.close()
        self.cut()


def _pump(source, sink):
    try:
        while True:
            chunk = source.recv(1 << 16)
            if not chunk:
                break
            sink.sendall(chunk)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _gather_through_a_cut(client, proxy):
    """Two workers joined: the chains of test_broker_restart.py, cut through ``proxy``
    once a quarter is done; every value must come, over a new proxied connection."""
    wait_until(lambda: client.info()["n_workers"] == 2, timeout=30,
               message="the workers to join")
    ends, middles, sent = _submit(client)
    client.wait([middles[0]])
    proxy.cut()
    assert client.gather(ends) == [_expected(chain) for chain in range(CHAINS)]
    assert proxy.accepted == 2                 # it came back through a new connection
    return ends, middles, sent


@pytest.fixture
def processes(tmp_path):
    running = Processes(str(tmp_path))
    yield running
    running.stop()


@pytest.mark.timeout(120)
def test_a_client_cut_off_from_a_journaled_broker_resumes_its_session(processes):
    processes.start_broker()
    for _ in range(2):
        processes.start_worker()
    proxy = CuttableProxy(processes.port)
    try:
        client = Client("127.0.0.1", proxy.port, connect_timeout=30)
        ends, middles, sent = _gather_through_a_cut(client, proxy)
        _no_resubmission(sent)
        journal = client.info()["journal"]
        assert journal["recomputed"] == 0 and journal["detached_clients"] == []
        # and it goes on as before: a new plan reads a future from before the cut
        three_quarters = client.submit_one(tasks.merge((middles[-1], tasks.const("."))))
        assert three_quarters.gather() == _expected(0)[:2 + 3 * STEPS // 4] + b"."
        client.close()
        assert "re-attached" in processes.log("broker-0.log")
    finally:
        proxy.close()


@pytest.mark.timeout(60)
def test_a_client_cut_off_from_a_broker_without_journal_gets_connection_lost(processes):
    processes.start_broker(journal=False)
    processes.start_worker()
    proxy = CuttableProxy(processes.port)
    try:
        client = Client("127.0.0.1", proxy.port, connect_timeout=30)
        future = a_task_running(client)
        proxy.cut()
        with pytest.raises(ConnectionLost, match="connection to the broker .* was lost"):
            client.wait([future])
        with pytest.raises(ConnectionLost):
            client.gather([future])
        client.close()
    finally:
        proxy.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_a_worker_cut_off_from_the_broker_reattaches_with_its_data(processes, journal):
    processes.start_broker(journal=journal)
    processes.start_worker()
    proxy = CuttableProxy(processes.port)
    try:
        log = open(os.path.join(processes.tmp_path, "worker-behind-proxy.log"), "w")
        processes.workers.append(subprocess.Popen(
            [*loom_program("loom-worker"), "127.0.0.1", str(proxy.port), "--cpus", "1",
             "--broker-timeout", "60", "--wdir", processes.tmp_path],
            stdout=log, stderr=subprocess.STDOUT))
        client = Client("127.0.0.1", processes.port, connect_timeout=30)
        _gather_through_a_cut(client, proxy)
        wait_until(lambda: client.info()["n_workers"] == 2, timeout=10,
                   message="the cut worker to be back")
        assert processes.workers[-1].poll() is None
        assert "re-attached" in processes.log("broker-0.log")
        client.close()
    finally:
        proxy.close()
