"""Errors a user can catch: one base class, nothing internal leaking (issue 12.8)."""

import threading

import pytest
import zmq

from hyperloom import data, protocol
from hyperloom.client import Client, LoomError, LoomException, TaskFailed
from hyperloom.errors import ConnectionLost

from ..conftest import HandMadeBroker, wait_until


def test_every_error_a_user_may_see_has_one_base():
    for error in (LoomError, TaskFailed, ConnectionLost, protocol.ProtocolError,
                  data.DataError):
        assert issubclass(error, LoomException), error


class FakeBroker:
    """A ROUTER that answers HelloClient with ``first`` and then sends ``then`` (if any)."""

    def __init__(self, first, then=None):
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.first, self.then = first, then
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        if not self.router.poll(10_000):
            return
        identity, _ = self.router.recv_multipart()
        self.router.send_multipart([identity, self.first])
        if self.then is not None:
            self.router.send_multipart([identity, self.then])

    def close(self):
        self.thread.join(15)
        self.router.close(linger=0)
        self.context.term()


def test_a_server_that_is_not_a_broker_is_named_not_a_protocol_error():
    fake = FakeBroker(b"HTTP/1.1 400 Bad Request")
    try:
        with pytest.raises(LoomError, match="does not speak the hyperloom protocol"):
            Client("127.0.0.1", fake.port, connect_timeout=10)
    finally:
        fake.close()


def test_a_malformed_message_after_the_handshake_is_a_loom_error():
    welcome = protocol.encode(protocol.WELCOME, protocol.PROTOCOL_VERSION, 1, [])
    fake = FakeBroker(welcome, then=b"\xc1 not msgpack")
    client = Client("127.0.0.1", fake.port, connect_timeout=10)
    try:
        with pytest.raises(LoomError, match="sent a malformed message"):
            client.get_stats()
    finally:
        client.close()
        fake.close()


def test_a_client_that_has_not_waited_since_it_connected_resumes_its_session_after_a_restart():
    """A journaled broker sends Session just before Welcome (sessions.py), so the
    handshake reads it: a client that has not waited on anything since it connected
    holds its session when the broker dies, and must resume it, not raise
    ConnectionLost. (When Session came after Welcome, such a client had it unread at the
    drop and raised, one run in three, in test_broker_restart.py's shared-broker test.)"""
    broker = HandMadeBroker()
    router, port = broker.router, broker.port
    token = b"t" * 16
    greeted = []                                    # the client's identity

    def session_then_welcome():                     # as a broker with a journal answers
        if router.poll(10_000):
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, protocol.encode(protocol.SESSION, 7, token)])
            router.send_multipart([identity, protocol.encode(
                protocol.WELCOME, protocol.PROTOCOL_VERSION, 7, [])])
            greeted.append(identity)
    greeter = threading.Thread(target=session_then_welcome, daemon=True)
    greeter.start()
    client = Client("127.0.0.1", port, connect_timeout=10)
    try:
        greeter.join(10)
        assert greeted and client.number == 7
        restarted = broker.restart()                # the broker dies, and comes back
        wait_until(lambda: client._monitor.poll(0), 10, message="the client to see the drop")
        asked = []

        def resume_and_answer():
            while restarted.poll(10_000):
                identity, header = restarted.recv_multipart()
                code, fields = protocol.decode(header)
                asked.append((code, fields))
                if code == protocol.RESUME_CLIENT:
                    restarted.send_multipart([identity, protocol.encode(
                        protocol.WELCOME, protocol.PROTOCOL_VERSION, 7, [])])
                    restarted.send_multipart([identity, protocol.encode(
                        protocol.ACCEPTED, 7 << protocol.CLIENT_SHIFT)])
                elif code == protocol.GET_STATS:
                    restarted.send_multipart([identity, protocol.encode(
                        protocol.STATS, fields[0], {"n_workers": 0})])
                    return
        server = threading.Thread(target=resume_and_answer, daemon=True)
        server.start()
        assert client.info() == {"n_workers": 0}
        server.join(10)
        assert asked[0] == (protocol.RESUME_CLIENT,
                            [protocol.PROTOCOL_VERSION, 7, token, [], -1])
    finally:
        client.close()
        broker.close()
