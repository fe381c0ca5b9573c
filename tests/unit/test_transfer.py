"""Worker-to-worker data channels on real ZeroMQ sockets over loopback: a bounded
queue per peer that never loses a push to a live peer, and channels closed when the
broker reports their peer gone."""

import time

import zmq

from hyperloom import protocol
from hyperloom.data import Plain

from ..conftest import wait_until

MiB = 1024 * 1024


def receive_all(receiver, count, sender=None, timeout=20.0):
    """``count`` messages from ``receiver`` as ``[(id, bytes)]``, retrying ``sender``."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"received {len(got)} of {count}"
        if sender is not None:
            sender.retry()
        message = receiver.receive()
        if message is None:
            receiver.pull.poll(10)
            continue
        got.extend((data_id, bytes(obj.data)) for data_id, obj in message[1])
    return got


def test_pushes_arrive_and_one_channel_serves_each_peer(channels):
    a, b = channels(), channels()
    a.push(b.address, [(1, Plain(b"one")), (2, Plain(b"two" * 100_000))])
    a.push(b.address, [(3, Plain(b"three"))])
    assert receive_all(b, 3) == [(1, b"one"), (2, b"two" * 100_000), (3, b"three")]
    assert a.open_channels() == [b.address] and a.n_waiting == 0


def test_a_peer_that_takes_no_data_gets_every_push_in_order_once_it_reads(channels, context):
    """What ZeroMQ may queue is bounded (send_hwm messages); pushes beyond wait in the
    backlog instead of being dropped: a live peer must never lose data."""
    a = channels(send_hwm=2)
    slow = context.socket(zmq.PULL)          # a peer that does not read yet
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 64 * 1024)
    port = slow.bind_to_random_port("tcp://127.0.0.1")
    try:
        address = f"tcp://127.0.0.1:{port}"
        payload = [bytes([i]) * MiB for i in range(40)]
        for i, data in enumerate(payload):
            a.push(address, [(i, Plain(data))])
        assert a.n_waiting > 0                # the queue filled: the rest waits
        assert a.n_waiting < len(payload)
        received = []
        deadline = time.monotonic() + 30
        while len(received) < len(payload):
            assert time.monotonic() < deadline, f"received {len(received)} messages"
            a.retry()
            if slow.poll(10):
                code, fields = protocol.decode(slow.recv_multipart()[0])
                received.extend(data_id for data_id, _ in fields[1])
        assert received == list(range(len(payload)))
        assert a.retry() == 0 and a.n_waiting == 0
    finally:
        slow.close(linger=0)


def test_closing_a_departed_peer_drops_its_channel_and_what_waits_for_it(channels, context):
    a, b = channels(send_hwm=1), channels()
    a.push(b.address, [(1, Plain(b"x"))])
    assert receive_all(b, 1) == [(1, b"x")]
    nobody = context.socket(zmq.PULL)        # a peer that never reads: pushes pile up
    nobody.setsockopt(zmq.RCVHWM, 1)
    nobody.setsockopt(zmq.RCVBUF, 64 * 1024)
    port = nobody.bind_to_random_port("tcp://127.0.0.1")
    gone = f"tcp://127.0.0.1:{port}"
    try:
        for i in range(20):
            a.push(gone, [(i, Plain(b"y" * MiB))])
        wait_until(lambda: a.retry() > 0, message="pushes to wait in the backlog")
        assert a.open_channels() == sorted([b.address, gone])
        a.close_peers([gone, "tcp://127.0.0.1:1"])   # an unknown address is ignored
        assert a.open_channels() == [b.address] and a.n_waiting == 0
        # the live peer's channel is untouched; a peer back at the address gets a new one
        a.push(b.address, [(2, Plain(b"z"))])
        assert receive_all(b, 1) == [(2, b"z")]
        a.push(gone, [(3, Plain(b"w"))])
        assert a.open_channels() == sorted([b.address, gone])
    finally:
        nobody.close(linger=0)
