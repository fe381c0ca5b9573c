"""Re-attaching a client to its broker after the connection dropped (a broker restart).

A broker started with ``--journal`` gives each client a session (``Session``:
its number and a token). When the connection drops, the client does not give
up: it opens a new socket (whatever the old one still queues must not reach a
restarted broker before ``ResumeClient``), sends ``ResumeClient`` with the ids
of the futures it still waits on, and waits up to its connect timeout for the
broker to come back. The broker answers ``Welcome`` and then which of those
ended meanwhile (``TasksFinished`` / ``TasksFailed``), which the client's usual
handling applies; fetches in progress are asked again (only what has not
arrived), and so are pending stats. Nothing is submitted again.
"""

from __future__ import annotations

import logging
import time

import zmq

from .. import protocol
from ..errors import ConnectionLost, LoomError

log = logging.getLogger("hyperloom.client")


def reattach(client) -> None:
    """Called with the client's socket lock held, when its connection dropped."""
    number, token = client._session
    where = f"{client.server_address}:{client.server_port}"
    log.warning("lost the connection to the broker at %s; re-attaching session %d (for up "
                "to %.0f s)", where, number, client._reattach_timeout)
    client._poller.unregister(client._socket)
    client._poller.unregister(client._monitor)
    client._monitor.close(linger=0)
    client._socket.close(linger=0)
    client._open_socket()
    waiting = [task_id for task_id, future in client.futures.items()]
    client._socket.send(protocol.encode(protocol.RESUME_CLIENT, protocol.PROTOCOL_VERSION,
                                        number, token, waiting))
    deadline = time.monotonic() + client._reattach_timeout
    while not client._socket.poll(100):
        if client._monitor.poll(0):
            client._monitor.recv_multipart()  # a refused connection while the broker is down
        if time.monotonic() > deadline:  # every later wait raises it too (client.py)
            client._broken = ConnectionLost(
                f"the broker at {where} did not come back within "
                f"{client._reattach_timeout:.0f} s to resume session {number}")
            raise client._broken
    code, fields = protocol.decode(client._socket.recv())
    if code == protocol.ERROR:
        client._broken = LoomError(f"the broker at {where} could not resume this client: "
                                   f"{fields[0]}")
        raise client._broken
    if code != protocol.WELCOME:
        raise LoomError(f"unexpected {protocol.name_of(code)} from the broker while resuming")
    log.info("session %d re-attached", number)
    _ask_again(client)


def _ask_again(client) -> None:
    """Requests whose answers may have been lost with the old connection go out again."""
    for request, (awaited, release) in client._fetching.items():
        replies = client._replies.get(request, {})
        missing = sorted(task_id for task_id in awaited if task_id not in replies)
        if missing:
            client._socket.send(protocol.encode(protocol.FETCH, request, missing, release,
                                                client._lane))
    for request, reply in client._replies.items():
        if reply is None:  # GetStats or GetSnapshot waiting
            client._socket.send(protocol.encode(protocol.GET_STATS, request))
    ids = client._take_releases()
    if ids:
        client._socket.send(protocol.encode(protocol.RELEASE, ids), zmq.NOBLOCK)
