"""Task lifecycle and reference counts: the one ``transition``, forgetting, placement.

A mixin of ``BrokerState`` (see state.py for why mixins). Reference counting:
``node.refs`` = unfinished consumers + 1 while the client holds a future. When
it drops to 0 the node is forgotten: its data is removed from every worker
holding it (if finished) or its execution canceled (if not).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import CoreBase
from . import taskstate as ts
from .dynamic import DYNAMIC_TYPES
from .model import Node, WorkerRecord, consumers_of
from .scheduler import Placement, ReadyQueue, choose_steals, schedule

# RemoveData waits this long, gathering removals into one message per worker. Sent at
# once, it woke a worker just as the client that caused it (a gather) was woken by
# its answer: on a one-task round trip with 2 cores, that cost ~10 % (benchmarks/README.md,
# "Round trip"). Dask batches its worker messages by the same 2 ms.
REMOVE_DELAY = 0.002


class Lifecycle(CoreBase):
    # ------------------------------------------------------------ states

    def transition(self, node: Node, new_state: int) -> None:
        old = node.state
        if new_state not in ts.ALLOWED[old]:
            raise ts.IllegalTransition(
                f"task {node.id}: {ts.NAMES[old]} -> {ts.NAMES[new_state]} is not allowed")
        moves = self._moves
        moves[old] -= 1
        moves[new_state] += 1
        node.state = new_state
        # Progress counts each task once: one that must run again (recomputed after a
        # worker loss) is not done any more until it finishes again.
        if (new_state >= ts.FINISHED) != (old >= ts.FINISHED):
            client = node.client
            client.n_done += 1 if new_state >= ts.FINISHED else -1
            self.outbox.progressed.add(client)
            if self.feed.active:
                self.feed.on_task_ended(node, new_state)

    @property
    def state_counts(self) -> list[int]:
        """Tasks per state, indexed by TaskState (RELEASED: forgotten so far).

        ``transition`` alone moves counts; a node enters the DAG WAITING without
        one, so WAITING is what the other states of ``tasks`` leave over.
        """
        counts = list(self._moves)
        counts[ts.WAITING] = len(self.tasks) - sum(counts[ts.READY:ts.RELEASED])
        return counts

    def _forget(self, first: Node) -> None:
        """Refs reached 0: drop the node, its data, or its pending execution.

        Canceling a pending node releases its inputs, which may cascade up a
        long chain: iterative, so a million-task chain needs no deep stack.
        """
        stack = [first]
        tasks = self.tasks
        while stack:
            node = stack.pop()
            state = node.state
            if state == ts.FINISHED:
                self._remove_data(node)
            elif state in ts.PENDING:
                self._cancel(node)
                for inp in node.inputs:
                    inp.refs -= 1
                    if inp.refs == 0 and inp.id in tasks:
                        stack.append(inp)
            self.transition(node, ts.RELEASED)
            del tasks[node.id]

    def _remove_data(self, node: Node) -> None:
        holders = node.holders
        if holders:
            size = node.size
            remove = self.outbox.remove
            ghosts = self.detached_workers   # after a restart: workers not back yet
            for worker in holders:
                worker.bytes_held -= size
                if ghosts and ghosts.get(worker.worker_id) is worker:
                    continue  # nobody to tell: back, it says it holds this and is told then
                remove[worker].append(node.id)
                if worker.incoming:
                    worker.incoming.pop(node.id, None)
            node.holders = None

    def hold_removals(self, now: float) -> None:
        """Move this round's removals into the held ones; let the held ones go out once
        the oldest has waited REMOVE_DELAY (``due_at`` tells the loop when)."""
        out = self.outbox
        held = self.held_removals
        if out.remove:
            if not held:
                self.removals_due = now + REMOVE_DELAY
            for worker, ids in out.remove.items():
                held.setdefault(worker, []).extend(ids)
            out.remove.clear()
        if held and now >= self.removals_due:
            self.release_held_removals()

    def due_at(self) -> float | None:
        """When the core has something to send without any message coming in (held
        removals, an Accepted), on the clock of ``now``; None if nothing waits."""
        due = self.removals_due if self.held_removals else None
        for accepted_due in self.accepted_owed.values():
            if accepted_due is not None and (due is None or accepted_due < due):
                due = accepted_due
        return due

    def release_held_removals(self) -> None:
        """Send what is held now (the broker is stopping)."""
        self.outbox.remove.update(self.held_removals)
        self.held_removals.clear()

    def _cancel(self, node: Node) -> None:
        if node.state == ts.ASSIGNED:
            worker = node.worker
            assert worker is not None  # ASSIGNED (taskstate.py)
            self._unassign(node, worker)
            worker.canceled.add(node.id)
            self.outbox.cancel[worker].append(node.id)
        self.transition(node, ts.CANCELED)

    def drop_inputs(self, inputs: Iterable[Node]) -> None:
        """A task will never consume ``inputs``: release its references to them."""
        for inp in inputs:
            inp.refs -= 1
            if inp.refs == 0 and inp.id in self.tasks:
                self._forget(inp)

    def release_node(self, node: Node) -> None:
        """Nobody refers to ``node`` any more (its readers were rewired)."""
        if node.refs == 0 and node.id in self.tasks:
            self._forget(node)

    def _unassign(self, node: Node, worker: WorkerRecord) -> None:
        worker.assigned.pop(node, None)
        if worker.stealing:
            worker.stealing.discard(node.id)
        if node.n_cpus:
            worker.cpus_used -= node.n_cpus
        else:
            worker.n_light -= 1
        node.worker = None

    def _fail(self, root: Node, error: list[Any]) -> None:
        """``root`` failed: it and everything waiting on it fail with ``error``."""
        self.feed.on_failed(root, error)
        if root.state in ts.PENDING:
            self.journal.failed(root.id, error)
        stack = [root]
        while stack:
            node = stack.pop()
            if node.state not in ts.PENDING:
                continue
            self.transition(node, ts.FAILED)
            node.get_extra().error = error
            self.drop_inputs(node.inputs)
            if node.is_result:
                self.outbox.failed[node.client].append([node.id, *error])
                for client, request, release in self._take_fetches(node.id):
                    self._serve_fetch(node, client, request, release)
            stack.extend(consumers_of(node))
            if node.refs == 0 and node.id in self.tasks:
                self._forget(node)

    # ------------------------------------------------------------ ready queue and placement

    def add_ready(self, nodes: Iterable[Node]) -> None:
        """READY nodes join the queue; dynamic ones wait for the expansion pass."""
        light, core = self.ready.light, self.ready.core
        for node in nodes:
            if node.type in DYNAMIC_TYPES:
                self.dynamic_ready.append(node)
            else:
                (core if node.n_cpus else light).append(node)

    def make_ready(self, node: Node) -> None:
        self.transition(node, ts.READY)
        self.add_ready((node,))

    def requeue_ready(self) -> None:
        """Rebuild the queues of READY tasks: each READY task in one of them, once.

        A task normally leaves READY by being placed, which takes it off the queue;
        one that leaves otherwise (back to WAITING when an input's data is lost,
        adopted by a re-attached worker, canceled and later revived to recompute
        lost data) leaves its entry behind. The scheduler skips such an entry while
        the task is not READY, but once the task was READY again the old entry came
        alive beside the new one: both were placed in one round and the broker
        crashed (``assigned -> assigned``). Called after those rare events;
        O(queued tasks).
        """
        queued: set[Node] = set()

        def once(nodes: Iterable[Node]) -> list[Node]:
            kept = []
            for node in nodes:
                if node.state == ts.READY and node not in queued:
                    queued.add(node)
                    kept.append(node)
            return kept

        self.ready = ReadyQueue(once(self.ready))
        self.dynamic_ready = once(self.dynamic_ready)
        self.unplaceable = once(self.unplaceable)

    def schedule_round(self) -> None:
        """Ask the scheduler where ready tasks go and apply its answer; then steal."""
        workers = [w for w in self.workers.values() if not w.retiring]
        if not workers:
            return
        ready = self.ready
        if ready:
            self.apply_placement(schedule(ready, workers))
        if not ready:
            self.apply_steals(choose_steals(workers, self.tasks))

    def apply_placement(self, placement: Placement) -> None:
        if placement.deferred:
            self.ready.put_back(placement.deferred)
        self.unplaceable.extend(placement.unplaceable)
        transition = self.transition
        compute = self.outbox.compute
        deliver = self.deliver
        for node, worker in zip(placement.nodes, placement.workers):
            transition(node, ts.ASSIGNED)
            node.worker = worker
            worker.assigned[node] = None
            n_cpus = node.n_cpus
            if n_cpus:
                worker.cpus_used += n_cpus
            else:
                worker.n_light += 1
            input_ids = []
            for inp in node.inputs:
                input_ids.append(inp.id)
                if worker not in inp.holders:  # type: ignore[operator]  # FINISHED: a list
                    deliver(inp, worker)
            extra = node.extra
            checkpoint = extra.checkpoint_path if extra is not None else None
            compute[worker].append([node.id, node.type, node.config, input_ids, n_cpus,
                                    node.label, node.is_result, checkpoint])

    def apply_steals(self, steals: Iterable[tuple[WorkerRecord, Node]]) -> None:
        steal = self.outbox.steal
        for worker, node in steals:
            worker.stealing.add(node.id)
            steal[worker].append(node.id)

    def add_holder(self, node: Node, worker: WorkerRecord) -> None:
        """``worker`` holds a copy of FINISHED ``node``'s data too (it computed it again,
        re-attached with it, or a ghost is said to)."""
        holders = node.holders
        assert holders is not None  # FINISHED (taskstate.py)
        if worker not in holders:
            holders.append(worker)
            worker.bytes_held += node.size

    def deliver(self, node: Node, worker: WorkerRecord) -> None:
        """Order a holder of ``node``'s data to push it to ``worker``."""
        holders = node.holders
        assert holders, f"{node} is delivered but held nowhere"
        if worker in holders:
            return
        source = holders[0]
        self.outbox.send_data(source, worker.address, node.id)
        holders.append(worker)
        worker.incoming[node.id] = source
        size = node.size
        worker.bytes_held += size
        worker.bytes_received += size
        source.bytes_sent += size
