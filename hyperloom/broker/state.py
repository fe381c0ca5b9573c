"""The broker's sans-I/O core: every decision the broker makes, driven by events.

``BrokerState`` takes decoded messages (``on_message``), the passing of time
(``on_tick``), the end of a batch of messages (``on_drained``) and lost
connections (``on_peer_disconnected``), each with ``now`` from the caller's
clock; it appends what must be sent to ``self.outbox``. No sockets, no files,
no clocks of its own: server.py does the I/O, tests/inprocess drive it in
memory.

It is composed of mixins, one per sub-protocol, sharing this object's state:
lifecycle.py (states, reference counts, placement), intake.py (plans),
requests.py (client requests), reports.py (worker reports), recovery.py (loss),
dynamic.py (dslice/dget), restore.py (restart from a journal) and sessions.py
(client sessions). Mixins rather than modules of functions: the
handlers call each other on the hot path, where ``self.method`` costs what it
always did, and a test or a tool sees one object with one set of attributes.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .. import protocol
from . import taskstate as ts
from .base import BUILTIN_TYPES
from .dynamic import DynamicPass
from .intake import PlanError, PlanIntake  # noqa: F401  (PlanError: part of this API)
from .invariants import check_invariants
from .lifecycle import Lifecycle
from .model import ClientRecord, Node, WorkerRecord
from .outbox import Outbox
from .recorder import NULL_RECORDER, Recorder, RecorderFactory, no_tracing
from .recovery import Recovery
from .reports import WorkerReports
from .requests import ClientRequests
from .restore import Restore
from .sessions import Sessions
from . import journal as jn
from .journal import NullJournal
from .retire import Retirements
from .scheduler import ReadyQueue
from .snapshot import DashboardFeed

log = logging.getLogger("hyperloom.broker")

# A message handler: (the peer, the decoded fields, the message's frames, now). Fields
# have the top-level types of protocol.MESSAGES (decode checks them); what is inside a
# batch is checked by the handler that reads it.
Handler = Callable[[Any, list[Any], Sequence[Any], float], None]

MAX_OVERBOOKING = 64        # core tasks queued per core at most
QUEUE_SECONDS = 0.02        # how much work a fast worker may have queued per core
PROGRESS_INTERVAL = 0.2     # progress alone goes to a client at most 5 times a second


def _no_checkpoints(path: str) -> bool:
    return False


class BrokerState(Lifecycle, PlanIntake, ClientRequests, WorkerReports, Recovery,
                  DynamicPass, Restore, Sessions):
    def __init__(self, overbooking: int = 3, max_task_losses: int = 3,
                 heartbeat_timeout: float = 5.0,
                 checkpoint_exists: Callable[[str], bool] = _no_checkpoints,
                 open_recorder: RecorderFactory = no_tracing, max_peers: int | None = None,
                 journal: NullJournal | None = None, reattach_timeout: float = 10.0,
                 session_timeout: float = 120.0) -> None:
        self.overbooking = overbooking            # core tasks per core, at least
        self.max_task_losses = max_task_losses
        self.heartbeat_timeout = heartbeat_timeout
        self.max_peers = max_peers                # refuse more (the open-file limit)
        self.checkpoint_exists = checkpoint_exists  # the server passes os.path.exists
        self.open_recorder = open_recorder
        self.recorder: Recorder = NULL_RECORDER
        self.tasks: dict[int, Node] = {}  # id -> Node in the DAG (not RELEASED)
        self.peers: dict[bytes, ClientRecord | WorkerRecord] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.clients: dict[bytes, ClientRecord] = {}
        self.outbox = Outbox()
        self.ready = ReadyQueue()        # READY nodes to place, in order (light / core)
        self.dynamic_ready: list[Node] = []  # READY dslice/dget nodes to expand
        self.unplaceable: list[Node] = []    # READY nodes no connected worker can run
        self._moves = [0] * len(ts.TaskState)  # see Lifecycle.state_counts
        self.next_worker_id = 1
        self.next_client_number = 1
        self.provided_types = set(BUILTIN_TYPES)
        # Fetches of unfinished tasks: id -> (client, request, release), one tuple
        # shared by all ids of one Fetch (a list when several fetches wait on one id).
        self.pending_fetches = {}
        self.held_removals = {}          # worker -> ids to remove, sent in a while
        self.removals_due = 0.0
        self.stop_requested = False      # a client sent Terminate
        self.feed = DashboardFeed()      # what live dashboards ask for (snapshot.py)
        self.retirements = Retirements(self)  # workers leaving at walltime (retire.py)
        # The journal (journal.py, restore.py): records go through ``journal``; with one,
        # clients have sessions that survive their connection and the broker.
        self.journaling = journal is not None
        self.journal = journal if journal is not None else jn.NULL_JOURNAL
        self.reattach_timeout = reattach_timeout  # how long a restart waits for its workers
        self.session_timeout = session_timeout    # how long a detached client is kept
        self.sessions = {}               # client number -> ClientRecord (journaling only)
        self.session_tokens = {}         # client number -> token (from Session)
        self.detached_clients = {}       # client number -> when its session expires
        self.accepted_owed = {}          # client -> when its Accepted goes (sessions.py)
        self.detached_workers = {}       # worker id -> ghost WorkerRecord (after a restart)
        self.restoring = False           # waiting for ghosts to re-attach: nothing scheduled
        self.restore_deadline = None
        # (wall clock) the deadline of a restart that was cut by another crash (restore.py)
        self.pending_restore_deadline = None
        self.replaying = False
        self.finished_in_journal = set()  # ids replayed as finished (for journal_stats)
        self.n_recomputed = 0            # of those, computed again (their data was lost)
        self._handlers = self._handler_table()

    @property
    def tracing(self) -> bool:
        return self.recorder is not NULL_RECORDER

    # ------------------------------------------------------------ events

    def on_message(self, identity: bytes, code: int, fields: list[Any], frames: Sequence[Any],
                   now: float) -> None:
        """A decoded message; ``frames[2:]`` are its payload frames."""
        peer = self.peers.get(identity)
        if peer is None:
            self._on_stranger(identity, code, fields, now)
            return
        peer.last_seen = now
        kind = "client" if type(peer) is ClientRecord else "worker"
        handler = self._handlers.get((kind, code))
        if handler is None:
            self.refuse(identity, f"{protocol.name_of(code)} is not expected from a {kind}")
            return
        handler(peer, fields, frames, now)

    def on_undecodable(self, identity: bytes, message: str) -> None:
        self.refuse(identity, message)

    def on_tick(self, now: float) -> None:
        """Time passed (about once per heartbeat interval)."""
        self.expire_silent_workers(now)
        if self.detached_clients:
            self.expire_sessions(now)
        self.update_overbooking(now)
        self.feed.tick(now)

    def on_drained(self, now: float) -> None:
        """The waiting messages are handled: expand, place, let retiring workers go,
        decide what goes out (held for detached clients, progress, removals)."""
        if not (self.restoring and self.restore_step(now)):  # a restart waits: no placing
            self._place_round(now)
        if self.detached_clients:
            self.hold_for_detached()
        if self.accepted_owed:
            self.send_accepted(now)
        if self.outbox.progressed:
            self._throttle_progress(now)
        if self.outbox.remove or self.held_removals:
            self.hold_removals(now)

    def _place_round(self, now: float) -> None:
        if self.dynamic_ready and self.workers:
            self.expand_dynamic()
        self.schedule_round()
        if self.retirements.workers:
            self.outbox.shutdown.extend(self.retirements.advance())
        if self.outbox.peers_gone:  # told to every worker there is when it goes out
            self.outbox.peers_gone_to = list(self.workers.values())
        if self.feed.active:
            self._feed_sent(now)

    def _feed_sent(self, now: float) -> None:
        """Tell the dashboard feed which tasks and data are sent out now."""
        for entries in self.outbox.compute.values():
            self.feed.on_compute_sent(entries, now)
        for worker, targets in self.outbox.sends.items():
            self.feed.on_sends(worker, targets, self.tasks, now)

    def on_peer_disconnected(self, identity: bytes, now: float,
                             why: str = "connection closed") -> None:
        self.peer_gone(identity, why, now)

    def on_sample(self, cpu_percent: float, rss: int) -> None:
        """The broker process's resource use, for traces."""
        self.recorder.sample(cpu_percent, rss)

    def on_shutdown(self) -> None:
        """The broker stops: workers are told to shut down, the trace is closed."""
        self.release_held_removals()
        self.outbox.shutdown.extend(self.workers.values())
        self.recorder.close()
        self.recorder = NULL_RECORDER

    def _handler_table(self) -> dict[tuple[str, int], Handler]:
        return {
            ("client", protocol.SUBMIT): self._on_submit_message,
            ("client", protocol.FETCH): lambda c, f, _, now: self.on_fetch(c, *f),
            ("client", protocol.RELEASE): lambda c, f, _, now: self.on_release(c, f[0]),
            ("client", protocol.GET_STATS): self._on_get_stats,
            ("client", protocol.SET_TRACE): self._on_set_trace,
            ("client", protocol.TERMINATE): self._on_terminate,
            ("client", protocol.HEARTBEAT): _ignore,
            ("client", protocol.GOODBYE): self._on_goodbye,
            ("client", protocol.GET_SNAPSHOT): self._on_get_snapshot,
            ("client", protocol.ABANDON_PLAN): lambda c, f, _, now: self.on_abandon_plan(c),
            ("worker", protocol.WORKER_USAGE):
                lambda w, f, _, now: self.feed.on_usage(w, *f),
            ("worker", protocol.RETIRING): lambda w, f, _, now: self.retirements.on_retiring(w),
            ("worker", protocol.TASKS_DONE): self._on_tasks_done,
            ("worker", protocol.UPLOADED):
                lambda w, f, frames, now: self.on_uploaded(w, f[0], f[1], f[2], f[3],
                                                           frames[2:]),
            ("worker", protocol.HEARTBEAT): _ignore,
            ("worker", protocol.GOODBYE): self._on_goodbye,
        }

    def _on_submit_message(self, client: ClientRecord, fields: list[Any],
                           frames: Sequence[Any], now: float) -> None:
        if fields[5]:   # releases sent along: before the plan, as a Release before it
            self.on_release(client, fields[5], "Submit.release")
        if self.journaling:  # the chunk as received: its header's bytes, not packed again
            header = frames[1]   # (a replay takes its releases from their own records)
            self.journal.submit_raw(client.number,
                                    header if type(header) is bytes else header.bytes)
        self.on_submit(client, *fields[:5])

    def _on_tasks_done(self, worker: WorkerRecord, fields: list[Any], frames: Sequence[Any],
                       now: float) -> None:
        if self.feed.active:
            self.feed.on_tasks_done(worker, self.tasks, fields[0], fields[1], now)
        self.on_tasks_done(worker, fields[0], fields[1], now, fields[2], frames[2:])
        if fields[3]:
            self.on_tasks_stolen(worker, fields[3])

    def _on_get_stats(self, client: ClientRecord, fields: list[Any], frames: Sequence[Any],
                      now: float) -> None:
        self.outbox.add_reply(
            (client.identity, protocol.encode(protocol.STATS, fields[0], self.stats())))

    def _on_get_snapshot(self, client: ClientRecord, fields: list[Any],
                         frames: Sequence[Any], now: float) -> None:
        request, since = fields
        snapshot = self.feed.snapshot(self, since, now)
        self.outbox.add_reply(
            (client.identity, protocol.encode(protocol.SNAPSHOT, request, snapshot)))

    def _on_terminate(self, client: ClientRecord, fields: list[Any], frames: Sequence[Any],
                      now: float) -> None:
        log.info("client %d asked the broker to terminate", client.number)
        self.stop_requested = True

    def _on_goodbye(self, peer: ClientRecord | WorkerRecord, fields: list[Any],
                    frames: Sequence[Any], now: float) -> None:
        self.peer_gone(peer.identity, "said goodbye", now)

    def refuse(self, identity: bytes, message: str, fatal: bool = False) -> None:
        log.warning("refused a message from %s: %s", identity.hex(), message)
        self.outbox.add_error((identity, message, fatal))

    def _throttle_progress(self, now: float) -> None:
        """Progress alone goes out at most every PROGRESS_INTERVAL; with results, always;
        not at all when the values of all those results go to the client now (Data says
        they finished: one message less, ~10 % of a one-task round trip)."""
        finished = self.outbox.finished
        if self.outbox.data_inline or self.outbox.pushed:
            self._leave_out_fetched(finished)
        for client in list(self.outbox.progressed):
            gone = self.clients.get(client.identity) is not client
            if gone or (client not in finished
                        and now - client.progress_sent < PROGRESS_INTERVAL):
                self.outbox.progressed.discard(client)
            else:
                client.progress_sent = now

    def _leave_out_fetched(self, finished: defaultdict[ClientRecord, list[int]]) -> None:
        fetched: dict[bytes, set[int]] = {}
        for (identity, _), inline in self.outbox.data_inline.items():
            fetched.setdefault(identity, set()).update(entry[0] for entry in inline)
        for client, pushed in self.outbox.pushed.items():
            fetched.setdefault(client.identity, set()).update(entry[0] for entry in pushed)
        for client in [c for c in finished if c.identity in fetched]:
            if fetched[client.identity].issuperset(finished[client]):
                del finished[client]
                self.outbox.progressed.discard(client)

    # ------------------------------------------------------------ peers

    def _on_stranger(self, identity: bytes, code: int, fields: list[Any], now: float) -> None:
        """A message from a peer that has not said hello (or was dropped)."""
        limit = self.max_peers
        if limit is not None and len(self.peers) >= limit and code in (
                protocol.HELLO_CLIENT, protocol.HELLO_WORKER, protocol.RESUME_CLIENT,
                protocol.REJOIN_WORKER):
            self.refuse(identity, f"the broker already has {len(self.peers)} peers, the most "
                                  f"its open-file limit allows (ulimit -n; raise the hard "
                                  f"limit for more)", fatal=True)
        elif code == protocol.HELLO_CLIENT:
            self.on_client_hello(identity, fields[0], now)
        elif code == protocol.HELLO_WORKER:
            version, cpus, address, task_types, hostname = fields
            self.on_worker_hello(identity, version, cpus, address, task_types, hostname, now)
        elif code == protocol.RESUME_CLIENT:
            version, number, token, waiting, resend_from = fields
            self.on_client_resume(identity, version, number, token, waiting, resend_from, now)
        elif code == protocol.REJOIN_WORKER:
            version, cpus, address, task_types, hostname, worker_id, held, running = fields
            self.on_worker_rejoin(identity, version, cpus, address, task_types, hostname,
                                  worker_id, held, running, now)
        elif code not in (protocol.GOODBYE, protocol.HEARTBEAT):
            # (those two come from a peer already dropped: its disconnect was seen first)
            self.refuse(identity, f"{protocol.name_of(code)} before HelloClient/HelloWorker",
                        fatal=True)

    def on_client_hello(self, identity: bytes, version: int, now: float) -> ClientRecord | None:
        if version != protocol.PROTOCOL_VERSION:
            self._version_mismatch(identity, "client", version)
            return None
        client = ClientRecord(identity, self.next_client_number, now)
        self.next_client_number += 1
        self.clients[identity] = self.peers[identity] = client
        if self.journaling:  # first: the client has its session once it has Welcome
            self.start_session(client)
        self.outbox.add_reply((identity, protocol.encode(
            protocol.WELCOME, protocol.PROTOCOL_VERSION, client.number,
            sorted(self.provided_types))))
        log.info("client %d connected", client.number)
        return client

    def on_worker_hello(self, identity: bytes, version: int, cpus: int, address: str,
                        task_types: list[Any], hostname: str, now: float,
                        worker_id: int | None = None) -> WorkerRecord | None:
        if version != protocol.PROTOCOL_VERSION:
            self._version_mismatch(identity, "worker", version)
            return None
        if cpus < 0 or not all(isinstance(t, str) for t in task_types):
            self.outbox.add_error((identity, "HelloWorker: invalid cpus or task types", True))
            return None
        if not protocol.valid_data_address(address):
            self.outbox.add_error(
                (identity, f"HelloWorker: data_address {address!r:.60} is not tcp://HOST:PORT",
                 True))
            return None
        if worker_id is None:  # else re-attaching with the id it had (restore.py)
            worker_id = self.next_worker_id
            self.next_worker_id += 1
        worker = WorkerRecord(identity, worker_id, address, cpus, task_types, hostname, now)
        self.journal.worker(worker_id, address, cpus, worker.task_types, hostname)
        worker.overbooking = self.overbooking
        self.workers[identity] = self.peers[identity] = worker
        self.provided_types.update(task_types)
        self.outbox.add_reply((identity, protocol.encode(
            protocol.WELCOME, protocol.PROTOCOL_VERSION, worker.worker_id, [])))
        if self.tracing:
            self._start_worker_trace(worker)
        log.info("worker %d joined: %s, %d cpus", worker.worker_id, address, cpus)
        self.feed.on_worker_joined(worker, now)
        if self.unplaceable:  # the newcomer may run what nobody could
            self.ready.put_back(self.unplaceable)
            self.unplaceable = []
        return worker

    def _version_mismatch(self, identity: bytes, kind: str, version: int) -> None:
        message = (f"protocol version mismatch: this broker speaks version "
                   f"{protocol.PROTOCOL_VERSION}, the {kind} version {version}")
        log.warning("refused a %s: %s", kind, message)
        self.outbox.add_error((identity, message, True))

    def peer_gone(self, identity: bytes, why: str, now: float) -> None:
        """Forget a peer (said goodbye, disconnected, or silent too long)."""
        peer = self.peers.pop(identity, None)
        if peer is None:
            return
        if isinstance(peer, ClientRecord):
            if self.journaling and why != "said goodbye":
                self.detach_client(peer, now)   # it may come back (restore.py)
                return
            self.on_client_lost(peer)
            if self.journaling:
                self.journal.client_end(peer.number)
                self._end_session(peer.number)
            return
        clean = why == "said goodbye"  # leaving cleanly, not lost
        if clean:
            log.info("worker %d left (%s)", peer.worker_id, why)
        else:
            log.warning("worker %d lost (%s)", peer.worker_id, why)
        if peer.retiring:
            self.retirements.on_left(peer, clean=clean)
        self.on_worker_lost(peer)
        self.feed.on_worker_gone(peer, clean, why, now)

    def update_overbooking(self, now: float) -> None:
        """Let workers that finish core tasks quickly queue ~QUEUE_SECONDS of them.

        Overbooking hides the round trip to the broker between tasks; 3x cores
        (the original's factor) is plenty for long tasks but leaves 1 ms tasks
        waiting on round trips. Stealing undoes it where it hurts balance.
        """
        base = self.overbooking
        for worker in self.workers.values():
            done, since = worker.rate_mark
            if now - since < 0.5:
                continue
            rate = (worker.n_core_finished - done) / (now - since) / max(1, worker.cpus)
            worker.overbooking = max(base, min(MAX_OVERBOOKING, int(rate * QUEUE_SECONDS)))
            worker.rate_mark = (worker.n_core_finished, now)

    # ------------------------------------------------------------ tracing

    def _on_set_trace(self, client: ClientRecord, fields: list[Any], frames: Sequence[Any],
                      now: float) -> None:
        path = fields[0]
        if type(path) is not str or not os.path.isabs(path):
            self.refuse(client.identity, f"SetTrace.path must be an absolute path, got {path!r}")
            return
        try:
            recorder = self.open_recorder(path)
        except OSError as error:
            self.refuse(client.identity, f"cannot write traces into {path}: {error}")
            return
        log.info("tracing into %s", path)
        self.start_trace(recorder, path)

    def start_trace(self, recorder: Recorder, directory: str) -> None:
        """Trace from now on: the broker into ``recorder``, every worker into ``directory``."""
        self.recorder.close()
        self.recorder = recorder
        self.trace_directory = directory
        for worker in self.workers.values():
            self._start_worker_trace(worker)

    def _start_worker_trace(self, worker: WorkerRecord) -> None:
        self.recorder.worker_joined(worker.worker_id, worker.address, worker.cpus)
        self.outbox.add_reply((worker.identity, protocol.encode(
            protocol.START_TRACE, self.trace_directory, worker.worker_id)))

    def check_invariants(self) -> None:
        """Assert the bookkeeping agrees with itself (tests call this after each step)."""
        check_invariants(self)


def _ignore(peer: ClientRecord | WorkerRecord, fields: list[Any], frames: Sequence[Any],
            now: float) -> None:
    """Heartbeat: ``on_message`` noted the peer's ``last_seen``; nothing else to do."""
