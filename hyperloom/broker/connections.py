"""Which peer each TCP connection of the broker's ROUTER carries, from monitor events.

libzmq does not tell a ROUTER which peer left; its socket monitor reports
ACCEPTED and DISCONNECTED events with the connection's file descriptor, and each
message's first frame tells the fd it came in on (``SRCFD``). A closed fd is
reused by the next accepted connection, so the events of one fd form a sequence
of connections: each ACCEPTED opens one, each DISCONNECTED closes the oldest
still open. A peer belongs to the newest connection on the fd its Hello came
in on. Keeping every connection, also those that never said Hello, is what
stops a late DISCONNECTED of an anonymous connection from dropping the peer
that reused its fd.

Sans-I/O: the server feeds events and claims, and gets back whom to drop.
"""

from __future__ import annotations

from collections import deque


class Connection:
    __slots__ = ("fd", "identity")

    def __init__(self, fd: int):
        self.fd = fd
        self.identity: bytes | None = None    # set by the peer's Hello


class ConnectionTable:
    def __init__(self) -> None:
        self._open: dict[int, deque[Connection]] = {}   # fd -> its connections, oldest first
        self._of_peer: dict[bytes, Connection] = {}

    def accepted(self, fd: int) -> None:
        self._open.setdefault(fd, deque()).append(Connection(fd))

    def disconnected(self, fd: int) -> bytes | None:
        """The oldest connection on ``fd`` closed: the peer it carried, if it still does."""
        connections = self._open.get(fd)
        if not connections:
            return None   # a connection accepted before we watched, or a refused handshake
        closed = connections.popleft()
        if not connections:
            del self._open[fd]
        identity = closed.identity
        if identity is not None and self._of_peer.get(identity) is closed:
            del self._of_peer[identity]
            return identity
        return None

    def claimed(self, fd: int, identity: bytes) -> bytes | None:
        """``identity`` said Hello on ``fd``'s newest connection. Returns a different peer
        that connection carried before (to be dropped), if any."""
        connections = self._open.setdefault(fd, deque())
        if not connections:
            connections.append(Connection(fd))   # its ACCEPTED event is not read yet
        connection = connections[-1]
        previous = connection.identity
        connection.identity = identity
        self._of_peer[identity] = connection
        if previous is not None and previous != identity \
                and self._of_peer.get(previous) is connection:
            del self._of_peer[previous]
            return previous
        return None

    def __len__(self) -> int:
        return sum(len(connections) for connections in self._open.values())
