"""A broker killed with SIGKILL and started again from its journal: real processes.

The broker runs with ``--journal``; workers and one client run through its
death and its restart on the same port. The plan must complete with the right
results, the client must not submit again (its futures resume), and the
broker reports (``info()["journal"]``) how many tasks it restored as finished
and how many it had to compute again.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time

import pytest
import zmq

from hyperloom.client import Client
from hyperloom.errors import LoomError
from hyperloom import protocol
from hyperloom.broker import journal as jn
from hyperloom.client import client as client_module
from hyperloom.client import tasks

from ..conftest import loom_program, wait_until

CHAINS = 50
STEPS = 100          # a chain: const, then STEPS - 1 times merge(previous, const)


class Processes:
    """A journaled broker and its workers, with their logs; everything killed at the end."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.journal = os.path.join(tmp_path, "broker.journal")
        self.broker = None
        self.port = 0
        self.workers = []
        self.starts = 0

    def start_broker(self, *extra, journal=True):
        log = open(os.path.join(self.tmp_path, f"broker-{self.starts}.log"), "w")
        self.starts += 1
        journaled = ["--journal", self.journal, "--reattach-timeout", "5"] if journal else []
        self.broker = subprocess.Popen(
            [*loom_program("loom-broker"), "--port", str(self.port), *journaled,
             "--log-level", "info", *extra],
            stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.broker.stdout], [], [], 60)
        assert ready, "the broker printed no endpoint within 60 s"
        endpoint = self.broker.stdout.readline().strip()
        assert endpoint.startswith("tcp://"), endpoint
        self.port = int(endpoint.rsplit(":", 1)[1])

    def kill_broker(self):
        self.broker.send_signal(signal.SIGKILL)
        self.broker.wait(10)

    def start_worker(self):
        index = len(self.workers)
        log = open(os.path.join(self.tmp_path, f"worker-{index}.log"), "w")
        self.workers.append(subprocess.Popen(
            [*loom_program("loom-worker"), "127.0.0.1", str(self.port), "--cpus", "1",
             "--broker-timeout", "60", "--wdir", str(self.tmp_path)],
            stdout=log, stderr=subprocess.STDOUT))

    def log(self, name):
        with open(os.path.join(self.tmp_path, name)) as file:
            return file.read()

    def stop(self):
        for process in [*self.workers, self.broker]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def processes(tmp_path):
    running = Processes(str(tmp_path))
    yield running
    running.stop()


