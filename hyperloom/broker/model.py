"""What the broker remembers: task nodes, workers, clients.

Kept compact on purpose: a plan of a million tasks is a million Node objects,
so a Node has slots only, refers to its inputs and consumers directly (no id
lookups on the hot path) and keeps optional data (fetch requests, errors,
holders beyond the first) out of line until it is needed.
"""

from __future__ import annotations

from .taskstate import WAITING, TaskState


class Node:
    """One task of a plan and, once finished, its data object."""

    __slots__ = (
        "id", "client", "type", "config", "inputs", "n_cpus", "label", "state",
        "remaining", "consumers", "refs", "is_result", "worker", "holders",
        "size", "length", "extra",
    )

    def __init__(self, task_id, client, task_type, config, inputs, n_cpus, label):
        self.id = task_id
        self.client = client
        self.type = task_type
        self.config = config
        self.inputs = inputs          # tuple of Node
        self.n_cpus = n_cpus
        self.label = label
        self.state = WAITING
        self.remaining = 0            # inputs not finished yet
        self.consumers = None         # None, one Node, or a list of them (see consumers_of)
        self.refs = 0                 # unfinished consumers + 1 while the client holds it
        self.is_result = False        # the client holds a future for it
        self.worker = None            # where it is assigned (while ASSIGNED)
        self.holders = None           # list of WorkerRecord holding (or receiving) the data
        self.size = 0
        self.length = 0
        self.extra = None             # NodeExtra, rarely needed

    def get_extra(self) -> NodeExtra:
        if self.extra is None:
            self.extra = NodeExtra()
        return self.extra

    def __repr__(self):
        return f"<Node {self.id} {self.type} {TaskState(self.state).name}>"


def consumers_of(node: Node):
    """The consumers of ``node`` as a sequence.

    Most nodes have exactly one consumer; storing it directly instead of in a
    one-element list saves ~100 bytes per task of a long chain.
    """
    consumers = node.consumers
    if consumers is None:
        return ()
    if type(consumers) is Node:
        return (consumers,)
    return consumers


def add_consumer(node: Node, consumer: Node, times: int = 1):
    for _ in range(times):
        consumers = node.consumers
        if consumers is None:
            node.consumers = consumer
        elif type(consumers) is Node:
            node.consumers = [consumers, consumer]
        else:
            consumers.append(consumer)


def remove_consumer(node: Node, consumer: Node):
    """``consumer`` no longer reads ``node`` (every edge between them goes)."""
    consumers = node.consumers
    if consumers is consumer:
        node.consumers = None
    elif type(consumers) is list:
        kept = [c for c in consumers if c is not consumer]
        node.consumers = kept if len(kept) > 1 else (kept[0] if kept else None)


class NodeExtra:
    """Rare per-node data: the failure, lost-worker count, checkpoint, inline result."""

    __slots__ = ("error", "losses", "checkpoint_path", "inline")

    def __init__(self):
        self.error = None             # [failed id, worker address, message]
        self.losses = 0               # how many workers died while running it
        self.checkpoint_path = None
        self.inline = None            # (meta, frames) of a small result sent along


class WorkerRecord:
    """The broker's record of a connected worker (not the worker's own state:
    that is ``hyperloom.worker.state.WorkerCore``)."""

    def __init__(self, identity: bytes, worker_id: int, address: str, cpus: int,
                 task_types, hostname: str, now: float):
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
        self.bytes_held = 0
        self.bytes_received = 0       # ordered transfers to this worker
        self.bytes_sent = 0
        self.n_finished = 0
        self.last_seen = now
        self.overbooking = 3          # core tasks assigned per core (adapted to task speed)
        self.n_core_finished = 0      # core-requesting tasks finished, for the rate
        self.rate_mark = (0, now)     # (n_core_finished, when) at the last rate update

    def __repr__(self):
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
        self.pending_plan: PendingPlan | None = None  # PendingPlan while a chunked Submit arrives
        self.n_total = 0              # tasks submitted (for progress)
        self.n_done = 0               # of those, finished, failed or canceled
        self.progress_sent = float("-inf")  # when progress alone was last sent


class PendingPlan:
    """A submit whose chunks are still arriving: checked and built, not yet linked."""

    def __init__(self):
        self.symbols = []
        self.labels = []
        self.nodes = {}               # id -> Node
        self.results = []
        self.error = None             # the first problem found: the whole plan is refused
        self.result_ids = []          # all result ids, to name them in SubmitRefused
