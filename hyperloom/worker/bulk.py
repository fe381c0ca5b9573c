"""The bulk lane: big objects' frames between workers over plain TCP, beside ZeroMQ.

A frame bigger than glibc's largest mmap threshold (32 MiB) lands, in ZeroMQ, in
fresh memory whose every 4 KiB page faults when the kernel copies into it: half
the receiver's time (a 100 MB NumPy array between two workers on one machine:
about 1.6 GB/s). Read here with ``recv_into`` into private memory in huge pages,
it moves at about 2.7 GB/s. Frames below that size are reused heap memory in
ZeroMQ, which the lane does not beat (benchmarks/README.md, "Bulk lane"). So a
push carrying a frame of at least ``BULK_BYTES`` leaves its frames here: the
holder keeps references to them (no copy) in a table of *offers* under a random
token and sends only ``OfferData`` (the metas, this lane's address, the token,
the frame sizes) over ZeroMQ; the receiver fetches the frames on a thread.

The fetch, on one TCP connection to the holder's bulk address (docs/protocol.md,
"Bulk lane"): the receiver sends the 16-byte token; the holder answers one byte,
``FOUND`` followed by the frames back to back, or ``UNKNOWN``, and closes.

Neither side's loop ever blocks on this I/O: the holder serves each fetch on a
thread of its own; the receiver fetches on a small pool and hands what it read
back through a queue and a wake-up pipe the loop polls. An offer nobody fetched
in time, or whose sending failed, goes back to the loop to be pushed again over
ZeroMQ (``take_unsent``): a live receiver never loses data to this lane. A fetch
that fails is logged and dropped: it fails because the holder is gone (the
broker voids that transfer and orders it again, as for any lost worker) or
because the offer went back to ZeroMQ already.
"""

from __future__ import annotations

import logging
import queue
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from .. import data
from ..lane import (FOUND, IO_TIMEOUT, TOKEN_BYTES, UNKNOWN, MiB, Unreachable,
                    blocking_with_timeout, fetch_frames, read_exactly)
from .wake import WakePipe

log = logging.getLogger("hyperloom.worker")

BULK_BYTES = 32 * MiB  # pushes carrying a frame this big take the lane
OFFER_TIMEOUT = 30.0   # seconds an offer waits for its fetch before it goes over ZeroMQ
FETCH_THREADS = 2      # fetches a receiver runs at once


def frame_bytes(frame: data.BytesLike) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


class Offer:
    """Frames waiting for their receiver to fetch them; ``entries`` and ``frames`` make
    the PushData that carries them over ZeroMQ if the fetch never comes."""
    __slots__ = ("address", "entries", "frames", "expires")

    def __init__(self, address: str, entries: list[list[Any]],
                 frames: list[data.BytesLike], expires: float) -> None:
        self.address = address     # the receiver's data address
        self.entries = entries
        self.frames = frames
        self.expires = expires


class Fetched(NamedTuple):
    """What a fetch gave, for the loop: the frames, or why there are none."""
    source: str                      # the holder's data address
    entries: list[Any]               # the offer's metas
    token: bytes
    frames: list[memoryview] | None  # None: the fetch failed
    error: str                       # why it failed ("" if it did not)
    unreachable: bool                # it failed to connect: decline the offer
    size: int                        # bytes offered
    seconds: float


