"""A client keeps each plan until its journaled broker says ``Accepted``, and sends it
again, whole, when it re-attaches: here against a hand-made broker (a ROUTER) that
drops the connection between two chunks of a plan, which a real one cannot be made
to do at a chosen point."""

from __future__ import annotations

import threading
import time

import pytest

from hyperloom import protocol
from hyperloom.errors import ConnectionLost
from hyperloom.client import Client, tasks
from hyperloom.client import client as client_module
from hyperloom.client.plan import PlanBuilder

from ..conftest import HandMadeBroker, wait_until

NUMBER = 7
FIRST_ID = NUMBER << protocol.CLIENT_SHIFT
TOKEN = b"t" * 16


@pytest.mark.timeout(60)
def test_a_connection_dropped_between_two_chunks_sends_the_plan_again_whole(monkeypatch):
    monkeypatch.setattr(client_module, "SUBMIT_CHUNK", 4)
    broker = HandMadeBroker()
    router, port = broker.router, broker.port
    restarted = None
    received = []                    # (code, fields) the restarted broker got, in order

    def welcome():                   # a journaled broker: Session, then Welcome
        if router.poll(10_000):
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, protocol.encode(protocol.SESSION, NUMBER,
                                                             TOKEN)])
            router.send_multipart([identity, protocol.encode(
                protocol.WELCOME, protocol.PROTOCOL_VERSION, NUMBER, [])])
    greeter = threading.Thread(target=welcome, daemon=True)
    greeter.start()
    client = Client("127.0.0.1", port, connect_timeout=20)
    greeter.join(10)
    assert client._session == (NUMBER, TOKEN)     # held before the first submit

    def serve_resumed():
        while restarted.poll(10_000):
            identity, header = restarted.recv_multipart()
            code, fields = protocol.decode(header)
            received.append((code, fields))
            if code == protocol.RESUME_CLIENT:     # its journal has none of the plan
                restarted.send_multipart([identity, protocol.encode(
                    protocol.WELCOME, protocol.PROTOCOL_VERSION, NUMBER, [])])
                restarted.send_multipart([identity, protocol.encode(
                    protocol.ACCEPTED, FIRST_ID)])
            elif code == protocol.SUBMIT and not fields[4]:  # the last chunk
                return
    server = threading.Thread(target=serve_resumed, daemon=True)
    chunks = PlanBuilder.chunks

    def dropped_after_the_first(builder, size):
        nonlocal restarted
        for index, chunk in enumerate(chunks(builder, size)):
            yield chunk
            if index == 0:     # chunk 0 is sent: the broker takes it, and dies
                identity, header = router.recv_multipart()
                assert protocol.decode(header)[0] == protocol.SUBMIT
                restarted = broker.restart()            # it dies, and comes back
                wait_until(lambda: client._monitor.poll(0), 10,
                           message="the client to see the drop")
                server.start()
    monkeypatch.setattr(PlanBuilder, "chunks", dropped_after_the_first)
    try:
        futures = client.submit([tasks.const(b"%d" % i) for i in range(10)])
        server.join(20)
        assert not server.is_alive(), "the plan's last chunk never came"
        code, fields = received[0]
        assert code == protocol.RESUME_CLIENT
        assert fields[4] == FIRST_ID                  # resend_from: the kept plan
        submits = [fields for code, fields in received[1:]]
        assert all(code == protocol.SUBMIT for code, _ in received[1:])
        ids = [entry[0] for chunk in submits for entry in chunk[2]]
        assert ids == [future._id for future in futures]   # the whole plan, once, in order
        assert [chunk[4] for chunk in submits] == [True, True, False]   # more, more, last
    finally:
        client.close()
        broker.close()


@pytest.mark.timeout(30)
def test_a_broker_that_dies_between_session_and_welcome_fails_the_connect_in_time():
    """A journaled broker sends Session, then Welcome; killed between the two (and back
    on its port, as a restarted broker is), it never sends Welcome: the client's
    connect ends after its timeout with an error that says so, instead of waiting forever."""
    broker = HandMadeBroker()
    router = broker.router

    def session_only():
        if router.poll(10_000):
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, protocol.encode(protocol.SESSION, NUMBER,
                                                             TOKEN)])
            broker.restart()   # a new broker that never heard this client's Hello
    greeter = threading.Thread(target=session_only, daemon=True)
    greeter.start()
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"no answer from a broker at .* within 2 s"):
            Client("127.0.0.1", broker.port, connect_timeout=2)
        assert time.monotonic() - started < 10
    finally:
        greeter.join(10)
        broker.close()


@pytest.mark.timeout(60)
def test_a_client_that_only_submits_keeps_no_more_than_its_latest_plans(make_cluster, tmp_path):
    """Kept plans are dropped as Accepted comes, read on the client's next call even when
    that call is a submit: a producer that submits and never waits holds plans of the
    last moments, not every plan it ever sent."""
    cluster = make_cluster(broker_args=("--journal", str(tmp_path / "broker.journal")))
    client = cluster.client()
    try:
        held = []
        for i in range(40):
            client.submit_one(tasks.const(b"%d" % i))
            time.sleep(0.03)   # longer than the broker's wait before it says Accepted
            held.append(len(client._sent_plans))
        assert len(held) == 40 and max(held[5:]) <= 3, held
        client.wait([client.submit_one(tasks.const(b"last"))])   # (before its Accepted)
        wait_until(lambda: client.info() and len(client._sent_plans) == 0, timeout=10,
                   message="the last plan's Accepted")
    finally:
        client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("journaled", [False, True], ids=["plain", "journaled"])
def test_a_submit_interrupted_between_two_chunks_leaves_the_next_plan_intact(
        make_cluster, tmp_path, monkeypatch, journaled):
    """Ctrl-C while a big plan's chunks go out: the chunks the broker has must not open
    the next plan (they would shift its tables of task types: a `size` read as a
    `merge`), and a journaled client must not send them again after a re-attach."""
    broker_args = ("--journal", str(tmp_path / "broker.journal")) if journaled else ()
    cluster = make_cluster(broker_args=broker_args)
    client = cluster.client()
    monkeypatch.setattr(client_module, "SUBMIT_CHUNK", 4)
    chunks = PlanBuilder.chunks

    def interrupted_after_the_first(builder, size):
        for chunk in chunks(builder, size):
            yield chunk
            raise KeyboardInterrupt
    try:
        chain = tasks.const(b"0")
        for i in range(1, 10):
            chain = tasks.merge((chain, tasks.const(b"%d" % i)))
        with monkeypatch.context() as patch:
            patch.setattr(PlanBuilder, "chunks", interrupted_after_the_first)
            with pytest.raises(KeyboardInterrupt):
                client.submit([chain])
        assert len(client._sent_plans) == 0
        size = client.submit_one(tasks.size(tasks.const(b"abcd")))
        assert int.from_bytes(size.gather(), "little") == 4
        assert client.info()["n_tasks"] == 0    # nothing of the abandoned chunks runs
    finally:
        client.close()
