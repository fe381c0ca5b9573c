"""What the broker remembers: task nodes, workers, clients, and the outbox.

Kept compact on purpose: a plan of a million tasks is a million Node objects,
so a Node has slots only, refers to its inputs and consumers directly (no id
lookups on the hot path) and keeps optional data (fetch requests, errors,
holders beyond the first) out of line until it is needed.
"""

from __future__ import annotations

from collections import defaultdict

from .taskstate import WAITING


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
        self.holders = None           # list of WorkerState holding (or receiving) the data
        self.size = 0
        self.length = 0
        self.extra = None             # NodeExtra, rarely needed

    def get_extra(self) -> "NodeExtra":
        if self.extra is None:
            self.extra = NodeExtra()
        return self.extra

    def __repr__(self):
        return f"<Node {self.id} {self.type} state={self.state}>"


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


class NodeExtra:
    """Rare per-node data: the failure, lost-worker count, checkpoint, inline result."""

    __slots__ = ("error", "losses", "checkpoint_path", "inline")

    def __init__(self):
        self.error = None             # [failed id, worker address, message]
        self.losses = 0               # how many workers died while running it
        self.checkpoint_path = None
        self.inline = None            # (meta, frames) of a small result sent along


class WorkerState:
    """A connected worker as the broker sees it."""

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
        self.assigned = {}            # Nodes assigned and unfinished, in assignment order
        self.canceled = set()         # ids canceled while assigned: their reports are expected
        self.stealing = set()         # ids asked back with StealTasks, not answered yet
        self.incoming = {}            # data id -> source WorkerState: ordered, not yet used
        self.uploads = {}             # (client identity, request) -> ids asked by Upload
        self.retiring = False         # leaving (walltime): nothing new is placed here (retire.py)
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


class ClientState:
    """A connected client: its number (id range) and the futures it holds."""

    def __init__(self, identity: bytes, number: int, now: float):
        self.identity = identity
        self.number = number
        self.results = set()          # ids of nodes the client holds futures for
        self.last_seen = now
        self.next_broker_id = 0       # ids the broker creates for it (dslice expansion)
        self.pending_plan = None      # PendingPlan while a chunked Submit arrives
        self.n_total = 0              # tasks submitted (for progress)
        self.n_done = 0               # of those, finished, failed or canceled


class PendingPlan:
    """A submit whose chunks are still arriving: checked and built, not yet linked."""

    def __init__(self):
        self.symbols = []
        self.labels = []
        self.nodes = {}               # id -> Node
        self.results = []
        self.error = None             # the first problem found: the whole plan is refused
        self.result_ids = []          # all result ids, to name them in SubmitRefused


class Outbox:
    """What the broker core wants sent; the server turns it into messages.

    The core never touches sockets: handlers append here, tests read it.
    Batches are per destination, so one flush sends one message per peer and
    message type however many tasks are involved.
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self.compute = defaultdict(list)       # WorkerState -> [task entries]
        self.sends = defaultdict(dict)         # WorkerState -> {target address: [ids]}
        self.uploads = defaultdict(list)       # (WorkerState, client identity, request) -> [ids]
        self.cancel = defaultdict(list)        # WorkerState -> [ids]
        self.steal = defaultdict(list)         # WorkerState -> [ids]
        self.remove = defaultdict(list)        # WorkerState -> [ids]
        self.peers_gone = []                   # data addresses of workers gone: told to all
        self.finished = defaultdict(list)      # ClientState -> [ids]
        self.progressed = set()                # ClientState whose n_done changed
        self.failed = defaultdict(list)        # ClientState -> [[id, failed id, worker, msg]]
        self.data_errors = defaultdict(list)   # (client identity, request) -> [[id, None, error]]
        self.data_inline = defaultdict(list)   # (client identity, request) -> [(id, meta, frames)]
        self.refused = []                      # (client identity, [ids], message)
        self.errors = []                       # (identity, message, fatal)
        self.notices = []                      # replies, errors, refusals: in the order they arose
        self.replies = []                      # (identity, header frame) ready to send

    def add_reply(self, entry):
        """``(identity, header frame, *payload frames)``: an answer (Welcome, Stats, a
        relayed Uploaded as Data, ...)."""
        self.replies.append(entry)
        self.notices.append(("reply", entry))

    def add_error(self, entry):
        """``(identity, message, fatal)``: answered in order with refusals."""
        self.errors.append(entry)
        self.notices.append(("error", entry))

    def add_refused(self, entry):
        """``(client identity, [ids], message)``: a refused plan."""
        self.refused.append(entry)
        self.notices.append(("refused", entry))

    def send_data(self, source, target_address: str, data_id: int):
        targets = self.sends[source]
        ids = targets.get(target_address)
        if ids is None:
            targets[target_address] = [data_id]
        else:
            ids.append(data_id)

    def is_empty(self) -> bool:
        return not (self.compute or self.sends or self.uploads or self.cancel or self.steal
                    or self.remove or self.peers_gone
                    or self.finished or self.progressed or self.failed or self.data_errors or self.data_inline
                    or self.refused
                    or self.errors or self.replies)
