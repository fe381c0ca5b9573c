"""Re-attaching a client to its broker after the connection dropped (a broker restart).

A broker started with ``--journal`` gives each client a session (``Session``:
its number and a token). When the connection drops, the client does not give
up: it opens a new socket (whatever the old one still queues must not reach a
restarted broker before ``ResumeClient``), sends ``ResumeClient`` with the ids
of the futures it still waits on, and waits up to its connect timeout for the
broker to come back. The broker answers ``Welcome`` and then which of those
ended meanwhile (``TasksFinished`` / ``TasksFailed``), which the client's usual
handling applies; fetches in progress are asked again (only what has not
arrived), and so are pending stats.

A plan in flight is not lost either. The client keeps each plan's encoded chunks
(``SentPlans``) until the broker says it journaled them (``Accepted``, sent 20 ms
after a plan's last chunk is taken in, for all taken in meanwhile). ``ResumeClient``
names the first id of the plans it kept (``resend_from``); the broker answers
``Accepted`` with what its journal has, and the client sends the rest again, whole,
before anything else. So a plan submitted just before the broker died, or whose
chunks a dropped connection cut, is taken in once, and the user submits nothing
again.
"""

from __future__ import annotations

import logging
import time

import zmq

from .. import protocol
from ..errors import ConnectionLost, LoomError
from ..frames import recv_frames

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
    sent_plans = client._sent_plans
    client._socket.send(protocol.encode(protocol.RESUME_CLIENT, protocol.PROTOCOL_VERSION,
                                        number, token, waiting, sent_plans.resend_from()))
    deadline = time.monotonic() + client._reattach_timeout
    _await_answer(client, deadline, where, number)
    code, fields = protocol.decode(client._socket.recv())
    if code == protocol.ERROR:
        client._broken = LoomError(f"the broker at {where} could not resume this client: "
                                   f"{fields[0]}")
        raise client._broken
    if code != protocol.WELCOME:
        raise LoomError(f"unexpected {protocol.name_of(code)} from the broker while resuming")
    while True:  # Accepted follows Welcome: which kept plans its journal has
        _await_answer(client, deadline, where, number)
        frames = recv_frames(client._socket)
        client._on_message(frames)   # (Accepted included: it drops the journaled plans)
        if protocol.decode(frames[0].buffer)[0] == protocol.ACCEPTED:
            break
    resent = sent_plans.unconfirmed()
    for plan_chunks in resent:
        for chunk in plan_chunks:
            client._socket.send(chunk, copy=False)
    log.info("session %d re-attached%s", number,
             f"; {len(resent)} plans its broker had not journaled sent again" if resent else "")
    _ask_again(client)


def _await_answer(client, deadline: float, where: str, number: int) -> None:
    while not client._socket.poll(100):
        if client._monitor.poll(0):
            client._monitor.recv_multipart()  # a refused connection while the broker is down
        if time.monotonic() > deadline:  # every later wait raises it too (client.py)
            client._broken = ConnectionLost(
                f"the broker at {where} did not come back within "
                f"{client._reattach_timeout:.0f} s to resume session {number}")
            raise client._broken


class SentPlans:
    """Plans sent to a broker with a journal that has not yet said it journaled them
    (Accepted): their encoded Submit chunks, in order, to send again on resuming."""

    def __init__(self) -> None:
        self._plans: list[tuple[int, int, list[bytes]]] = []   # (first id, next id, chunks)

    def __len__(self) -> int:
        return len(self._plans)

    def keep(self, first_id: int, next_id: int) -> list[bytes]:
        """A plan of ids [first_id, next_id) whose first chunk was sent; the caller appends
        that one and each that follows."""
        chunks: list[bytes] = []
        self._plans.append((first_id, next_id, chunks))
        return chunks

    def confirm(self, next_id: int) -> None:
        """Accepted: the plans below ``next_id`` are journaled."""
        plans = self._plans
        while plans and plans[0][1] <= next_id:
            plans.pop(0)

    def abandon(self, first_id: int) -> None:
        """The submit of the plan that starts at ``first_id`` stopped midway: never again."""
        self._plans = [plan for plan in self._plans if plan[0] != first_id]

    def refused(self, ids: list[int]) -> None:
        """SubmitRefused: the plan of these result ids is answered."""
        self._plans = [plan for plan in self._plans
                       if not any(plan[0] <= task_id < plan[1] for task_id in ids)]

    def resend_from(self) -> int:
        return self._plans[0][0] if self._plans else -1

    def unconfirmed(self) -> list[list[bytes]]:
        return [chunks for _, _, chunks in self._plans]


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
