"""What the broker remembers: task nodes, workers, clients.

Kept compact on purpose: a plan of a million tasks is a million Node objects,
so a Node has slots only, refers to its inputs and consumers directly (no id
lookups on the hot path) and keeps optional data (fetch requests, errors,
holders beyond the first) out of line until it is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .taskstate import WAITING, TaskState
from .. import protocol


class Node:
    """One task of a plan and, once finished, its data object."""

    __slots__ = (
        "id", "client", "type", "config", "inputs", "n_cpus", "label", "state",
        "remaining", "consumers", "refs", "is_result", "worker", "holders",
        "size", "length", "extra",
    )

    def __init__(self, task_id: int, client: ClientRecord, task_type: str, config: bytes,
                 inputs: tuple[Node, ...], n_cpus: int, label: str | None):
        self.id = task_id
        self.client = client
        self.type = task_type
        self.config = config
        self.inputs = inputs          # tuple of Node
        self.n_cpus = n_cpus
        self.label = label
        self.state: int = WAITING
        self.remaining = 0            # inputs not finished yet
        self.consumers: Node | list[Node] | None = None  # see consumers_of
        self.refs = 0                 # unfinished consumers + 1 while the client holds it
        self.is_result = False        # the client holds a future for it
        self.worker: WorkerRecord | None = None  # where it is assigned (while ASSIGNED)
        # the WorkerRecords holding (or receiving) the data (while FINISHED)
        self.holders: list[WorkerRecord] | None = None
        self.size = 0
        self.length = 0
        self.extra: NodeExtra | None = None  # rarely needed

    def get_extra(self) -> NodeExtra:
        if self.extra is None:
            self.extra = NodeExtra()
        return self.extra

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.type} {TaskState(self.state).name}>"


def consumers_of(node: Node) -> Sequence[Node]:
    """The consumers of ``node`` as a sequence.

    Most nodes have exactly one consumer; storing it directly instead of in a
    one-element list saves ~100 bytes per task of a long chain.
    """
    consumers = node.consumers
    if consumers is None:
        return ()
    if isinstance(consumers, Node):
        return (consumers,)
    return consumers


def add_consumer(node: Node, consumer: Node, times: int = 1) -> None:
    for _ in range(times):
        consumers = node.consumers
        if consumers is None:
            node.consumers = consumer
        elif isinstance(consumers, Node):
            node.consumers = [consumers, consumer]
        else:
            consumers.append(consumer)


def remove_consumer(node: Node, consumer: Node) -> None:
    """``consumer`` no longer reads ``node`` (every edge between them goes)."""
    consumers = node.consumers
    if consumers is consumer:
        node.consumers = None
    elif isinstance(consumers, list):
        kept = [c for c in consumers if c is not consumer]
        node.consumers = kept if len(kept) > 1 else (kept[0] if kept else None)


class NodeExtra:
    """Rare per-node data: the failure, lost-worker count, checkpoint, inline result."""

    __slots__ = ("error", "losses", "checkpoint_path", "inline")

    def __init__(self) -> None:
        self.error: list[Any] | None = None  # [failed id, worker address, message]
        self.losses = 0               # how many workers died while running it
        self.checkpoint_path: str | None = None
        self.inline: tuple[Any, Any] | None = None  # (meta, frames): a small result sent along


class WorkerRecord:
    """The broker's record of a connected worker (not the worker's own state:
    that is ``hyperloom.worker.state.WorkerCore``)."""

    def __init__(self, identity: bytes, worker_id: int, address: str, cpus: int,
                 task_types: Iterable[str], hostname: str, now: float):
        self.identity = identity
        self.worker_id = worker_id
        self.address = address
        self.cpus = cpus
        self.task_types = frozenset(task_types)
        self.hostname = hostname
        self.cpus_used = 0            # n_cpus of assigned, unfinished tasks
        self.n_light = 0              # assigned, unfinished tasks needing no core
        self.assigned: dict[Node, None] = {}  # Nodes assigned and unfinished, in assignment order
        self.canceled: set[int] = set()  # ids canceled while assigned: their reports are expected
        self.stealing: set[int] = set()  # ids asked back with StealTasks, not answered yet
        # data id -> the WorkerRecord sending it here: ordered, not yet used
        self.incoming: dict[int, WorkerRecord] = {}
        # (client identity, request) -> ids asked by Upload
        self.uploads: dict[tuple[bytes, int], list[int]] = {}
        self.retiring = False         # leaving (walltime): nothing new is placed here (retire.py)
        self.bytes_held = 0
        self.bytes_received = 0       # ordered transfers to this worker
        self.bytes_sent = 0
        self.n_finished = 0
        self.last_seen = now
        self.overbooking = 3          # core tasks assigned per core (adapted to task speed)
        self.n_core_finished = 0      # core-requesting tasks finished, for the rate
        self.rate_mark = (0, now)     # (n_core_finished, when) at the last rate update

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} {self.address} cpus={self.cpus}>"


class ClientRecord:
    """The broker's record of a connected client: its number (id range), the
    futures it holds, its progress."""

    def __init__(self, identity: bytes, number: int, now: float):
        self.identity = identity
        self.number = number
        self.results: set[int] = set()  # ids of nodes the client holds futures for
        self.last_seen = now
        self.next_broker_id = 0       # ids the broker creates for it (dslice expansion)
        # Its plans of ids below this are taken in (journaled, with a journal): Accepted
        self.accepted_until = number << protocol.CLIENT_SHIFT
        self.pending_plan: PendingPlan | None = None  # PendingPlan while a chunked Submit arrives
        self.n_total = 0              # tasks submitted (for progress)
        self.n_done = 0               # of those, finished, failed or canceled
        self.progress_sent = float("-inf")  # when progress alone was last sent
        self.lane = False             # it reads big values from workers' bulk lanes (Fetch)


class PendingPlan:
    """A submit whose chunks are still arriving: checked and built, not yet linked."""

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.labels: list[str | None] = []
        self.nodes: dict[int, Node] | None = {}  # id -> Node (None once refused)
        self.results: list[Node] | None = []
        self.error: str | None = None  # the first problem found: the whole plan is refused
        self.result_ids: list[int] = []  # all result ids, to name them in SubmitRefused
