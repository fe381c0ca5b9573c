"""The bulk lane's wire: how a reader takes big frames from their holder over plain TCP.

A holder (a worker: hyperloom/worker/bulk.py) keeps the frames of a big object
under a random token and names them in an offer (``OfferData`` to a worker,
``Uploaded``/``Data`` with an offer to a client: docs/protocol.md, "Bulk lane").
The reader connects to the holder's bulk address, sends the 16-byte token, and
reads one byte, ``FOUND`` followed by the frames back to back, or ``UNKNOWN``;
the holder closes. Shared by workers and clients, like protocol.py.
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Sequence

from . import protocol

MiB = 1024 * 1024
TOKEN_BYTES = 16
FOUND, UNKNOWN = b"\x01", b"\x00"
IO_TIMEOUT = 30.0      # seconds a bulk connection may stall before it is given up
# Seconds a reader tries to connect to a holder's lane: SYN retries come after 1 and
# 3 s, so this allows for a loaded holder; a firewall that drops the lane's packets
# costs this once per holder (a worker declines that holder's offers from then on, a
# client stops asking for offers).
CONNECT_TIMEOUT = 10.0
MMAP_BYTES = 16 * MiB  # frames this big are read into huge pages; smaller: reused heap


class ReceivedBuffer(mmap.mmap):
    """Anonymous memory a fetch read into. Its own type: the executor takes a plain
    ``mmap.mmap`` buffer for one of the worker's shared-memory files, which a Python
    executor process maps without a copy (executor._bytes_to_copy); this one is not."""


class Unreachable(OSError):
    """A reader could not connect to a holder's lane (refused, filtered, no route)."""
    refused = False   # refused at once: the holder is gone, or its port is closed to us


def fetch_frames(address: str, token: bytes, sizes: Sequence[int],
                 timeout: float = IO_TIMEOUT) -> list[memoryview]:
    """The frames offered under ``token`` at ``address`` (``tcp://HOST:PORT``), read-only
    like ZeroMQ's. Raises OSError (refused, reset, stalled) or ValueError (unknown token,
    short read, bad address); Unreachable if it cannot connect."""
    where = protocol.host_and_port(address)
    if where is None:
        raise ValueError(f"bad bulk address {address!r}")
    try:
        connection = socket.create_connection(where, timeout=min(timeout, CONNECT_TIMEOUT))
    except OSError as error:
        unreachable = Unreachable(f"cannot connect to {address}: {error}")
        unreachable.refused = isinstance(error, ConnectionRefusedError)
        raise unreachable from None
    with connection:
        blocking_with_timeout(connection, timeout)
        connection.sendall(token)
        if read_exactly(connection, 1) != FOUND:
            raise ValueError("the holder does not know the token (the offer expired or "
                             "went over ZeroMQ)")
        frames = []
        for size in sizes:
            buffer = _fresh_buffer(size) if size >= MMAP_BYTES else bytearray(size)
            view = memoryview(buffer)
            _read_into(connection, view)
            frames.append(view.toreadonly())
        return frames


def _fresh_buffer(size: int) -> ReceivedBuffer:
    """Private anonymous memory in huge pages where the kernel allows (as NumPy's own
    big arrays): a fault per 4 KiB page when recv_into first writes it took half the
    receiver's time. Private: shared anonymous memory gets no huge pages. Its pages
    are not touched before the read (bytearray(size) would zero-fill them first)."""
    buffer = ReceivedBuffer(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            buffer.madvise(advice)
        except OSError:  # a kernel without transparent huge pages
            pass
    return buffer


def blocking_with_timeout(connection: socket.socket, timeout: float) -> None:
    """Blocking mode with the kernel's send and receive timeouts: Python's own timeout
    polls before every recv and send, which cost a quarter of the bandwidth."""
    connection.settimeout(None)
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _read_into(connection: socket.socket, view: memoryview) -> None:
    filled, size = 0, len(view)
    while filled < size:
        # MSG_WAITALL: one system call fills the buffer (the kernel waits for the data),
        # not one per packet burst: 10-20 % more bandwidth for 100 MB.
        n = connection.recv_into(view[filled:], 0, socket.MSG_WAITALL)
        if n == 0:
            raise ValueError(f"short read: the holder closed after {filled} of {size} bytes")
        filled += n


def read_exactly(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    _read_into(connection, memoryview(buffer))
    return bytes(buffer)


