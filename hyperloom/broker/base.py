"""What the mixins of ``BrokerState`` share: its attributes, and the methods one
mixin calls on another, declared once (for readers and for mypy).

Annotations only: nothing here exists at run time but the class itself, so a
mixin's ``self.tasks`` or ``self.transition(...)`` costs what it always did.
``BrokerState.__init__`` (state.py) gives the attributes their values.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable, Sequence

from .. import protocol
from .journal import NullJournal
from .model import ClientRecord, Node, WorkerRecord
from .outbox import Outbox
from .recorder import Recorder, RecorderFactory
from .retire import Retirements
from .scheduler import ReadyQueue
from .snapshot import DashboardFeed

# Task types every worker provides; plans may name them before workers join.
BUILTIN_TYPES = frozenset({
    protocol.TASK_CONST, protocol.TASK_MERGE, protocol.TASK_OPEN, protocol.TASK_SPLIT,
    protocol.TASK_SAVE, protocol.TASK_ARRAY_MAKE, protocol.TASK_SIZE, protocol.TASK_LENGTH,
    protocol.TASK_GET, protocol.TASK_SLICE, protocol.TASK_RUN, protocol.TASK_PY_CALL,
    protocol.TASK_PY_VALUE, protocol.TASK_DSLICE, protocol.TASK_DGET,
})

Fetch = tuple[ClientRecord, int, bool]   # (client, request, release) waiting on a task


class CoreBase:
    # configuration and injected I/O
    overbooking: int
    max_task_losses: int
    heartbeat_timeout: float
    checkpoint_exists: Callable[[str], bool]
    open_recorder: RecorderFactory
    recorder: Recorder
    # the DAG, the peers and what waits
    tasks: dict[int, Node]
    peers: dict[bytes, ClientRecord | WorkerRecord]
    workers: dict[bytes, WorkerRecord]
    clients: dict[bytes, ClientRecord]
    outbox: Outbox
    ready: ReadyQueue
    dynamic_ready: list[Node]
    unplaceable: list[Node]
    pending_fetches: dict[int, Fetch | list[Fetch]]
    held_removals: dict[WorkerRecord, list[int]]   # RemoveData not sent yet (lifecycle.py)
    removals_due: float
    _moves: list[int]
    feed: DashboardFeed          # what live dashboards ask for (snapshot.py)
    # the journal and what survives a restart (journal.py, restore.py)
    journal: NullJournal         # records nothing without --journal
    journaling: bool
    restoring: bool
    replaying: bool
    reattach_timeout: float
    session_timeout: float
    sessions: dict[int, ClientRecord]
    session_tokens: dict[int, bytes]
    detached_clients: dict[int, float | None]
    accepted_owed: dict[ClientRecord, float | None]   # Accepted due then (sessions.py)
    detached_workers: dict[int, WorkerRecord]
    restore_deadline: float | None
    pending_restore_deadline: float | None
    next_worker_id: int
    next_client_number: int
    provided_types: set[str]
    finished_in_journal: set[int]
    n_recomputed: int
    retirements: Retirements     # workers leaving at walltime (retire.py)

    # methods of one mixin that others call (defined in the module named)
    transition: Callable[[Node, int], None]                      # lifecycle
    add_ready: Callable[[Iterable[Node]], None]                  # lifecycle
    make_ready: Callable[[Node], None]                           # lifecycle
    requeue_ready: Callable[[], None]                            # lifecycle
    deliver: Callable[[Node, WorkerRecord], None]                # lifecycle
    add_holder: Callable[[Node, WorkerRecord], None]             # lifecycle
    drop_inputs: Callable[[Iterable[Node]], None]                # lifecycle
    release_node: Callable[[Node], None]                         # lifecycle
    _forget: Callable[[Node], None]                              # lifecycle
    _fail: Callable[[Node, list[Any]], None]                     # lifecycle
    _unassign: Callable[[Node, WorkerRecord], None]              # lifecycle
    _take_fetches: Callable[[int], Sequence[Fetch]]              # requests
    _serve_fetch: Callable[[Node, ClientRecord, int, bool], None]  # requests
    _park_fetch: Callable[[int, Fetch], None]                    # requests
    drop_pending_plan: Callable[[ClientRecord], bool]            # intake
    _worker_error: Callable[[WorkerRecord, str], None]           # reports
    new_node: Callable[[ClientRecord, str, bytes, tuple[Node, ...], int, str | None],
                       Node]                                     # dynamic
    link: Callable[[Node], None]                                 # dynamic
    peer_gone: Callable[[bytes, str, float], None]               # state
    on_client_lost: Callable[[ClientRecord], None]               # requests
    on_worker_lost: Callable[[WorkerRecord], None]               # recovery
    journal_stats: Callable[[], dict[str, Any]]                  # restore
    _end_session: Callable[[int], None]                          # sessions
    stats: Callable[[], dict[str, Any]]                          # requests
    _drop_holder: Callable[[WorkerRecord], tuple[list[Node], list[int]]]  # recovery
    _recompute_lost: Callable[[list[Node]], None]                # recovery
    _finish: Callable[[Node, WorkerRecord, int, int], None]      # reports
    _release: Callable[[Node], None]                             # requests
    on_submit: Callable[..., None]                               # intake
    on_worker_hello: Callable[..., WorkerRecord | None]          # state
    _version_mismatch: Callable[[bytes, str, int], None]         # state

    @property
    def tracing(self) -> bool:
        raise NotImplementedError   # state.py

    @property
    def state_counts(self) -> list[int]:
        raise NotImplementedError   # lifecycle.py
