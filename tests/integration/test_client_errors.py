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


def test_a_client_that_has_not_read_its_session_yet_resumes_it_after_a_broker_restart():
    """A Session that comes after the handshake (as it did, from a journaled broker,
    until it went first). A client that submitted and has not waited since still holds
    it unread when the broker dies: it must read what came before the drop and resume
    the session, not raise ConnectionLost (it did, one run in three, in
    test_broker_restart.py's shared-broker test)."""
    broker = HandMadeBroker()
    router, port = broker.router, broker.port
    token = b"t" * 16
    greeted = []                                    # the client's identity

    def welcome_only():
        if router.poll(10_000):
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, protocol.encode(
                protocol.WELCOME, protocol.PROTOCOL_VERSION, 7, [])])
            greeted.append(identity)
    greeter = threading.Thread(target=welcome_only, daemon=True)
    greeter.start()
    client = Client("127.0.0.1", port, connect_timeout=10)
    try:
        greeter.join(10)
        # the Session comes after the handshake, and the client does not read it
        router.send_multipart([greeted[0], protocol.encode(protocol.SESSION, 7, token)])
        wait_until(lambda: client._socket.poll(0), 10, message="the Session to arrive")
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
