"""When a journaled broker fsyncs, against what it sends: a real broker loop in this
process (to watch its journal and its sends), a real worker and a real client.

A client must never be told anything its broker's journal could still lose (a
finished task, a session, an ``Accepted`` plan); what only workers are told needs
no fsync first (after a crash they re-attach and say what they hold and run), so a
task goes out to its worker before the fsync of the round that placed it.
"""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from hyperloom import protocol
from hyperloom.broker.server import BrokerConfig, BrokerServer
from hyperloom.client import Client, tasks

from ..conftest import loom_program, wait_until


class WatchedBroker(BrokerServer):
    """Records, for every message it sends, whether its peer is a worker, the message's
    name and whether the journal held written records not yet fsynced."""

    def __init__(self, config):
        super().__init__(config)
        self.sent = []

    def _send(self, identity, frames):
        name = protocol.name_of(protocol.decode(frames[0])[0])
        assert self.journal is not None
        self.sent.append((identity in self.core.workers, name, self.journal.unsynced))
        super()._send(identity, frames)


@pytest.mark.timeout(60)
def test_clients_hear_only_what_is_fsynced_and_workers_get_tasks_before_it(tmp_path):
    broker = WatchedBroker(BrokerConfig(port=0, journal=str(tmp_path / "journal")))
    loop = threading.Thread(target=broker.run, daemon=True)
    loop.start()
    worker = None
    try:
        log = open(os.path.join(tmp_path, "worker.log"), "w")
        worker = subprocess.Popen(
            [*loom_program("loom-worker"), "127.0.0.1", str(broker.port), "--cpus", "1"],
            stdout=log, stderr=subprocess.STDOUT)
        with Client("127.0.0.1", broker.port, connect_timeout=30) as client:
            wait_until(lambda: client.info()["n_workers"] == 1, timeout=30,
                       message="the worker to join")
            for i in range(20):
                value = tasks.merge((tasks.const(b"%d" % i), tasks.const(b"!")))
                assert client.gather([client.submit_one(value)]) == [b"%d!" % i]
            wait_until(lambda: any(name == "Accepted" for _, name, _ in list(broker.sent)),
                       timeout=10, message="an Accepted (it waits a while after a plan)")
        sent = list(broker.sent)
        to_clients = [(name, unsynced) for is_worker, name, unsynced in sent if not is_worker]
        assert {"Welcome", "Session", "Accepted", "Results"} <= {n for n, _ in to_clients}
        assert not [name for name, unsynced in to_clients if unsynced], \
            "a client was told something before the journal's fsync"
        early = [name for is_worker, name, unsynced in sent if is_worker and unsynced]
        assert early.count("ComputeTasks") >= 20, \
            "the tasks waited for the fsync of the round that placed them"
    finally:
        broker.stop()
        loop.join(10)
        broker.close()
        if worker is not None:
            worker.kill()
            worker.wait(10)
