"""Client sessions of a journaled broker: they outlive a connection and a restart.

A mixin of ``BrokerState`` (see state.py). With a journal, a client gets
``Session`` (number, token) just before Welcome, journaled with CLIENT. A client whose
connection drops is *detached*, not released: its data is kept for
``session_timeout``, and it re-attaches with ResumeClient (number + token), to this
broker or to one restarted from the journal (restore.py), and is told which of its
waited-on results finished or failed meanwhile. Nothing goes to a detached client.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from .base import CoreBase
from .. import protocol
from . import taskstate as ts
from .model import ClientRecord

log = logging.getLogger("hyperloom.broker")

# An Accepted waits this long after the plan it covers, and then covers every plan taken
# in meanwhile: a client submitting plan after plan gets one now and then, not one (and
# an fsync before it) per plan, which cost a one-task round trip on a journaled broker
# ~10 % (benchmarks/journal_cost.py --shapes round-trip). The client only keeps its
# plans a little longer; a resumed client is told at once (on_client_resume).
ACCEPTED_DELAY = 0.02


class Sessions(CoreBase):
    def start_session(self, client: ClientRecord) -> None:
        token = secrets.token_bytes(16)
        self.sessions[client.number] = client
        self.session_tokens[client.number] = token
        self.journal.client(client.number, token)
        self.outbox.add_reply((client.identity, protocol.encode(
            protocol.SESSION, client.number, token)))

    def detach_client(self, client: ClientRecord, now: float) -> None:
        """Its connection dropped: keep its session (and data) for ``session_timeout``."""
        del self.clients[client.identity]
        self.peers.pop(client.identity, None)
        for task_id in list(self.pending_fetches):  # its parked fetches die with the link
            kept = [f for f in self._take_fetches(task_id) if f[0] is not client]
            for waiting in kept:
                self._park_fetch(task_id, waiting)
        self.drop_pending_plan(client)   # it sends the plan again, whole, on resuming
        self.detached_clients[client.number] = now + self.session_timeout
        log.info("client %d disconnected; its session is kept for %.0f s", client.number,
                 self.session_timeout)

    def expire_sessions(self, now: float) -> None:
        for number, deadline in list(self.detached_clients.items()):
            if deadline is None:
                self.detached_clients[number] = now + self.session_timeout
            elif now >= deadline:
                log.info("client %d did not come back: its session ends", number)
                self.journal.client_end(number)
                self._end_session(number)

    def hold_for_detached(self) -> None:
        """Nothing goes to a detached client: it hears what ended when it re-attaches."""
        out = self.outbox
        for batch in (out.finished, out.failed, out.pushed):
            for client in [c for c in batch if self.clients.get(c.identity) is not c]:
                del batch[client]

    def send_accepted(self, now: float) -> None:
        """Accepted to each client whose plans were taken in ACCEPTED_DELAY ago or more."""
        owed = self.accepted_owed
        for client, due in list(owed.items()):
            if self.clients.get(client.identity) is not client:
                del owed[client]            # detached: told when it resumes
            elif due is None:
                owed[client] = now + ACCEPTED_DELAY
            elif now >= due:
                del owed[client]
                self.outbox.accepted[client] = client.accepted_until

    def _end_session(self, number: int) -> None:
        client = self.sessions.pop(number, None)
        self.session_tokens.pop(number, None)
        self.detached_clients.pop(number, None)
        if client is None:
            return
        for task_id in list(client.results):
            node = self.tasks.get(task_id)
            if node is not None:
                self._release(node)
        client.results.clear()

    def on_client_resume(self, identity: bytes, version: int, number: int, token: bytes,
                         waiting: list[Any], resend_from: int, now: float) -> None:
        """ResumeClient: re-attach a session; tell it which of its plans the journal has
        (Accepted: it sends the others again) and what ended among ``waiting``."""
        if version != protocol.PROTOCOL_VERSION:
            self._version_mismatch(identity, "client", version)
            return
        client = self.sessions.get(number) if type(number) is int else None
        if client is None or self.session_tokens.get(number) != token:
            self.outbox.add_error((identity, f"session {number!r:.20} is not known to this "
                                             f"broker (its journal has no such session, or "
                                             f"it expired)", True))
            return
        if number not in self.detached_clients:  # its old connection's end not seen yet
            self.detach_client(client, now)
        del self.detached_clients[number]
        client.identity = identity
        client.last_seen = now
        self.clients[identity] = self.peers[identity] = client
        self.outbox.add_reply((identity, protocol.encode(
            protocol.WELCOME, protocol.PROTOCOL_VERSION, number, sorted(self.provided_types))))
        self.outbox.add_reply((identity, protocol.encode(protocol.ACCEPTED,
                                                         client.accepted_until)))
        self.accepted_owed.pop(client, None)
        # From here on, a waited-on id the broker does not know is of a plan the client kept
        # and sends again (the journal has its plans below accepted_until, and no more)
        resent = max(resend_from, client.accepted_until) if type(resend_from) is int \
            and resend_from >= 0 else None
        finished, failures = [], []
        for task_id in waiting:
            node = self.tasks.get(task_id) if type(task_id) is int else None
            if node is None and resent is not None and type(task_id) is int \
                    and task_id >= resent:
                continue
            if node is None or node.client is not client or not node.is_result:
                failures.append([task_id, task_id, "broker",
                                 "the broker does not know this task: released, or its plan "
                                 "was refused and the answer that said why was lost with the "
                                 "connection, or submitted by a client that did not keep its "
                                 "plan until the broker journaled it"])
            elif node.state == ts.FINISHED:
                finished.append(task_id)
            elif node.state == ts.FAILED:
                assert node.extra is not None and node.extra.error is not None  # FAILED
                failures.append([task_id, *node.extra.error])
        self.outbox.finished[client].extend(finished)
        self.outbox.progressed.add(client)
        if failures:
            self.outbox.failed[client].extend(failures)
        log.info("client %d re-attached: %d of its %d waited-on results finished meanwhile",
                 number, len(finished), len(waiting))
