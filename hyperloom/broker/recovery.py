"""Loss and recovery: workers that leave, go silent, or die with tasks and data.

A mixin of ``BrokerState``. A lost worker's running and queued tasks go
back to be scheduled (a task lost ``max_task_losses`` times fails); data only
it held and still needed is recomputed from lineage (nodes keep their
inputs); copies it was still to send are ordered again from another holder;
fetches it was answering are served again.
"""

from __future__ import annotations

import logging

from .base import CoreBase
from . import taskstate as ts
from .model import Node, WorkerRecord, consumers_of

log = logging.getLogger("hyperloom.broker")


class Recovery(CoreBase):
    def expire_silent_workers(self, now: float) -> None:
        """Workers silent for longer than ``heartbeat_timeout`` are lost."""
        limit = self.heartbeat_timeout
        for worker in [w for w in self.workers.values() if now - w.last_seen > limit]:
            self.peer_gone(worker.identity,
                           f"no heartbeat for {now - worker.last_seen:.1f} s", now)

    def on_worker_lost(self, worker: WorkerRecord) -> None:
        """Reschedule what ran there; recompute lost data that is still needed."""
        del self.workers[worker.identity]
        self.peers.pop(worker.identity, None)
        self._drop_outbox_for(worker)
        self._report_peer_gone(worker)
        rerun = self._take_back_assigned(worker)
        undelivered = self._void_transfers_from(worker)
        lost, kept = self._drop_holder(worker)
        self.journal.worker_lost(worker.worker_id, kept)
        if lost:
            self._recompute_lost(lost)
        for node, target in undelivered:
            if node.holders and target.identity in self.workers:
                self.deliver(node, target)  # again, from a live holder
        self._redo_uploads(worker)
        for node in rerun:  # their inputs may have been lost too: count again
            if node.state == ts.WAITING:
                self._reacquire_inputs(node, refs=False)
        if lost:
            log.info("worker %d held %d needed objects; recomputing them",
                     worker.worker_id, len(lost))

    def _take_back_assigned(self, worker: WorkerRecord) -> list[Node]:
        """Tasks assigned to the lost worker wait again (or fail, lost too often)."""
        rerun = []
        for node in list(worker.assigned):
            self._unassign(node, worker)
            extra = node.get_extra()
            extra.losses += 1
            if extra.losses >= self.max_task_losses:
                self._fail(node, [node.id, worker.address,
                                  f"Worker lost while running this task "
                                  f"{extra.losses} times; giving up"])
            else:
                self.transition(node, ts.WAITING)
                rerun.append(node)
        return rerun

    def _drop_holder(self, worker: WorkerRecord) -> tuple[list[Node], list[int]]:
        """The worker's copies are gone. Returns the finished nodes held nowhere else,
        and ``kept``: [id, worker id, ...] of the others, each with a worker that still
        holds it, for the journal (its replay knows only the worker that computed a
        node, not where copies went: without ``kept`` it recomputed copied data)."""
        lost = []
        kept: list[int] = []
        for node in self.tasks.values():
            holders = node.holders
            if holders is not None and worker in holders:
                holders.remove(worker)
                if holders:
                    kept += (node.id, holders[0].worker_id)
                else:
                    node.holders = None
                    if node.state == ts.FINISHED:
                        lost.append(node)
        return lost, kept

    def _void_transfers_from(self, lost_worker: WorkerRecord) -> list[tuple[Node, WorkerRecord]]:
        """Copies the lost worker was still to send will never arrive."""
        undelivered = []
        for worker in self.workers.values():
            if not worker.incoming:
                continue
            for data_id in [d for d, s in worker.incoming.items() if s is lost_worker]:
                del worker.incoming[data_id]
                node = self.tasks.get(data_id)
                if node is not None and node.holders and worker in node.holders:
                    node.holders.remove(worker)
                    worker.bytes_held -= node.size
                    undelivered.append((node, worker))
        return undelivered

    def _redo_uploads(self, lost_worker: WorkerRecord) -> None:
        """Fetches the lost worker was to answer: serve them again (or after recompute)."""
        for (client_identity, request), ids in lost_worker.uploads.items():
            client = self.clients.get(client_identity)
            for task_id in ids:
                node = self.tasks.get(task_id)
                if client is None or node is None:
                    continue
                if node.state == ts.FINISHED:
                    self._serve_fetch(node, client, request, False)
                else:
                    self._park_fetch(task_id, (client, request, False))
        lost_worker.uploads.clear()

    def _report_peer_gone(self, worker: WorkerRecord) -> None:
        """The other workers close their data channel to it (PeersGone), unless it came
        back at the same address first (re-registered before its old connection's loss
        was seen): that channel serves the new registration."""
        address = worker.address
        if any(other.address == address for other in self.workers.values()):
            return
        self.outbox.peers_gone.append(address)
        for targets in self.outbox.sends.values():  # pushes to it would reopen the channel
            targets.pop(address, None)

    def _drop_outbox_for(self, worker: WorkerRecord) -> None:
        """Nothing queued for a lost worker may be sent; queued fetches are redone."""
        out = self.outbox
        for batch in (out.compute, out.sends, out.cancel, out.remove, self.held_removals):
            batch.pop(worker, None)
        for key in [key for key in out.uploads if key[0] is worker]:
            _, client_identity, request, _ = key
            client = self.clients.get(client_identity)
            for task_id in out.uploads.pop(key):
                node = self.tasks.get(task_id)
                if client is not None and node is not None:
                    self._park_fetch(task_id, (client, request, False))

    def _recompute_lost(self, lost: list[Node]) -> None:
        """The data of ``lost`` (FINISHED nodes held nowhere now) is gone but needed:
        compute it again, and what it needs, from its lineage.

        All of them wait again before any inputs are counted: a consumer counting
        its inputs then sees every lost one as unfinished, and is raised by one for
        each lost input it had counted finished, never twice for the same (counting
        a lost input after it was raised made it wait forever; found by
        tests/inprocess/test_random_losses.py).
        """
        for node in lost:
            self.transition(node, ts.WAITING)
            for consumer in consumers_of(node):
                if consumer.state == ts.WAITING or consumer.state == ts.READY:
                    consumer.remaining += 1
                    if consumer.state == ts.READY:
                        self.transition(consumer, ts.WAITING)
        stack = []
        for node in lost:
            stack.extend(self._reacquire_inputs(node, refs=True))
        revived = set()
        while stack:  # released inputs they need: back into the DAG, with theirs
            node = stack.pop()
            if node.state == ts.RELEASED:
                self.transition(node, ts.WAITING)
                self.tasks[node.id] = node
                revived.add(node.id)
                stack.extend(self._reacquire_inputs(node, refs=True))
        if revived:
            self._void_removals(revived)
        self.requeue_ready()  # consumers that were READY left their queue entries behind

    def _void_removals(self, ids: set[int]) -> None:
        """Removals of ``ids`` not sent yet are void: those nodes are needed again. Their
        data may be computed on, or delivered to, the worker a removal was meant for,
        and RemoveData goes after this round's orders (and up to REMOVE_DELAY later):
        it would delete the new copy. (A removal already sent arrives first: the
        broker's messages to a worker keep their order.)"""
        for pending in (self.held_removals, self.outbox.remove):
            for worker in list(pending):
                kept = [i for i in pending[worker] if i not in ids]
                if kept:
                    pending[worker] = kept
                else:
                    del pending[worker]

    def _reacquire_inputs(self, node: Node, refs: bool) -> list[Node]:
        """Count ``node``'s missing inputs; return those that must be recomputed."""
        missing = []
        remaining = 0
        for inp in node.inputs:
            if refs:
                inp.refs += 1
            if inp.state == ts.FINISHED and inp.holders:
                continue
            remaining += 1
            if inp.state in (ts.RELEASED, ts.FINISHED):
                missing.append(inp)
        node.remaining = remaining
        if remaining == 0:
            self.make_ready(node)
        return missing

