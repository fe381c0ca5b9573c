"""Dynamic slice and get: a pass of the broker state that expands the plan when the
size of a data object is known. ``BrokerState.on_drained`` runs it before each
scheduling round, over the dslice/dget tasks that became READY.

``dslice(x)`` / ``dget(x)`` (D) with its one consumer C: once x is finished
the broker creates, per piece k, a ``slice``/``get`` task P_k on x and a copy
C_k of C reading P_k where C read D. Every consumer of C reads C_0 ... C_k-1
in C's place (so ``array_make((C,))`` becomes ``array_make((C_0, ..., C_k-1))``).
If the client holds a future for C itself, C becomes ``array_make`` of the
copies. Pieces (the original's rule): dslice makes pieces of
``round(length / (total cores * 4))`` elements, at least 1; dget one per
element. A length of 0 makes no pieces (an empty list where C was).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .base import CoreBase
from .. import protocol
from . import taskstate as ts
from .model import ClientRecord, Node, add_consumer, consumers_of, remove_consumer

DYNAMIC_TYPES = frozenset({protocol.TASK_DSLICE, protocol.TASK_DGET})


def piece_configs(task_type: str, length: int, total_cpus: int) -> list[tuple[str, bytes]]:
    """``[(task type, config)]`` of the pieces for an object of ``length`` elements."""
    if task_type == protocol.TASK_DGET:
        return [(protocol.TASK_GET, struct.pack("<Q", i)) for i in range(length)]
    size = max(1, round(length / (max(1, total_cpus) * 4)))
    return [(protocol.TASK_SLICE, struct.pack("<QQ", start, min(start + size, length)))
            for start in range(0, length, size)]


class DynamicPass(CoreBase):
    """A mixin of ``BrokerState``: the expansion pass and the nodes it creates."""

    def expand_dynamic(self) -> None:
        """Expand every dslice/dget that became READY (pieces may be dynamic again)."""
        while self.dynamic_ready:
            nodes, self.dynamic_ready = self.dynamic_ready, []
            for node in nodes:
                if node.state == ts.READY:
                    _expand(self, node)

    def new_node(self, client: ClientRecord, task_type: str, config: bytes,
                 inputs: tuple[Node, ...], n_cpus: int, label: str | None) -> Node:
        """A task the broker creates for ``client`` (ids from its reserved range)."""
        task_id = (client.number << protocol.CLIENT_SHIFT) + protocol.BROKER_ID_BASE \
            + client.next_broker_id
        client.next_broker_id += 1
        node = Node(task_id, client, task_type, config, inputs, n_cpus, label)
        self.tasks[task_id] = node  # enters WAITING (see state_counts)
        client.n_total += 1
        if self.feed.active:
            self.feed.on_tasks_added((node,))
        self.recorder.tasks_submitted([(task_id, task_type, label, [i.id for i in inputs])])
        return node

    def link(self, node: Node) -> None:
        """Register ``node`` as a consumer of its inputs; READY if they are all finished."""
        remaining = 0
        for inp in node.inputs:
            add_consumer(inp, node)
            inp.refs += 1
            if inp.state != ts.FINISHED:
                remaining += 1
        node.remaining = remaining
        if remaining == 0:
            self.make_ready(node)


def _expand(state: CoreBase, dynamic: Node, total_cpus: int | None = None) -> None:
    """Replace READY ``dynamic`` and its consumer by per-piece copies (as many as the
    cores now, or ``total_cpus`` when a journal replays an expansion)."""
    consumers = [c for c in consumers_of(dynamic) if c.state == ts.WAITING]
    if dynamic.is_result or len(consumers) != 1 or consumers[0].inputs.count(dynamic) != 1:
        state._fail(dynamic, [dynamic.id, "broker",
                              f"{dynamic.type} must have exactly one consumer, which reads "
                              f"it once, and must not be submitted itself"])
        return
    consumer = consumers[0]
    source = dynamic.inputs[0]
    if total_cpus is None:
        total_cpus = sum(worker.cpus for worker in state.workers.values())
    state.journal.expanded(dynamic.id, total_cpus)  # the pieces depend on it: replayed alike
    copies = []
    for piece_type, config in piece_configs(dynamic.type, source.length, total_cpus):
        piece = state.new_node(consumer.client, piece_type, config, (source,), 0, dynamic.label)
        inputs = tuple(piece if inp is dynamic else inp for inp in consumer.inputs)
        copies.append(state.new_node(consumer.client, consumer.type, consumer.config, inputs,
                                     consumer.n_cpus, consumer.label))
    for piece_and_copy in copies:
        for inp in piece_and_copy.inputs:
            if inp.state == ts.WAITING and inp.consumers is None:
                state.link(inp)  # the new piece: reads the finished source
        state.link(piece_and_copy)
    _rewire_consumers(state, consumer, copies)
    if consumer.is_result:
        _become_array_of(state, consumer, copies)
    else:
        state.release_node(consumer)


def _rewire_consumers(state: CoreBase, consumer: Node, copies: Sequence[Node]) -> None:
    """Each consumer of ``consumer`` reads the copies in its place."""
    for reader in consumers_of(consumer):
        if reader.state != ts.WAITING:
            continue
        n_refs = reader.inputs.count(consumer)
        inputs: list[Node] = []
        for inp in reader.inputs:
            if inp is consumer:
                inputs.extend(copies)
            else:
                inputs.append(inp)
        reader.inputs = tuple(inputs)
        reader.remaining += n_refs * (len(copies) - 1)
        consumer.refs -= n_refs
        for copy in copies:
            copy.refs += n_refs
            add_consumer(copy, reader, n_refs)
        if reader.remaining == 0:  # no pieces at all
            state.make_ready(reader)
    consumer.consumers = None


def _become_array_of(state: CoreBase, consumer: Node, copies: Sequence[Node]) -> None:
    """A submitted consumer turns into ``array_make`` of its copies."""
    old_inputs = consumer.inputs
    consumer.type = protocol.TASK_ARRAY_MAKE
    consumer.config = b""
    consumer.n_cpus = 0
    consumer.inputs = tuple(copies)
    for copy in copies:
        copy.refs += 1
        add_consumer(copy, consumer)
    consumer.remaining = len(copies)
    for inp in set(old_inputs):  # it reads none of them now: no stale consumer edges
        remove_consumer(inp, consumer)
    state.drop_inputs(old_inputs)
    if not copies:
        state.make_ready(consumer)
