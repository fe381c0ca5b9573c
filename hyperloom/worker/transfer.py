"""Direct worker-to-worker data channels: a PULL socket in, a PUSH per peer out.

Data never goes through the broker: the broker tells the holder
(``SendData``) to push objects to a peer's data address. One PushData
message carries many objects; large buffers travel as zero-copy frames.

What may queue towards a peer is bounded: ZeroMQ holds at most ``send_hwm``
messages per peer. A message that would block waits in the peer's backlog
(references to the store's objects, no copy of large buffers) and goes out,
in order, once the peer takes data again (``retry``): a live peer never
loses a push, which would hang the task waiting for it. When the broker
reports a peer gone (``PeersGone``) its channel is closed and whatever
still waited for it is dropped: the broker has voided those transfers.

Pushes carrying a frame of at least ``bulk_bytes`` send only their metas over
ZeroMQ (``OfferData``): the receiver fetches the frames over the plain-TCP bulk
lane (bulk.py). No lane with CURVE keys (it is not encrypted) nor with
``bulk=False`` (then this worker still fetches what others offer). A receiver
that cannot connect to a holder's lane (a firewall that lets the data port
through but not the lane's) says so (``DeclineOffer``): the holder pushes that
offer over ZeroMQ at once, and everything else for that receiver too.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from .. import data, protocol, security
from ..data import DataObject, ExtensionData
from ..security import ClusterKeys
from ..lane import TOKEN_BYTES
from .bulk import (BULK_BYTES, OFFER_TIMEOUT, BulkFetcher, BulkServer, Fetched, Offer,
                   frame_bytes)
from .wake import WakePipe

log = logging.getLogger("hyperloom.worker")
# the receiver "address" of an offer to a client (not a data address: never pushed to)
CLIENT_OFFER = "client "

PUSH_HWM = 1000        # messages ZeroMQ may queue towards one peer
SMALL_PUSH_BYTES = 65536  # pushes smaller than this are copied into ZeroMQ, not tracked
PUSHER_IDLE = 60.0     # seconds without a push before the connection to a peer is closed


class _Peer:
    __slots__ = ("socket", "backlog", "last_push")

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        # (frames, copy) that would have blocked, oldest first
        self.backlog: deque[tuple[list[data.BytesLike], bool]] = deque()
        self.last_push = time.monotonic()


class DataChannels:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], host: str,
                 keys: ClusterKeys | None = None,
                 data_types: dict[str, type[ExtensionData]] | None = None,
                 send_hwm: int = PUSH_HWM, bulk: bool = True, bulk_bytes: int = BULK_BYTES,
                 offer_timeout: float = OFFER_TIMEOUT) -> None:
        self.context = context
        self.data_types = data_types if data_types is not None else {}
        self.keys = keys
        self.send_hwm = send_hwm
        self.pull = context.socket(zmq.PULL)
        if keys is not None:
            security.secure_server(self.pull, keys)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.setsockopt(zmq.LINGER, 0)
        port = self.pull.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self._peers: dict[str, _Peer] = {}   # data address -> its channel
        self.n_waiting = 0     # messages in the backlogs
        self.bulk_bytes = bulk_bytes
        self.n_fetched = 0     # objects that came over the bulk lane (tests, debugging)
        self.no_lane_to: set[str] = set()   # receivers that cannot reach our lane
        self.wake: WakePipe | None = None       # the loop polls wake.read_fd: fetches done
        self.bulk_server: BulkServer | None = None
        self.fetcher: BulkFetcher | None = None
        if keys is None:  # without bulk, this worker still fetches what others offer
            self.wake = WakePipe()
            self.fetcher = BulkFetcher(self.wake)
            if bulk:
                self.bulk_server = BulkServer(host, self.wake, offer_timeout)

    def close(self, linger_ms: int = 0) -> None:
        """``linger_ms``: how long pushes already handed to ZeroMQ or offered on the bulk
        lane may still take to leave (a retiring worker's last copies)."""
        if self.bulk_server is not None:
            if linger_ms:
                if self.bulk_server.busy():
                    self.bulk_server.wait_fetched(linger_ms / 1000)
                self._push_unsent(float("inf"))   # not fetched: over ZeroMQ, lingering
            self.bulk_server.close()
            self.bulk_server = None
        if self.fetcher is not None and self.wake is not None:
            self.fetcher.close()
            self.wake.close()
            self.fetcher = self.wake = None
        for peer in self._peers.values():
            peer.socket.close(linger=linger_ms)
        self._peers.clear()
        self.n_waiting = 0
        self.pull.close(linger=0)

    def open_channels(self) -> list[str]:
        """The peer addresses this worker holds a channel to (for tests and debugging)."""
        return sorted(self._peers)

    def push(self, address: str, objects: Iterable[tuple[int, DataObject]]) -> None:
        """Send ``[(id, DataObject)]`` to the worker listening at ``address``."""
        peer = self._channel(address)
        if peer is None:
            return
        peer.last_push = time.monotonic()
        entries = []
        frames: list[data.BytesLike] = []
        for data_id, obj in objects:
            meta, _ = data.encode(obj, frames)
            entries.append([data_id, meta])
        sizes = [frame_bytes(f) for f in frames]
        if self.bulk_server is not None and self._takes_lane(sizes) \
                and address not in self.no_lane_to:
            token = self.bulk_server.offer(address, entries, frames)
            log.debug("offered %d objects (%d bytes) to %s on the bulk lane", len(entries),
                      sum(sizes), address)
            self._enqueue(peer, address, ([protocol.encode(
                protocol.OFFER_DATA, self.address, entries, self.bulk_server.address, token,
                sizes)], True))
            return
        header = protocol.encode(protocol.PUSH_DATA, self.address, entries)
        # zmq copies small frames faster than it tracks zero-copy ones
        self._enqueue(peer, address, ([header, *frames], sum(sizes) < SMALL_PUSH_BYTES))

    def offer_to_client(self, client: bytes, entries: list[list[Any]],
                        frames: list[data.BytesLike]) -> list[Any] | None:
        """Keep ``frames`` on the bulk lane for a client that can read it (an Upload with
        lane=True) when one of them is big; the offer for Uploaded, or None (send them).
        An offer the client never reads is dropped when it expires: the client asks again
        without the lane (docs/protocol.md, "Bulk lane")."""
        sizes = [frame_bytes(f) for f in frames]
        if self.bulk_server is None or not self._takes_lane(sizes):
            return None
        token = self.bulk_server.offer(CLIENT_OFFER + client.hex(), entries, frames)
        log.debug("offered %d objects (%d bytes) to a client on the bulk lane", len(entries),
                  sum(sizes))
        return [self.bulk_server.address, token, sizes]

    def _takes_lane(self, sizes: list[int]) -> bool:
        """Frames of these sizes go on the bulk lane: one is big enough to gain."""
        return bool(sizes) and max(sizes) >= self.bulk_bytes

    def _enqueue(self, peer: _Peer, address: str,
                 message: tuple[list[data.BytesLike], bool]) -> None:
        if peer.backlog or not _send(peer.socket, message):
            if not peer.backlog:
                log.debug("the peer at %s takes no data for now: pushes wait", address)
            peer.backlog.append(message)  # after the others: a peer gets its data in order
            self.n_waiting += 1

    def _push_unsent(self, now: float) -> None:
        """Offers whose sending failed or that nobody fetched in time: over ZeroMQ."""
        if self.bulk_server is None:
            return
        for offer in self.bulk_server.take_unsent(now):
            self._push_offer(offer)

    def _push_offer(self, offer: Offer) -> None:
        if offer.address.startswith(CLIENT_OFFER):
            log.info("a client did not read %d objects offered on the bulk lane: dropped "
                     "(it asks again without the lane)", len(offer.entries))
            return
        peer = self._channel(offer.address)
        if peer is None:
            return
        log.info("%d objects offered to %s on the bulk lane go over ZeroMQ",
                 len(offer.entries), offer.address)
        header = protocol.encode(protocol.PUSH_DATA, self.address, offer.entries)
        self._enqueue(peer, offer.address, ([header, *offer.frames], False))

    def _on_declined(self, source: str, token: bytes, reason: str) -> None:
        """The receiver at ``source`` cannot connect to this worker's lane: its offer, and
        every later push to it, go over ZeroMQ."""
        if source not in self.no_lane_to:
            log.warning("the worker at %s cannot reach this worker's bulk lane (%s): data "
                        "for it goes over ZeroMQ from now on", source, reason)
            self.no_lane_to.add(source)
        offer = self.bulk_server.withdraw(token, source) if self.bulk_server else None
        if offer is not None:
            self._push_offer(offer)

    def _decline(self, fetched: Fetched) -> None:
        """Tell the holder that its lane is out of reach (see ``_on_declined``)."""
        peer = self._channel(fetched.source)
        if peer is None:
            return
        header = protocol.encode(protocol.DECLINE_OFFER, self.address, fetched.token,
                                 fetched.error)
        self._enqueue(peer, fetched.source, ([header], True))

    def _channel(self, address: str) -> _Peer | None:
        """The channel to the worker at ``address``, opened if there is none."""
        return self._peers.get(address) or self._connect(address)

    def _connect(self, address: str) -> _Peer | None:
        socket = self.context.socket(zmq.PUSH)
        try:
            if self.keys is not None:
                security.secure_client(socket, self.keys)
            socket.setsockopt(zmq.SNDHWM, self.send_hwm)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(address)
        except zmq.ZMQError as error:
            socket.close(linger=0)
            log.error("cannot send data to %r: %s", address, error)
            return None
        peer = self._peers[address] = _Peer(socket)
        return peer

    def retry(self) -> int:
        """Send what waits in the backlogs while the peers take it; how many messages
        still wait."""
        if not self.n_waiting:
            return 0
        for peer in self._peers.values():
            backlog = peer.backlog
            while backlog and _send(peer.socket, backlog[0]):
                backlog.popleft()
                self.n_waiting -= 1
        return self.n_waiting

    def close_peers(self, addresses: Iterable[str]) -> None:
        """The workers at ``addresses`` left: close their channels, drop what waits."""
        addresses = set(addresses)
        if self.bulk_server is not None:
            dropped = self.bulk_server.drop(addresses)
            if dropped:
                log.info("dropped %d bulk offers: their workers left", dropped)
        self.no_lane_to -= addresses   # a worker later at the same address may reach it
        for address in addresses:
            peer = self._peers.pop(address, None)
            if peer is None:
                continue
            peer.socket.close(linger=0)
            if peer.backlog:
                self.n_waiting -= len(peer.backlog)
                log.info("dropped %d data messages waiting for %s: the worker left",
                         len(peer.backlog), address)
            log.info("closed the data channel to %s: the worker left", address)

    def close_idle(self, now: float, idle: float = PUSHER_IDLE) -> None:
        """Close connections to peers not pushed to for ``idle`` seconds (and with nothing
        waiting): with hundreds of workers coming and going (adapt, walltime) each would
        otherwise keep a socket and its reconnect attempts to a peer that left. A later
        push opens it again. Offers nobody fetched in time go over ZeroMQ."""
        self._push_unsent(now)
        for address in [address for address, peer in self._peers.items()
                        if not peer.backlog and now - peer.last_push > idle]:
            self._peers.pop(address).socket.close(linger=0)

    def receive(self) -> tuple[str, list[tuple[int, DataObject]]] | None:
        """Decode one PushData message: ``(source, [(id, DataObject)])``; None if none waits.
        An OfferData starts a fetch (see ``take_fetched``) and gives ``(source, [])``."""
        try:
            frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            code, fields = protocol.decode(frames[0].buffer)
            if code == protocol.OFFER_DATA and self.fetcher is not None:
                source, entries, address, token, sizes = fields
                if len(token) != TOKEN_BYTES or \
                        not all(type(n) is int and n >= 0 for n in sizes):
                    raise protocol.ProtocolError("OfferData with a bad token or sizes")
                self.fetcher.fetch(source, entries, address, token, sizes)
                return source, []
            if code == protocol.DECLINE_OFFER:
                self._on_declined(*fields)
                return fields[0], []
            if code != protocol.PUSH_DATA:
                raise protocol.ProtocolError(f"{protocol.name_of(code)} on the data channel")
            return fields[0], self._decode(fields[1], frames, 1)
        except Exception as error:
            log.warning("dropped a malformed data message from a peer: %s", error)
            return "", []

    def take_fetched(self) -> list[tuple[str, list[tuple[int, DataObject]]]]:
        """What the bulk lane fetched since the last call, as ``receive`` gives it; pushes
        offered from here whose sending failed go over ZeroMQ meanwhile."""
        if self.wake is None or self.fetcher is None:
            return []
        self.wake.drain()
        self._push_unsent(float("-inf"))   # only the failed ones: none is due to expire
        received = []
        done = self.fetcher.done
        while not done.empty():
            fetched = done.get()
            source = fetched.source
            if fetched.frames is None:
                log.warning("bulk lane: fetching %d objects (%d bytes) from %s failed: %s",
                            len(fetched.entries), fetched.size, source, fetched.error)
                if fetched.unreachable:   # the holder may be gone too: then no harm done
                    self._decline(fetched)
                continue
            try:
                objects = self._decode(fetched.entries, fetched.frames, 0)
            except Exception as failure:
                log.warning("dropped malformed data fetched from %s: %s", source, failure)
                continue
            log.debug("fetched %d objects (%d bytes) from %s on the bulk lane in %.3f s",
                      len(objects), fetched.size, source, fetched.seconds)
            self.n_fetched += len(objects)
            received.append((source, objects))
        return received

    def _decode(self, entries: list[Any], frames: Sequence[data.WireFrame],
                position: int) -> list[tuple[int, DataObject]]:
        received = []
        for data_id, meta in entries:
            obj, position = data.decode(meta, frames, position, self.data_types)
            received.append((data_id, obj))
        return received


def _send(socket: zmq.Socket[bytes], message: tuple[list[data.BytesLike], bool]) -> bool:
    """Send without blocking; False if the peer's queue is full."""
    frames, copy = message
    try:
        socket.send_multipart(frames, zmq.NOBLOCK, copy=copy)
    except zmq.Again:
        return False
    return True