def _chains():
    """CHAINS chains of STEPS tasks (10,000 with the defaults), data passed along each."""
    ends, middles = [], []
    for chain in range(CHAINS):
        node = tasks.const(f"{chain}:")
        for step in range(1, STEPS):
            node = tasks.merge((node, tasks.const(f"{step % 10}")))
            if chain == 0 and step % (STEPS // 4) == 0:   # 25, 50, 75: checkpoints
                middles.append(node)
        ends.append(node)
    return ends, middles


def _expected(chain):
    return (f"{chain}:" + "".join(str(step % 10) for step in range(1, STEPS))).encode()


def _connect(processes, count=2):
    for _ in range(count):
        processes.start_worker()
    client = Client("127.0.0.1", processes.port, connect_timeout=60)
    wait_until(lambda: client.info()["n_workers"] == count, timeout=30,
               message="the workers to join")
    return client


class SubmitsSent:
    """Every Submit header that reaches the client's socket from now on, in order: on the
    socket it has now and on each one it opens to re-attach (``_open_socket``), where
    session.py sends the plans it kept straight to the socket, not through ``_send``."""

    def __init__(self, client):
        self.headers: list[bytes] = []
        self.plan: list[bytes] = []        # those of the user's submit() (``_submit``)
        self._watch(client._socket)
        open_socket = client._open_socket

        def open_watched_socket():
            open_socket()
            self._watch(client._socket)
        client._open_socket = open_watched_socket

    def _watch(self, socket):
        send = socket.send
        more = False                       # the next frame goes on a message: no header

        def counting_send(data, flags=0, *args, **kwargs):
            nonlocal more
            result = send(data, flags, *args, **kwargs)   # (zmq.Again: it was not sent)
            if not more:
                header = data.bytes if isinstance(data, zmq.Frame) else bytes(data)
                if protocol.decode(header)[0] == protocol.SUBMIT:
                    self.headers.append(header)
            more = bool(flags & zmq.SNDMORE)
            return result
        socket.send = counting_send


def _submit(client):
    """The chains submitted; what reaches the socket is watched from before that."""
    ends, middles = _chains()
    sent = SubmitsSent(client)
    futures = client.submit(ends + middles)
    sent.plan = list(sent.headers)
    assert sent.plan, "the plan's Submit was not seen"
    return futures[:CHAINS], futures[CHAINS:], sent


def a_task_running(client):
    """The future of a ``sleep 30`` program once the broker has it running."""
    future = client.submit_one(tasks.run("sleep 30"))
    wait_until(lambda: client.info()["tasks"]["assigned"] == 1, timeout=20,
               message="the task to start")
    return future


def _no_resubmission(sent):
    # (values come as Fetch answers or, small ones, unasked with Results)
    assert len(sent.headers) == len(sent.plan), \
        f"the client submitted again: {len(sent.headers)} Submit messages reached its " \
        f"sockets for the {len(sent.plan)} of its plan"
    assert sent.headers == sent.plan


@pytest.mark.timeout(180)
def test_a_10000_task_plan_survives_a_broker_sigkill_and_restart(processes):
    processes.start_broker()
    client = _connect(processes)
    ends, (_, middle, _), sent = _submit(client)
    client.wait([middle])                      # about half of the plan is done
    processes.kill_broker()
    processes.start_broker()                   # same port, same journal
    values = client.gather(ends)
    assert values == [_expected(chain) for chain in range(CHAINS)]
    _no_resubmission(sent)
    journal = client.info()["journal"]
    assert journal["restored_finished"] > 0
    fraction = journal["recomputed"] / (CHAINS * (2 * STEPS - 1))
    print(f"restored as finished: {journal['restored_finished']}, computed twice: "
          f"{journal['recomputed']} ({fraction:.1%} of the plan)")
    assert journal["recomputed"] == 0, journal  # both workers came back with their data
    assert "re-attached" in processes.log("broker-1.log")
    client.close()


@pytest.mark.timeout(180)
def test_the_plan_survives_repeated_broker_kills(processes):
    processes.start_broker()
    client = _connect(processes)
    ends, checkpoints, sent = _submit(client)
    for checkpoint in checkpoints:             # a quarter, a half, three quarters
        client.wait([checkpoint])
        processes.kill_broker()
        processes.start_broker()
    assert client.gather(ends) == [_expected(chain) for chain in range(CHAINS)]
    _no_resubmission(sent)
    assert client.info()["journal"]["recomputed"] == 0
    for start in range(1, 4):
        assert "re-attached" in processes.log(f"broker-{start}.log")
    client.close()


@pytest.mark.timeout(180)
def test_a_worker_killed_while_the_broker_is_down_is_recomputed(processes):
    processes.start_broker()
    client = _connect(processes)
    ends, (_, middle, _), sent = _submit(client)
    client.wait([middle])
    processes.kill_broker()
    processes.workers[0].kill()                # dies with the data it held
    processes.workers[0].wait(10)
    processes.start_broker()
    values = client.gather(ends)
    assert values == [_expected(chain) for chain in range(CHAINS)]
    _no_resubmission(sent)
    # (what it held may all have been copied to the other worker too: then nothing is
    # computed again, so the count is reported, not asserted)
    journal = client.info()["journal"]
    print(f"computed twice after losing a worker: {journal['recomputed']}")
    assert "did not re-attach: its data is recomputed" in processes.log("broker-1.log")
    client.close()


@pytest.mark.timeout(120)
def test_a_truncated_journal_is_read_up_to_its_last_complete_record(processes):
    processes.start_broker()
    client = _connect(processes)
    ends, (_, middle, _), _ = _submit(client)
    client.wait([middle])
    processes.kill_broker()
    size = os.path.getsize(processes.journal)
    with open(processes.journal, "r+b") as file:
        file.truncate(size - 7)                # a torn last write
    processes.start_broker()
    assert client.gather(ends) == [_expected(chain) for chain in range(CHAINS)]
    assert "is damaged" in processes.log("broker-1.log")
    client.close()


def test_a_journal_of_another_version_is_refused_with_a_clear_message(tmp_path):
    from hyperloom.broker import journal as jn
    path = os.path.join(tmp_path, "old.journal")
    with open(path, "wb") as file:
        file.write(jn.HEADER.pack(jn.MAGIC, jn.JOURNAL_VERSION + 1, 1))
    result = subprocess.run([*loom_program("loom-broker"), "--port", "0", "--journal", path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "written by another hyperloom" in result.stderr and path in result.stderr


@pytest.mark.timeout(60)
def test_a_client_with_a_session_the_broker_does_not_know_gets_a_clear_error(processes):
    processes.start_broker()
    client = _connect(processes, count=1)
    future = client.submit_one(tasks.const("x"))
    assert client.gather([future]) == [b"x"]
    future = client.submit_one(tasks.run("sleep 30"))
    processes.kill_broker()
    os.remove(processes.journal)               # a new broker that never heard of it
    processes.start_broker()
    with pytest.raises(LoomError, match="is not known to this broker"):
        client.wait([future])
    client.close()


@pytest.mark.timeout(120)
def test_the_journal_is_compacted_online_and_stays_bounded(processes):
    """Plan after plan, each gathered (released): the journal is rewritten while the broker
    runs once it passes --journal-compact-bytes, and what it holds still restarts it."""
    processes.start_broker("--journal-compact-bytes", "50000")
    client = _connect(processes, count=1)
    written = 0
    for run in range(15):
        futures = client.submit([tasks.const(f"{run}.{i}") for i in range(1000)])
        assert client.gather(futures)[-1] == f"{run}.999".encode()
        written += 1000
    size = os.path.getsize(processes.journal)
    log = processes.log("broker-0.log")
    # Rewritten whenever it passes 50 KB and 4x what was live at the last rewrite (at most
    # one plan of 1,000 tasks, ~45 KB): never far beyond 4 x 45 KB + one plan; it would
    # be ~675 KB for the 15,000 tasks without compaction.
    assert log.count("compacted online") >= 2, log[-2000:]
    assert size < 300_000, size
    processes.kill_broker()
    processes.start_broker()
    future = client.submit_one(tasks.merge((tasks.const("a"), tasks.const("b"))))
    assert client.gather([future]) == [b"ab"]
    print(f"{written} tasks run, journal {size} bytes after online compaction")
    client.close()


@pytest.mark.timeout(60)
def test_a_broker_that_does_not_come_back_ends_the_wait_with_connection_lost(processes):
    from hyperloom.errors import ConnectionLost
    processes.start_broker()
    processes.start_worker()
    client = Client("127.0.0.1", processes.port, connect_timeout=3)
    future = a_task_running(client)
    processes.kill_broker()
    with pytest.raises(ConnectionLost, match="did not come back within 3 s"):
        client.wait([future])
    with pytest.raises(ConnectionLost):            # and so does every later wait
        client.wait([future])
    client.close()


@pytest.mark.timeout(60)
def test_a_plan_submitted_as_the_client_sees_the_restart_runs(processes):
    # The client notices the dropped connection inside the submit's send and
    # re-attaches there: the new plan's futures must not be among those it tells
    # the restarted broker it waits on (which never got that plan: "unknown task").
    processes.start_broker()
    client = _connect(processes, count=1)
    assert client.gather([client.submit_one(tasks.const("before"))]) == [b"before"]
    client.info()                   # sends the gather's release: nothing left to send
    processes.kill_broker()
    processes.start_broker()
    wait_until(lambda: client._monitor.poll(0), timeout=10,
               message="the client's socket to see the connection drop")
    future = client.submit_one(tasks.merge((tasks.const("a"), tasks.const("b"))))
    assert client.gather([future]) == [b"ab"]
    client.close()


@pytest.mark.timeout(180)
def test_clients_sharing_a_broker_go_on_through_its_restart(processes):
    """Two clients with plans under way, and one that left before: after a SIGKILL
    and restart both get their results, one submits a plan reading its futures from
    before the restart, and what the one that left had is gone for good."""
    processes.start_broker()
    first = _connect(processes)
    second = Client("127.0.0.1", processes.port, connect_timeout=60)
    leaver = Client("127.0.0.1", processes.port, connect_timeout=60)
    left = leaver.submit([tasks.const(f"left {i}") for i in range(50)])
    leaver.wait(left)
    leaver.close()                             # Goodbye: its 50 results are released
    ends, middles, _ = _submit(first)
    other_ends = second.submit([tasks.merge((end, tasks.const("!")))
                                for end in _chains()[0][:10]])
    first.wait([middles[1]])
    processes.kill_broker()
    processes.start_broker()                   # same port, same journal
    reader = first.submit_one(tasks.merge((ends[0], ends[1])))
    assert reader.gather() == _expected(0) + _expected(1)
    assert first.gather(ends) == [_expected(chain) for chain in range(CHAINS)]
    assert second.gather(other_ends) == [_expected(chain) + b"!" for chain in range(10)]
    for future in middles:
        future.release()
    second.info()                              # sends the gather's releases
    # nothing is left: the client that left had its results released for good
    wait_until(lambda: first.info()["n_tasks"] == 0, timeout=10,
               message="the broker to hold no task")
    log = processes.log("broker-1.log")
    assert "did not apply" not in log and "re-attached" in log
    first.close()
    second.close()


@pytest.mark.timeout(60)
def test_a_client_whose_broker_died_closes_at_once_with_releases_pending(processes):
    # The release timer used to re-attach from its thread (holding the client's lock up
    # to the connect timeout), and close() re-attached to say Goodbye: closing a
    # client, or dropping an unclosed one, waited out the whole timeout.
    processes.start_broker()
    processes.start_worker()
    client = Client("127.0.0.1", processes.port, connect_timeout=20)
    futures = client.submit([tasks.const(f"{i}") for i in range(10)])
    client.wait(futures)
    processes.kill_broker()
    wait_until(lambda: client._monitor.poll(0), timeout=10,
               message="the client's socket to see the connection drop")
    del futures                                # their releases are noted, not sent
    time.sleep(0.5)                            # the release timer wakes meanwhile
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5.0, "close() waited for the broker to come back"


@pytest.mark.timeout(180)
def test_a_plan_its_broker_died_before_journaling_runs_without_a_second_submit(
        processes, monkeypatch, caplog):
    """The broker is stopped before a plan reaches it and killed: its journal never has
    the plan. The client kept the plan (no Accepted came) and sends it again, in its
    chunks, when it re-attaches; the user's one submit() gets its results."""
    monkeypatch.setattr(client_module, "SUBMIT_CHUNK", 3000)   # 10,000 tasks: 4 chunks
    processes.start_broker()
    client = _connect(processes)
    assert client.gather([client.submit_one(tasks.const("before"))]) == [b"before"]
    journaled = _submitted_records(processes.journal)
    processes.broker.send_signal(signal.SIGSTOP)   # it takes in nothing more
    ends, _, sent = _submit(client)
    processes.kill_broker()
    assert _submitted_records(processes.journal) == journaled, "the plan reached the journal"
    with caplog.at_level(logging.INFO, logger="hyperloom.client"):
        processes.start_broker()
        values = client.gather(ends)
    assert values == [_expected(chain) for chain in range(CHAINS)]
    # the user's one submit(): its 4 chunks sent, then again, whole and in order, on the
    # re-attach's socket; nothing else
    assert len(sent.plan) == 4
    assert len(sent.headers) == 8, f"{len(sent.headers)} Submit messages, not 4 + 4"
    assert sent.headers == sent.plan * 2
    assert "1 plans its broker had not journaled sent again" in caplog.text
    assert client.info()["journal"]["recomputed"] == 0
    assert client.progress == (CHAINS * (2 * STEPS - 1) + 1,) * 2   # taken in once
    client.close()


def _submitted_records(path):
    return sum(record[0] == jn.SUBMITTED for record in jn.read_journal(path).records)
