"""Journal compaction: the records that replay to a broker core's present state.

Used at every start (after the replay) and online when the journal outgrew what
is live (server.py): sessions, workers, the live tasks with the lineage their
data may need to be recomputed from, their outcomes, and the counters the
dropped history had advanced. Replaying them (restore.py) gives the same DAG.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import journal as jn
from .base import BUILTIN_TYPES
from . import taskstate as ts
from .model import Node

if TYPE_CHECKING:
    from .base import CoreBase


def compact_records(state: CoreBase) -> list[list[Any]]:
    """Records that replay to the present state, and no more: sessions, workers,
    the live tasks with the lineage they may need, and their outcomes."""
    records: list[list[Any]] = []
    named_types = set(BUILTIN_TYPES)
    for worker in [*state.detached_workers.values(), *state.workers.values()]:
        records.append([jn.WORKER, worker.worker_id, worker.address, worker.cpus,
                        sorted(worker.task_types), worker.hostname])
        named_types.update(worker.task_types)
    for number in state.sessions:
        records.append([jn.CLIENT, number, state.session_tokens[number]])
    order = _lineage_order(state.tasks.values())
    by_client: dict[int, list[Node]] = {}
    for node in order:
        by_client.setdefault(node.client.number, []).append(node)
    for number, nodes in by_client.items():
        symbols: dict[str, int] = {}
        labels: dict[str | None, int] = {}
        entries = []
        for node in nodes:
            type_index = symbols.setdefault(node.type, len(symbols))
            label = -1 if node.label is None else labels.setdefault(node.label, len(labels))
            checkpoint = node.extra.checkpoint_path if node.extra is not None else None
            entries.append([node.id, type_index, node.config, [i.id for i in node.inputs],
                            node.n_cpus, node.is_result and node.id in state.tasks, label,
                            checkpoint])
        records.append([jn.SUBMIT, number, list(symbols), list(labels), entries, False,
                        False])
    finished: list[int] = []
    failed: list[list[Any]] = []
    live = state.tasks
    for node in order:
        error = node.extra.error if node.extra is not None else None
        if error is not None:
            # The failed tasks a client still holds, each with its own error (the
            # failure of a task that one depends on, or its own), consumers first:
            # replayed, each fails with the error its client was told. Failed tasks
            # no longer held need no record: only failed tasks depend on them.
            if node.id in live:
                failed.append([jn.FAILED, node.id, error])
        elif node.state == ts.FINISHED:
            assert node.holders  # FINISHED (taskstate.py)
            finished += (node.id, node.holders[0].worker_id, node.size, node.length)
        elif node.state == ts.RELEASED:  # lineage only: finished, then forgotten
            finished += (node.id, 0, node.size, node.length)
    if finished:
        records.append([jn.FINISHED, finished])
    records.extend(reversed(failed))
    records.append([jn.COUNTERS, state.next_worker_id, state.next_client_number,
                    [[number, client.n_done, client.n_total, client.next_broker_id,
                      client.accepted_until]
                     for number, client in state.sessions.items()],
                    sorted(state.provided_types - named_types)])   # (of workers gone)
    return records


def _lineage_order(live: Iterable[Node]) -> list[Node]:
    """Live nodes and every ancestor (their lineage), inputs before consumers."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in live:
        if root.id in seen:
            continue
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node.id in seen:
                continue
            seen.add(node.id)
            stack.append((node, True))
            stack.extend((inp, False) for inp in node.inputs if inp.id not in seen)
    return order
