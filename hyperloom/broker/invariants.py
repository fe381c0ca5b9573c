"""``check_invariants``: the broker's bookkeeping agrees with itself.

Tests call it after every step (tests/inprocess runs it after each message);
it is O(tasks), never called by the broker itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import taskstate as ts
from .model import Node, WorkerRecord, consumers_of

if TYPE_CHECKING:
    from .base import CoreBase


def check_invariants(state: CoreBase) -> None:
    counts = [0] * len(ts.TaskState)
    # ghosts of workers named in a journal hold data until they re-attach (restore.py)
    live_workers = {**state.workers,
                    **{g.identity: g for g in getattr(state, "detached_workers", {}).values()}}
    for task_id, node in state.tasks.items():
        assert node.id == task_id
        assert node.state != ts.RELEASED, f"{node} is released but still in the DAG"
        counts[node.state] += 1
        assert node.refs > 0, f"{node} is held with no references"
        _check_state_data(node, live_workers)
        live = sum(1 for c in consumers_of(node) if c.state in ts.PENDING)
        assert node.refs == live + node.is_result, f"{node}: refs {node.refs} != {live}"
    assert counts[:ts.RELEASED] == state.state_counts[:ts.RELEASED], \
        (counts, state.state_counts)
    for worker in state.workers.values():
        assert worker.cpus_used == sum(n.n_cpus for n in worker.assigned)
        assert worker.n_light == sum(1 for n in worker.assigned if not n.n_cpus)
        assert all(n.state == ts.ASSIGNED and n.worker is worker for n in worker.assigned)
    for client in state.clients.values():
        assert 0 <= client.n_done <= client.n_total, \
            f"client {client.number}: {client.n_done} done of {client.n_total}"
    assert set(state.peers) == set(state.workers) | set(state.clients)
    for worker in state.held_removals:
        assert state.workers.get(worker.identity) is worker, f"removals held for a gone {worker}"
    _check_removals(state)
    _check_ready_queued_once(state)


def _check_removals(state: CoreBase) -> None:
    """No RemoveData waiting to go out deletes data the broker counts on: it would
    arrive after the orders sent meanwhile that gave the worker that data again."""
    for pending in (state.held_removals, state.outbox.remove):
        for worker, ids in pending.items():
            for task_id in ids:
                node = state.tasks.get(task_id)
                assert node is None or not node.holders or worker not in node.holders, \
                    f"{node} is held by {worker}, and its removal there waits to go out"


def _check_ready_queued_once(state: CoreBase) -> None:
    """Every READY task waits in exactly one place: the ready queue, the dynamic
    nodes to expand, or the unplaceable ones. Entries of tasks that left READY may
    linger (the scheduler skips them); a READY task queued twice would be placed twice
    in one round."""
    seen: dict[int, int] = {}
    for node in (*state.ready, *state.dynamic_ready, *state.unplaceable):
        if node.state == ts.READY:
            seen[node.id] = seen.get(node.id, 0) + 1
    for task_id, node in state.tasks.items():
        if node.state == ts.READY:
            assert seen.get(task_id) == 1, \
                f"{node} is READY and queued {seen.get(task_id, 0)} times"


def _check_state_data(node: Node, live_workers: dict[bytes, WorkerRecord]) -> None:
    """The data each state owns (taskstate.py) is there, and only there."""
    state = node.state
    if state == ts.ASSIGNED:
        worker = node.worker
        assert worker is not None and live_workers.get(worker.identity) is worker, \
            f"{node} is assigned to a worker that is not live"
        assert node in worker.assigned
    else:
        assert node.worker is None, f"{node} has a worker but is not assigned"
    if state == ts.FINISHED:
        assert node.holders, f"{node} finished but held nowhere"
    if node.holders:
        for holder in node.holders:
            assert live_workers.get(holder.identity) is holder, \
                f"{node} is held by {holder}, which is not a live worker"
    if state == ts.WAITING or state == ts.READY:
        unfinished = sum(1 for inp in node.inputs if inp.state != ts.FINISHED)
        assert node.remaining == unfinished, \
            f"{node} counts {node.remaining} unfinished inputs, there are {unfinished}"
        assert (state == ts.WAITING) == (unfinished > 0), f"{node}: {unfinished} unfinished"
    if state == ts.FAILED:
        assert node.extra is not None and node.extra.error is not None
