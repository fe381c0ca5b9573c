"""hyperloom.frames on a real ZeroMQ socket pair (inproc: no ports)."""

import pytest
import zmq

from hyperloom.frames import NOBLOCK, has_message, recv_frames, send_frames


@pytest.fixture
def pair():
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind("inproc://frames")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"peer")
    dealer.connect("inproc://frames")
    yield router, dealer
    router.close(linger=0)
    dealer.close(linger=0)
    context.term()


def test_a_multipart_message_arrives_whole_and_in_order(pair):
    router, dealer = pair
    send_frames(dealer, [b"header", b"", b"x" * 100_000], copy=False)
    assert router.poll(2000)
    frames = recv_frames(router)
    assert [f.bytes for f in frames] == [b"peer", b"header", b"", b"x" * 100_000]
    send_frames(router, [b"peer", b"reply"], NOBLOCK)
    assert dealer.poll(2000)
    assert [f.bytes for f in recv_frames(dealer)] == [b"reply"]


def test_has_message_says_when_a_drain_is_over(pair):
    router, dealer = pair
    assert not has_message(router)
    with pytest.raises(zmq.Again):
        recv_frames(router)
    for i in range(3):
        send_frames(dealer, [b"m%d" % i])
    assert router.poll(2000)
    received = []
    while True:  # the drain loop of the broker, the workers and the client
        received.append(recv_frames(router)[1].bytes)
        if not has_message(router):
            if len(received) < 3:   # the rest may still be on its way
                assert router.poll(2000)
                continue
            break
    assert received == [b"m0", b"m1", b"m2"]
    assert not has_message(router)
