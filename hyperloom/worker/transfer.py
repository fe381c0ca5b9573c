"""Direct worker-to-worker data channels: a PULL socket in, a PUSH per peer out.

Data never goes through the broker: the broker tells the holder
(``SendData``) to push objects to a peer's data address. One PushData
message carries many objects; large buffers travel as zero-copy frames.
"""

from __future__ import annotations

import logging
import time

import zmq

from .. import data, protocol, security

log = logging.getLogger("hyperloom.worker")

PUSHER_IDLE = 60.0     # seconds without a push before the connection to a peer is closed


class DataChannels:
    def __init__(self, context: zmq.Context, host: str, keys=None, data_types=None):
        self.context = context
        self.data_types = data_types if data_types is not None else {}
        self.keys = keys
        self.pull = context.socket(zmq.PULL)
        if keys is not None:
            security.secure_server(self.pull, keys)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.setsockopt(zmq.LINGER, 0)
        port = self.pull.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._pushers = {}
        self._last_push = {}       # address -> monotonic time of the last push there
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self, linger_ms: int = 0):
        for socket in self._pushers.values():
            socket.close(linger=linger_ms)
        self.pull.close(linger=0)

    def push(self, address: str, objects):
        """Send ``[(id, DataObject)]`` to the worker listening at ``address``."""
        socket = self._pushers.get(address)
        if socket is None:
            socket = self.context.socket(zmq.PUSH)
            try:
                if self.keys is not None:
                    security.secure_client(socket, self.keys)
                socket.setsockopt(zmq.SNDHWM, 0)
                socket.setsockopt(zmq.LINGER, 0)
                socket.connect(address)
            except zmq.ZMQError as error:
                socket.close(linger=0)
                log.error("cannot send data to %r: %s", address, error)
                return
            self._pushers[address] = socket
        self._last_push[address] = time.monotonic()
        entries = []
        frames = []
        for data_id, obj in objects:
            meta, _ = data.encode(obj, frames)
            entries.append([data_id, meta])
            self.bytes_sent += obj.size
        header = protocol.encode(protocol.PUSH_DATA, self.address, entries)
        socket.send_multipart([header, *frames], copy=len(frames) == 0 or _small(frames))

    def close_idle(self, now: float, idle: float = PUSHER_IDLE):
        """Close connections to peers not pushed to for ``idle`` seconds: with hundreds of
        workers coming and going (adapt, walltime) each would otherwise keep a socket and
        its reconnect attempts to a peer that left. A later push opens it again."""
        for address in [a for a, when in self._last_push.items() if now - when > idle]:
            self._pushers.pop(address).close(linger=0)
            del self._last_push[address]

    def receive(self):
        """Decode one PushData message: ``(source, [(id, DataObject)])``; None if none waits."""
        try:
            frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            code, fields = protocol.decode(frames[0].buffer)
            if code != protocol.PUSH_DATA:
                raise protocol.ProtocolError(f"{protocol.name_of(code)} on the data channel")
            received = []
            position = 1
            for data_id, meta in fields[1]:
                obj, position = data.decode(meta, frames, position, self.data_types)
                received.append((data_id, obj))
                self.bytes_received += obj.size
            return fields[0], received
        except Exception as error:
            log.warning("dropped a malformed data message from a peer: %s", error)
            return "", []


def _small(frames) -> bool:
    # zmq copies small frames faster than it tracks zero-copy ones.
    return sum(len(f) for f in frames) < 65536
