"""The client-side graph: walk the submitted tasks, validate, serialise.

Only tasks reachable from the submitted ones are included, inputs before
consumers (post-order), each Task object once. Errors name the offending
task: a cycle, an input that is neither a Task nor an active Future of this
client, a released Future.
"""

from __future__ import annotations

from typing import Any

from ..errors import LoomError
from .future import Future
from .task import Task


class PlanBuilder:
    """Accumulates one submit: the ``Submit`` message's symbols, labels and entries."""

    def __init__(self, client, first_id: int):
        self.client = client
        self.next_id = first_id
        self.ids: dict[Task, int] = {}     # Task -> global id (Task hashes by identity)
        # [id, type index, config, input ids, n_cpus, is result, label index, checkpoint path]
        self.entries: list[list[Any]] = []
        self.symbols: dict[str, int] = {}  # symbol -> index
        self.labels: dict[object, int] = {}  # label -> index (sent as str(label))

    def add(self, root: Task) -> int:
        """Add ``root`` and everything it needs; return its id."""
        ids = self.ids
        if root in ids:
            return ids[root]
        if not isinstance(root, Task):
            raise LoomError(f"Only Task objects can be submitted, got {root!r}")
        open_tasks = set()       # the current path of the walk: meeting one again is a cycle
        stack = [root]
        while stack:
            task = stack[-1]
            if task in ids:
                stack.pop()
            elif task in open_tasks:
                open_tasks.discard(task)
                stack.pop()
                self._emit(task)
            else:
                open_tasks.add(task)
                self._push_inputs(task, stack, open_tasks)
        return ids[root]

    def _push_inputs(self, task, stack, open_tasks):
        ids = self.ids
        for obj in reversed(task.inputs):
            if type(obj) is Future or isinstance(obj, Future):
                self._check_future(obj, task)
            elif isinstance(obj, Task):
                if obj in open_tasks:
                    raise LoomError(f"The plan is not a DAG: {obj!r} is its own input "
                                    f"(a cycle through {task!r})")
                if obj not in ids:
                    stack.append(obj)
            else:
                raise LoomError(f"Invalid object {obj!r} in plan (an input of {task!r})")

    def _check_future(self, future, consumer):
        if future.client is not self.client:
            raise LoomError(f"{future!r} (an input of {consumer!r}) belongs to another client")
        if future.failed():
            raise LoomError(f"Failed future {future!r} used in plan (an input of "
                            f"{consumer!r}): {future.error}")
        if not future.active():
            raise LoomError(f"Released future {future!r} used in plan "
                            f"(an input of {consumer!r})")

    def _emit(self, task):
        task.validate()
        task_id = self.next_id
        self.next_id += 1
        self.ids[task] = task_id
        symbols = self.symbols
        type_index = symbols.get(task.task_type)
        if type_index is None:
            type_index = symbols[task.task_type] = len(symbols)
        label = task.label
        if label is None:
            label_index = -1
        else:
            label_index = self.labels.get(label)
            if label_index is None:
                label_index = self.labels[label] = len(self.labels)
        ids = self.ids
        input_ids = [obj._id if isinstance(obj, Future) else ids[obj] for obj in task.inputs]
        config = task.config
        if type(config) is not bytes:
            config = config.encode() if isinstance(config, str) else bytes(config)
        request = task.resource_request
        n_cpus = request.n_cpus if request is not None else 0
        self.entries.append([task_id, type_index, config, input_ids, n_cpus, False,
                             label_index, task.checkpoint_path])

    def mark_result(self, task_id: int):
        # Entries are in id order from the first id of this submit.
        first = self.entries[0][0]
        self.entries[task_id - first][5] = True

    def symbol_list(self):
        return list(self.symbols)

    def label_list(self):
        return [str(label) for label in self.labels]

    def chunks(self, size: int):
        """Split into Submit chunks; each names only the symbols and labels it adds."""
        symbols, labels = self.symbol_list(), self.label_list()
        entries = self.entries
        sent_symbols = sent_labels = 0
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            need_symbols = max(sent_symbols, max(e[1] for e in chunk) + 1)
            need_labels = max(sent_labels, max(e[6] for e in chunk) + 1)
            yield Chunk(symbols[sent_symbols:need_symbols], labels[sent_labels:need_labels],
                        chunk, start + size < len(entries))
            sent_symbols, sent_labels = need_symbols, need_labels


class Chunk(tuple):
    """``(symbols, labels, entries)`` of one Submit message, and whether more follow."""

    def __new__(cls, symbols, labels, entries, more):
        chunk = super().__new__(cls, (symbols, labels, entries))
        chunk.more = more
        return chunk
