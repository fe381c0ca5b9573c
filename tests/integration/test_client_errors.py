"""Errors a user can catch: one base class, nothing internal leaking (issue 12.8)."""

import threading

import pytest
import zmq

from hyperloom import data, protocol
from hyperloom.client import Client, LoomError, LoomException, TaskFailed
from hyperloom.errors import ConnectionLost


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
