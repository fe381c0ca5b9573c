"""The bulk lane on real loopback sockets: the offer table, the fetch framing (bad
token, short read, refused), offers that go back to ZeroMQ (expired, sending failed,
never fetched), and DataChannels choosing the lane by size."""

import logging
import socket
import struct
import threading
import time

import pytest
import zmq

from hyperloom import protocol
from hyperloom.data import Plain
from hyperloom.lane import FOUND, TOKEN_BYTES, Unreachable, fetch_frames
from hyperloom.worker.bulk import BulkServer
from hyperloom.worker.wake import WakePipe

from ..conftest import wait_until

MiB = 1024 * 1024


@pytest.fixture
def server():
    made = []

    def make(timeout=30.0):
        wake = WakePipe()
        made.append((BulkServer("127.0.0.1", wake, timeout), wake))
        return made[-1][0]

    yield make
    for bulk, wake in made:
        bulk.close()
        wake.close()


def test_an_offer_is_fetched_once_with_its_token(server):
    bulk = server()
    frames = [b"small", bytes(range(256)) * 4096, memoryview(b"x" * 3 * MiB)]
    token = bulk.offer("tcp://peer:1", [], frames)
    assert len(token) == TOKEN_BYTES and bulk.n_offers() == 1
    got = fetch_frames(bulk.address, token, [len(f) for f in frames])
    assert [bytes(f) for f in got] == [bytes(f) for f in frames]
    assert all(f.readonly for f in got)       # like ZeroMQ's frames: data is immutable
    assert bulk.n_offers() == 0
    with pytest.raises(ValueError, match="does not know the token"):
        fetch_frames(bulk.address, token, [len(f) for f in frames])


def test_a_wrong_token_reads_nothing_and_leaves_the_offer(server):
    bulk = server()
    bulk.offer("tcp://peer:1", [], [b"secret" * 1000])
    with pytest.raises(ValueError, match="does not know the token"):
        fetch_frames(bulk.address, b"\0" * TOKEN_BYTES, [6000])
    assert bulk.n_offers() == 1