class BulkServer:
    """The offers of this worker and the listening socket that serves them (a thread)."""

    def __init__(self, host: str, wake: WakePipe, timeout: float = OFFER_TIMEOUT) -> None:
        self.timeout = timeout
        self._wake = wake
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self._offers: dict[bytes, Offer] = {}    # token -> offer, oldest first
        self._unsent: deque[Offer] = deque()     # serving failed: back to ZeroMQ
        self._sending = 0                        # offers being sent now
        self._listener = socket.create_server((host, 0))
        self.address = f"tcp://{host}:{self._listener.getsockname()[1]}"
        self._stop = WakePipe()
        self._thread = threading.Thread(target=self._accept, name="bulk-server", daemon=True)
        self._thread.start()

    def offer(self, address: str, entries: list[list[Any]],
              frames: list[data.BytesLike]) -> bytes:
        """Keep ``frames`` for the worker at ``address``; the token it fetches them with."""
        token = secrets.token_bytes(TOKEN_BYTES)
        with self._lock:
            self._offers[token] = Offer(address, entries, frames,
                                        time.monotonic() + self.timeout)
        return token

    def withdraw(self, token: bytes, address: str) -> Offer | None:
        """The offer under ``token`` to the worker at ``address``, no longer offered (that
        receiver declined it: it goes over ZeroMQ now); None if there is none (fetched,
        dropped, sent over ZeroMQ already, or another receiver's)."""
        with self._taken:
            offer = self._offers.get(token)
            if offer is None or offer.address != address:
                return None
            del self._offers[token]
            self._taken.notify_all()
        return offer

    def n_offers(self) -> int:
        return len(self._offers)

    def take_unsent(self, now: float) -> list[Offer]:
        """Offers to push over ZeroMQ now: their sending failed, or nobody fetched them in
        time (the receiver could not reach this lane)."""
        with self._taken:
            unsent = list(self._unsent)
            self._unsent.clear()
            offers = self._offers
            for token in [t for t, o in offers.items() if o.expires <= now]:
                unsent.append(offers.pop(token))
            self._taken.notify_all()
        return unsent

    def drop(self, addresses: set[str]) -> int:
        """The workers at ``addresses`` left: drop what waits for them; how many."""
        with self._taken:
            gone = [t for t, o in self._offers.items() if o.address in addresses]
            for token in gone:
                del self._offers[token]
            self._unsent = deque(o for o in self._unsent if o.address not in addresses)
            self._taken.notify_all()
        return len(gone)

    def wait_fetched(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every offer to be fetched, to the last byte,
        or dropped (a retiring worker's last copies); True if none is left."""
        with self._taken:
            return self._taken.wait_for(lambda: not self._offers and not self._sending,
                                        timeout)

    def busy(self) -> bool:
        """Offers wait or are being sent."""
        return bool(self._offers) or self._sending > 0

    def close(self) -> None:
        if not self._thread.is_alive() and self._listener.fileno() == -1:
            return  # closed already
        self._stop.wake()
        self._thread.join(5)
        self._listener.close()
        self._stop.close()
        with self._lock:
            self._offers.clear()
            self._unsent.clear()

    # ------------------------------------------------------------ threads

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._stop.read_fd, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._stop.read_fd in ready:
                    return
                try:
                    connection, _ = self._listener.accept()
                except OSError as error:
                    log.warning("bulk lane: accept failed: %s", error)
                    continue
                threading.Thread(target=self._serve, args=(connection,), name="bulk-serve",
                                 daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        offer = None
        with connection:
            try:
                blocking_with_timeout(connection, IO_TIMEOUT)
                token = read_exactly(connection, TOKEN_BYTES)
                with self._lock:
                    offer = self._offers.pop(token, None)
                    if offer is not None:
                        self._sending += 1
                if offer is None:
                    connection.sendall(UNKNOWN)
                    return
                connection.sendall(FOUND)
                for frame in offer.frames:
                    connection.sendall(frame)   # releases the GIL while the kernel copies
            except (OSError, ValueError) as error:
                if offer is None:  # the asking side reports its own failures
                    log.debug("bulk lane: a connection from %s ended before it named an "
                              "offer: %s", _peer(connection), error)
                    return
                log.warning("bulk lane: sending %d frames to %s failed (%s): they go over "
                            "ZeroMQ", len(offer.frames), offer.address, error)
                with self._lock:
                    self._unsent.append(offer)
                self._wake.wake()
            finally:
                if offer is not None:
                    with self._taken:
                        self._sending -= 1
                        self._taken.notify_all()


class BulkFetcher:
    """Fetches offers on a small thread pool; what it read waits in ``done`` for the loop."""

    def __init__(self, wake: WakePipe) -> None:
        self._wake = wake
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="bulk-fetch")
        self.done: queue.SimpleQueue[Fetched] = queue.SimpleQueue()

    def fetch(self, source: str, entries: list[Any], address: str, token: bytes,
              sizes: Sequence[int]) -> None:
        self._pool.submit(self._fetch, source, entries, address, token, list(sizes))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, source: str, entries: list[Any], address: str, token: bytes,
               sizes: list[int]) -> None:
        start = time.perf_counter()
        frames, error, unreachable = None, "", False
        try:
            frames = fetch_frames(address, token, sizes)
        except Exception as failure:  # whatever it is, the loop must hear of it
            error = str(failure) or type(failure).__name__
            unreachable = isinstance(failure, Unreachable)
        self.done.put(Fetched(source, entries, token, frames, error, unreachable,
                              sum(sizes), time.perf_counter() - start))
        self._wake.wake()


def _peer(connection: socket.socket) -> str:
    try:
        host, port = connection.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a peer"
