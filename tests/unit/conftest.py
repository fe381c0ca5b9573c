"""Fixtures shared by the unit tests of the worker's data channels."""

import pytest
import zmq

from hyperloom.worker.transfer import DataChannels


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def channels(context):
    """``make(**options)`` -> a DataChannels on loopback, closed after the test."""
    made = []

    def make(**options):
        made.append(DataChannels(context, "127.0.0.1", **options))
        return made[-1]

    yield make
    for channel in made:
        channel.close()
