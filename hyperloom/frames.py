"""A message's frames on and off a ZeroMQ socket (docs/protocol.md: a header frame,
then payload frames; on a ROUTER the peer's routing id first).

Why not pyzmq's send_multipart/recv_multipart: they combine enum flags and ask
for RCVMORE frame by frame, ~3 µs more per message than these loops, which was
a tenth of what the broker did on a one-task round trip (benchmarks/README.md,
"Round trip"). Flags are plain ints for the same reason; nothing here imports zmq.

The worker's and the client's drains ask ``has_message`` after each message
instead of receiving until zmq.Again: pyzmq builds that exception for ~6.5 µs,
the question costs ~1.7 µs, and most of their drains find one message. (The
broker asks only after small messages: see its ``_drain_router``.)
"""

from __future__ import annotations

from typing import Any

NOBLOCK = 1
_SNDMORE = 2
_EVENTS = 15    # ZMQ_EVENTS
_POLLIN = 1


def send_frames(socket: Any, frames: list[Any], flags: int = 0, copy: bool = True) -> None:
    """Send ``frames`` as one multipart message on a ZeroMQ ``socket``."""
    send = socket.send
    more = flags | _SNDMORE
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], more, copy=copy)
    send(frames[last], flags, copy=copy)


def recv_frames(socket: Any) -> list[Any]:
    """Receive one multipart message as zero-copy frames; raises zmq.Again if none waits
    (the frames of a message arrive together, so only the first receive can fail)."""
    frame = socket.recv(NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = socket.recv(NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def has_message(socket: Any) -> bool:
    """Whether a message waits on ``socket`` (ZMQ_EVENTS; no exception when none does)."""
    return bool(socket.get(_EVENTS) & _POLLIN)
