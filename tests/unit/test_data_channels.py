"""Worker-to-worker connections are opened when first needed and closed when idle."""

import time

import zmq

from hyperloom.data import Plain
from hyperloom.worker.transfer import DataChannels


def test_push_connection_opens_on_demand_and_closes_when_idle():
    context = zmq.Context()
    sender = DataChannels(context, "127.0.0.1")
    receiver = DataChannels(context, "127.0.0.1")
    try:
        assert sender._pushers == {}
        sender.push(receiver.address, [(7, Plain(b"abc"))])
        assert list(sender._pushers) == [receiver.address]
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            got = receiver.receive()
            time.sleep(0.01)
        assert got is not None and got[1][0][0] == 7
        sender.close_idle(time.monotonic())            # just used: kept
        assert list(sender._pushers) == [receiver.address]
        sender.close_idle(time.monotonic() + 61)       # a minute unused: closed
        assert sender._pushers == {}
    finally:
        sender.close()
        receiver.close()
        context.term()