def test_a_short_read_raises_instead_of_hanging():
    """A holder that dies in the middle of a frame: the fetch fails at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_half():
        connection, _ = listener.accept()
        with connection:
            connection.recv(TOKEN_BYTES)
            connection.sendall(FOUND + b"y" * 1000)

    thread = threading.Thread(target=serve_half)
    thread.start()
    try:
        with pytest.raises(ValueError, match="short read: the holder closed after 1000 of"):
            fetch_frames(f"tcp://127.0.0.1:{listener.getsockname()[1]}", b"t" * 16, [MiB])
    finally:
        thread.join(10)
        listener.close()


def test_a_fetch_from_a_holder_that_is_gone_is_refused(server):
    bulk = server()
    address = bulk.address
    token = bulk.offer("tcp://peer:1", [], [b"z" * MiB])
    bulk.close()
    with pytest.raises(Unreachable, match="cannot connect to tcp://127.0.0.1:"):
        fetch_frames(address, token, [MiB])
    with pytest.raises(ValueError, match="bad bulk address"):
        fetch_frames("tcp://nowhere", token, [MiB])


def test_only_its_receiver_withdraws_an_offer(server):
    bulk = server()
    token = bulk.offer("tcp://b:1", [[4, [0]]], [b"w"])
    assert bulk.withdraw(token, "tcp://c:1") is None and bulk.n_offers() == 1
    assert bulk.withdraw(token, "tcp://b:1").entries == [[4, [0]]]
    assert bulk.n_offers() == 0 and bulk.withdraw(token, "tcp://b:1") is None


def test_offers_expire_and_are_dropped_for_peers_that_left(server):
    bulk = server(timeout=5.0)
    bulk.offer("tcp://a:1", [[1, [0]]], [b"a"])
    bulk.offer("tcp://b:1", [[2, [0]]], [b"b"])
    bulk.offer("tcp://b:1", [[3, [0]]], [b"c"])
    assert bulk.take_unsent(time.monotonic()) == []          # not due yet
    assert bulk.drop({"tcp://b:1"}) == 2
    expired = bulk.take_unsent(time.monotonic() + 10)
    assert [(o.address, o.entries) for o in expired] == [("tcp://a:1", [[1, [0]]])]
    assert bulk.n_offers() == 0


def test_an_offer_whose_sending_fails_goes_back_to_the_loop(server):
    """The receiver vanishes after asking (reset mid-frame): the holder must not lose
    the data for a receiver that may still be alive; the loop sends it over ZeroMQ."""
    bulk = server()
    token = bulk.offer("tcp://peer:1", [[7, [0]]], [bytes(64 * MiB)])
    host, port = bulk.address[6:].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(token)
        assert connection.recv(1) == FOUND
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    unsent = []
    wait_until(lambda: unsent.extend(bulk.take_unsent(time.monotonic())) or unsent,
               timeout=10, message="the failed offer to come back")
    assert [o.entries for o in unsent] == [[[7, [0]]]]


def receive_one(receiver, timeout=20.0, holder=None):
    """``(source, [(id, bytes)])`` of the next object, over ZeroMQ or the bulk lane (with
    ``holder``: what comes back to it, such as a DeclineOffer, is handled meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while holder is not None and holder.receive() is not None:
            pass
        for source, objects in receiver.take_fetched():
            return source, [(i, bytes(obj.data)) for i, obj in objects]
        message = receiver.receive()
        if message is not None and message[1]:
            return message[0], [(i, bytes(obj.data)) for i, obj in message[1]]
        if message is None:
            zmq.select([receiver.pull, receiver.wake.read_fd], [], [], 0.05)
    raise AssertionError("nothing arrived")


def test_big_pushes_take_the_lane_and_small_ones_zeromq(channels):
    a, b = channels(bulk_bytes=MiB), channels()
    big = bytes(range(256)) * 8192           # 2 MiB
    a.push(b.address, [(1, Plain(big)), (2, Plain(b"and a small one"))])
    assert receive_one(b) == (a.address, [(1, big), (2, b"and a small one")])
    assert b.n_fetched == 2
    a.push(b.address, [(3, Plain(b"s" * (MiB - 100)))])
    assert receive_one(b) == (a.address, [(3, b"s" * (MiB - 100))])
    assert b.n_fetched == 2 and a.bulk_server.n_offers() == 0


def test_without_the_lane_big_pushes_go_over_zeromq(channels):
    a, b = channels(bulk=False, bulk_bytes=MiB), channels()
    assert a.bulk_server is None
    a.push(b.address, [(1, Plain(b"q" * 2 * MiB))])
    assert receive_one(b) == (a.address, [(1, b"q" * 2 * MiB)])
    assert b.n_fetched == 0


def test_an_offer_nobody_fetches_goes_over_zeromq_in_the_end(channels, context):
    """A receiver that cannot reach the lane (here: a bare PULL socket that never
    fetches) still gets the data, as a PushData, once the offer expires."""
    a = channels(bulk_bytes=MiB, offer_timeout=0.5)
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        a.push(f"tcp://127.0.0.1:{port}", [(5, Plain(b"e" * 2 * MiB))])
        assert pull.poll(10_000)
        code, fields = protocol.decode(pull.recv_multipart()[0])
        assert code == protocol.OFFER_DATA and fields[4] == [2 * MiB]
        wait_until(lambda: a.close_idle(time.monotonic()) or pull.poll(0), timeout=10,
                   message="the expired offer to go over ZeroMQ")
        header, frame = pull.recv_multipart()
        assert protocol.decode(header) == (protocol.PUSH_DATA, [a.address, [[5, [0]]]])
        assert frame == b"e" * 2 * MiB
    finally:
        pull.close(linger=0)


def test_a_failed_fetch_is_logged_and_the_receiver_goes_on(channels, caplog):
    """The holder is gone between its offer and the fetch: nothing arrives, nothing
    raises (the broker voids the transfer when it loses the holder)."""
    a, b = channels(bulk_bytes=MiB), channels()
    a.push(b.address, [(1, Plain(b"g" * 2 * MiB))])
    a.bulk_server.close()                     # as if the holder died
    a.bulk_server = None
    with caplog.at_level(logging.WARNING, logger="hyperloom.worker"):
        wait_until(lambda: b.receive() is not None, timeout=10, message="the offer to arrive")
        wait_until(lambda: b.take_fetched() == [] and "failed" in caplog.text, timeout=10,
                   message="the fetch to fail")
    assert "bulk lane: fetching 1 objects (2097152 bytes) from tcp://127.0.0.1:" in caplog.text
    b.push(a.address, [(2, Plain(b"still fine"))])
    assert receive_one(a) == (b.address, [(2, b"still fine")])


def test_offers_to_a_peer_that_left_are_dropped(channels, context):
    a = channels(bulk_bytes=MiB)
    address = "tcp://127.0.0.1:9"            # nobody fetches
    a.push(address, [(1, Plain(b"d" * 2 * MiB))])
    assert a.bulk_server.n_offers() == 1
    a.close_peers([address])
    assert a.bulk_server.n_offers() == 0


def test_a_malformed_offer_is_dropped_and_logged(channels, context, caplog):
    b = channels()
    push = context.socket(zmq.PUSH)
    push.connect(b.address)
    try:
        for token, sizes in ((b"short", [10]), (b"t" * TOKEN_BYTES, [-1]),
                             (b"t" * TOKEN_BYTES, ["ten"])):
            push.send(protocol.encode(protocol.OFFER_DATA, "tcp://x:1", [[1, [0]]],
                                      "tcp://127.0.0.1:9", token, sizes))
            with caplog.at_level(logging.WARNING, logger="hyperloom.worker"):
                wait_until(lambda: b.receive() == ("", []), timeout=10,
                           message="the offer to be refused")
        assert caplog.text.count("OfferData with a bad token or sizes") == 3
    finally:
        push.close(linger=0)


def closed_port():
    """A loopback port nobody listens on: connecting is refused, as through a firewall
    that rejects the lane's port."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


def test_a_receiver_that_cannot_reach_the_lane_gets_the_data_over_zeromq_at_once(
        channels, caplog):
    """The holder's data port is reachable, its lane's is not: the receiver declines
    the offer, the holder pushes it over ZeroMQ at once (not after its offer timeout,
    here 300 s), and offers nothing more to that receiver."""
    a, b = channels(bulk_bytes=MiB, offer_timeout=300.0), channels()
    a.bulk_server.address = f"tcp://127.0.0.1:{closed_port()}"
    first, second = b"f" * 2 * MiB, b"s" * 2 * MiB
    with caplog.at_level(logging.WARNING, logger="hyperloom.worker"):
        a.push(b.address, [(1, Plain(first))])
        assert a.bulk_server.n_offers() == 1
        assert receive_one(b, holder=a) == (a.address, [(1, first)])
        assert "cannot reach this worker's bulk lane (cannot connect to" in caplog.text
    assert b.n_fetched == 0 and a.bulk_server.n_offers() == 0
    assert a.no_lane_to == {b.address}
    a.push(b.address, [(2, Plain(second))])   # straight over ZeroMQ: no offer
    assert a.bulk_server.n_offers() == 0
    assert receive_one(b, holder=a) == (a.address, [(2, second)])
    assert caplog.text.count("cannot reach this worker's bulk lane") == 1
    a.close_peers([b.address])   # a new worker at that address may reach the lane
    assert a.no_lane_to == set()


def test_a_decline_for_another_receivers_offer_leaves_it_offered(channels, context):
    a = channels(bulk_bytes=MiB, offer_timeout=300.0)
    token = a.bulk_server.offer("tcp://127.0.0.1:9", [[1, [0]]], [b"x" * 2 * MiB])
    push = context.socket(zmq.PUSH)
    push.connect(a.address)
    try:
        push.send(protocol.encode(protocol.DECLINE_OFFER, "tcp://127.0.0.1:8", token,
                                  "cannot connect"))
        wait_until(lambda: a.receive() == ("tcp://127.0.0.1:8", []), timeout=10,
                   message="the decline to arrive")
    finally:
        push.close(linger=0)
    assert a.bulk_server.n_offers() == 1
    assert a.no_lane_to == {"tcp://127.0.0.1:8"}



def test_an_offer_to_a_client_is_read_once_and_an_unread_one_is_dropped(channels):
    """A client reads a big Upload from the lane (fetch_frames, as a worker does); an
    offer it never reads is dropped when it expires, never pushed to its pseudo-address
    (the client asks again without the lane)."""
    a = channels(bulk_bytes=MiB, offer_timeout=0.5)
    entries = [[4, [0]]]
    assert a.offer_to_client(b"\x00client", entries, [b"small"]) is None
    address, token, sizes = a.offer_to_client(b"\x00client", entries, [b"c" * 2 * MiB])
    assert address == a.bulk_server.address and sizes == [2 * MiB]
    [frame] = fetch_frames(address, token, sizes)
    assert bytes(frame) == b"c" * 2 * MiB
    a.offer_to_client(b"\x00client", entries, [b"d" * 2 * MiB])    # never read
    wait_until(lambda: a.close_idle(time.monotonic()) is None and a.bulk_server.n_offers() == 0,
               timeout=10, message="the unread offer to expire")
    assert a.open_channels() == []
