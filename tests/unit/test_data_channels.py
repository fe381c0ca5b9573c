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
        assert sender.open_channels() == []
        sender.push(receiver.address, [(7, Plain(b"abc"))])
        assert sender.open_channels() == [receiver.address]
        got = None
        deadline = time.monotonic() + 10
        while got is None and time.monotonic() < deadline:
            got = receiver.receive()
            time.sleep(0.01)
        assert got is not None and got[1][0][0] == 7
        sender.close_idle(time.monotonic())            # just used: kept
        assert sender.open_channels() == [receiver.address]
        sender.close_idle(time.monotonic() + 61)       # a minute unused: closed
        assert sender.open_channels() == []
    finally:
        sender.close()
        receiver.close()
        context.term()
