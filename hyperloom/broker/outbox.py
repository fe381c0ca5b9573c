"""What the broker core wants sent, and its encoding into messages.

The core never touches sockets: handlers append to an ``Outbox``, tests read
it, and ``messages()`` turns it into frames (the server sends them, the
in-process test tier delivers them). Batches are per destination, so one
flush sends one message per peer and message type however many tasks moved.
"""

from __future__ import annotations

from collections import defaultdict

from .. import protocol


class Outbox:
    """What the broker core wants sent; the server turns it into messages.

    The core never touches sockets: handlers append here, tests read it.
    Batches are per destination, so one flush sends one message per peer and
    message type however many tasks are involved.
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self.compute = defaultdict(list)       # WorkerRecord -> [task entries]
        self.sends = defaultdict(dict)         # WorkerRecord -> {target address: [ids]}
        self.uploads = defaultdict(list)       # (WorkerRecord, client identity, request) -> [ids]
        self.cancel = defaultdict(list)        # WorkerRecord -> [ids]
        self.steal = defaultdict(list)         # WorkerRecord -> [ids]
        self.remove = defaultdict(list)        # WorkerRecord -> [ids]
        self.finished = defaultdict(list)      # ClientRecord -> [ids]
        self.progressed = set()                # ClientRecord whose n_done changed
        self.failed = defaultdict(list)        # ClientRecord -> [[id, failed id, worker, msg]]
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
                    or self.remove or self.finished or self.progressed or self.failed
                    or self.data_errors or self.data_inline or self.refused or self.errors
                    or self.replies)


def messages(out: Outbox):
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
    yield from _worker_messages(out, encode)
    yield from _client_messages(out, encode)


def _worker_messages(out: Outbox, encode):
    for worker, entries in out.compute.items():
        yield worker.identity, [encode(protocol.COMPUTE_TASKS, entries)]
    for worker, targets in out.sends.items():
        yield worker.identity, [encode(protocol.SEND_DATA,
                                       [[address, ids] for address, ids in targets.items()])]
    for (worker, client_identity, request), ids in out.uploads.items():
        yield worker.identity, [encode(protocol.UPLOAD, client_identity, request, ids)]
    for worker, ids in out.cancel.items():
        yield worker.identity, [encode(protocol.CANCEL_TASKS, ids)]
    for worker, ids in out.steal.items():
        yield worker.identity, [encode(protocol.STEAL_TASKS, ids)]
    for worker, ids in out.remove.items():
        yield worker.identity, [encode(protocol.REMOVE_DATA, ids)]


def _client_messages(out: Outbox, encode):
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
    for (client_identity, request), entries in out.data_errors.items():
        yield client_identity, [encode(protocol.DATA, request, entries)]
    for (client_identity, request), inline in out.data_inline.items():
        frames = []
        entries = []
        for task_id, meta, object_frames in inline:
            entries.append([task_id, meta])
            frames.extend(object_frames)
        yield client_identity, [encode(protocol.DATA, request, entries), *frames]
