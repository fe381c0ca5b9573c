"""What the broker core wants sent, and its encoding into messages.

The core never touches sockets: handlers append to an ``Outbox``, tests read
it, and ``messages()`` turns it into frames (the server sends them, the
in-process test tier delivers them). Batches are per destination, so one
flush sends one message per peer and message type however many tasks moved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from .. import protocol
from .model import ClientRecord, WorkerRecord

ErrorNotice = tuple[bytes, str, bool]           # (identity, message, fatal)
Refusal = tuple[bytes, list[int], str]          # (client identity, result ids, message)
Message = tuple[bytes, list[Any]]               # (identity, frames after it)


class Outbox:
    """What the broker core wants sent; the server turns it into messages.

    The core never touches sockets: handlers append here, tests read it.
    Batches are per destination, so one flush sends one message per peer and
    message type however many tasks are involved.
    """

    def __init__(self) -> None:
        self._create()

    def clear(self) -> None:
        """Empty every batch, in place: new containers cost ~6 µs, twice a round trip."""
        for batch in self._batches:
            if batch:
                batch.clear()
        self.peers_gone_to.clear()   # (reassigned each round: not among the batches)

    def _create(self) -> None:
        # per worker: ComputeTask entries; {target address: ids} to push
        self.compute: defaultdict[WorkerRecord, list[list[Any]]] = defaultdict(list)
        self.sends: defaultdict[WorkerRecord, dict[str, list[int]]] = defaultdict(dict)
        # (holder, client identity, request) -> ids to upload
        # (holder, client, request, lane) -> ids
        self.uploads: defaultdict[tuple[WorkerRecord, bytes, int, bool], list[int]] = \
            defaultdict(list)
        self.cancel: defaultdict[WorkerRecord, list[int]] = defaultdict(list)
        self.steal: defaultdict[WorkerRecord, list[int]] = defaultdict(list)
        self.remove: defaultdict[WorkerRecord, list[int]] = defaultdict(list)
        # data addresses of workers gone, told to every worker in peers_gone_to (PeersGone)
        self.peers_gone: list[str] = []
        self.peers_gone_to: list[WorkerRecord] = []
        self.finished: defaultdict[ClientRecord, list[int]] = defaultdict(list)
        self.progressed: set[ClientRecord] = set()   # clients whose n_done changed
        # per client: TaskFailure entries
        self.failed: defaultdict[ClientRecord, list[list[Any]]] = defaultdict(list)
        # (client identity, request) -> [[id, None, error]] / [(id, meta, frames)]
        self.data_errors: defaultdict[tuple[bytes, int], list[list[Any]]] = defaultdict(list)
        self.data_inline: defaultdict[tuple[bytes, int], list[tuple[int, Any, Any]]] = \
            defaultdict(list)
        # per client: (id, meta, frames) of small results it gets as they finish (Results)
        self.pushed: defaultdict[ClientRecord, list[tuple[int, Any, Any]]] = defaultdict(list)
        # per client: its Accepted.next_id (a broker with a journal: plans journaled)
        self.accepted: dict[ClientRecord, int] = {}
        self.refused: list[Refusal] = []       # (client identity, [ids], message)
        self.errors: list[ErrorNotice] = []    # (identity, message, fatal)
        # replies, errors, refusals: in the order they arose
        self.notices: list[tuple[str, Any]] = []
        self.replies: list[tuple[Any, ...]] = []  # (identity, header frame, *payload frames)
        self.shutdown: list[WorkerRecord] = []  # told Shutdown after every other message
        # every batch above, for clear() and is_empty()
        self._batches: tuple[Any, ...] = (
            self.compute, self.sends, self.uploads, self.cancel, self.steal, self.remove,
            self.peers_gone, self.finished, self.progressed, self.failed, self.data_errors,
            self.data_inline, self.pushed, self.accepted, self.refused, self.errors, self.notices,
            self.replies, self.shutdown)

    def add_reply(self, entry: tuple[Any, ...]) -> None:
        """``(identity, header frame, *payload frames)``: an answer (Welcome, Stats, a
        relayed Uploaded as Data, ...)."""
        self.replies.append(entry)
        self.notices.append(("reply", entry))

    def add_error(self, entry: ErrorNotice) -> None:
        """``(identity, message, fatal)``: answered in order with refusals."""
        self.errors.append(entry)
        self.notices.append(("error", entry))

    def add_refused(self, entry: Refusal) -> None:
        """``(client identity, [ids], message)``: a refused plan."""
        self.refused.append(entry)
        self.notices.append(("refused", entry))

    def send_data(self, source: WorkerRecord, target_address: str, data_id: int) -> None:
        targets = self.sends[source]
        ids = targets.get(target_address)
        if ids is None:
            targets[target_address] = [data_id]
        else:
            ids.append(data_id)

    def is_empty(self) -> bool:
        return not any(self._batches)   # (peers_gone_to only names who gets peers_gone)


def messages(out: Outbox) -> Iterator[Message]:
    """``(identity, frames)`` for every message ``out`` holds, in sending order.

    Notices (replies, errors, refusals) go first, in the order they arose, so
    answers keep request order. Pure encoding: every decision (what to send,
    throttled progress) was made by the core before.
    """
    encode = protocol.encode
    for kind, entry in out.notices:
        if kind == "reply":
            yield entry[0], list(entry[1:])
        elif kind == "error":
            identity, message, fatal = entry
            yield identity, [encode(protocol.ERROR, message, fatal)]
        else:
            client_identity, ids, message = entry
            yield client_identity, [encode(protocol.SUBMIT_REFUSED, ids, message)]
    if out.peers_gone:  # before SendData: a worker back at that address gets a new channel
        header = encode(protocol.PEERS_GONE, out.peers_gone)
        for worker in out.peers_gone_to:
            yield worker.identity, [header]
    yield from _worker_messages(out, encode)
    # Before the housekeeping below: a result the client waits for is not held up
    # behind sends it does not need (each ZeroMQ send costs tens of µs here).
    yield from _client_messages(out, encode)
    yield from _worker_housekeeping(out, encode)
    for worker in out.shutdown:   # last: what it was told to send before goes first
        yield worker.identity, [encode(protocol.SHUTDOWN)]


def _worker_messages(out: Outbox, encode: Callable[..., bytes]) -> Iterator[Message]:
    for worker, entries in out.compute.items():
        yield worker.identity, [encode(protocol.COMPUTE_TASKS, entries)]
    for worker, targets in out.sends.items():
        if not targets:
            continue  # every push in it was to a worker that left
        yield worker.identity, [encode(protocol.SEND_DATA,
                                       [[address, ids] for address, ids in targets.items()])]
    for (worker, client_identity, request, lane), ids in out.uploads.items():
        yield worker.identity, [encode(protocol.UPLOAD, client_identity, request, ids, lane)]


def _worker_housekeeping(out: Outbox, encode: Callable[..., bytes]) -> Iterator[Message]:
    for worker, ids in out.cancel.items():
        yield worker.identity, [encode(protocol.CANCEL_TASKS, ids)]
    for worker, ids in out.steal.items():
        yield worker.identity, [encode(protocol.STEAL_TASKS, ids)]
    for worker, ids in out.remove.items():
        yield worker.identity, [encode(protocol.REMOVE_DATA, ids)]


def _client_messages(out: Outbox, encode: Callable[..., bytes]) -> Iterator[Message]:
    # Values first: the client waiting in gather returns on them, and each send
    # before them delays it by its cost (~10 µs).
    for client, pushed in out.pushed.items():
        entries, frames = _entries_and_frames(pushed)
        yield client.identity, [encode(protocol.RESULTS, entries, client.n_done,
                                       client.n_total), *frames]
    for (client_identity, request), inline in out.data_inline.items():
        entries, frames = _entries_and_frames(inline)
        yield client_identity, [encode(protocol.DATA, request, entries, None), *frames]
    for client, next_id in out.accepted.items():
        yield client.identity, [encode(protocol.ACCEPTED, next_id)]
    finished = out.finished
    for client in out.progressed:  # progress the core chose to send (with results or not)
        ids = finished.pop(client, None)
        yield client.identity, [encode(protocol.TASKS_FINISHED, ids or [], client.n_done,
                                       client.n_total)]
    for client, ids in finished.items():
        yield client.identity, [encode(protocol.TASKS_FINISHED, ids, client.n_done,
                                       client.n_total)]
    for client, failures in out.failed.items():
        yield client.identity, [encode(protocol.TASKS_FAILED, failures)]
    # Errors after TasksFailed: the failure it reports explains more than the fetch's.
    for (client_identity, request), entries in out.data_errors.items():
        yield client_identity, [encode(protocol.DATA, request, entries, None)]


def _entries_and_frames(values: list[tuple[int, Any, Any]]) -> tuple[list[Any], list[Any]]:
    """DataEntry list and payload frames of ``(id, meta, frames)`` values."""
    frames: list[Any] = []
    entries = []
    for task_id, meta, object_frames in values:
        entries.append([task_id, meta])
        frames.extend(object_frames)
    return entries, frames
