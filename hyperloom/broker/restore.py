"""Restart from a journal: replay, and workers that re-attach.

A mixin of ``BrokerState`` (see state.py). With a journal (``self.journaling``)
the core emits records through ``self.journal`` (journal.py) and:

- ``replay(records)`` rebuilds the DAG by feeding the recorded events through
  the core's own handlers: plans are taken in again, finished tasks finish on
  *ghost* workers (``WorkerRecord``s of the workers named in the journal, kept in
  ``detached_workers``, never scheduled on), failures, releases and lost workers
  happen again. Tasks that were waiting, ready or running are waiting or ready.
- Until every ghost holding data re-attaches or ``reattach_timeout`` passes
  (``restoring``), nothing is scheduled and fetches of finished results wait:
  their data is "expected on worker W". A ghost that does not come back is a
  lost worker (its data is recomputed from lineage).
- A worker re-attaches with RejoinWorker (its old id, the objects it holds, the
  tasks it runs): held results are kept, results it finished meanwhile are
  taken as finished, running tasks are adopted, anything else is removed or
  canceled.
- Clients keep their sessions across the restart (sessions.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .base import CoreBase
from .. import protocol
from . import journal as jn
from .compaction import compact_records
from .dynamic import _expand
from . import taskstate as ts
from .model import ClientRecord, Node, WorkerRecord

log = logging.getLogger("hyperloom.broker")


class Restore(CoreBase):
    # ------------------------------------------------------------ replay

    def replay(self, records: Iterable[list[Any]]) -> int:
        """Rebuild the state from journal records; returns how many did not apply."""
        journal, self.journal = self.journal, jn.NULL_JOURNAL  # replaying records nothing
        self.replaying = True
        skipped = 0
        try:
            for record in records:
                try:
                    skipped += self._replay_record(record)
                except (TypeError, ValueError, IndexError, KeyError,
                        protocol.ProtocolError) as error:
                    log.warning("journal record %.80r does not apply: %s", record, error)
                    skipped += 1
        finally:
            self.replaying = False
            self.journal = journal
        self._after_replay()
        return skipped

    def _replay_record(self, record: list[Any]) -> int:
        kind = record[0]
        if kind == jn.FINISHED:
            flat = record[1]
            return sum(self._replay_finished(*flat[i:i + 4]) for i in range(0, len(flat), 4))
        if kind == jn.RELEASED:
            for task_id in record[1]:
                node = self.tasks.get(task_id)
                if node is not None and node.is_result:
                    self._release(node)
            return 0
        if kind == jn.SUBMIT or kind == jn.SUBMITTED:
            client = self.sessions.get(record[1])
            if client is None:
                return 1
            if kind == jn.SUBMITTED:
                code, fields = protocol.decode(record[2])
                if code != protocol.SUBMIT:
                    return 1
                self.on_submit(client, *fields[:5])   # (its releases: RELEASED records)
            else:
                self.on_submit(client, *record[2:7])
            return 0
        if kind == jn.CUT:  # a chunked plan whose client went away: it comes again whole
            client = self.sessions.get(record[1])
            if client is None:
                return 1
            client.pending_plan = None
            return 0
        if kind == jn.FAILED:
            node = self.tasks.get(record[1])
            if node is not None and node.state == ts.FAILED:
                # Failed by its plan's own replay: it read a result that had failed when
                # it was submitted (intake.py fails it at once, and journals that too).
                # The record keeps the error its client was told.
                assert node.extra is not None
                node.extra.error = record[2]
                return 0
            if node is None or node.state not in ts.PENDING:
                return 1
            self._fail(node, record[2])
            return 0
        if kind == jn.CLIENT:
            number, token = record[1], record[2]
            client = ClientRecord(b"detached-client-%d" % number, number, 0.0)
            self.sessions[number] = client
            self.session_tokens[number] = token
            self.detached_clients[number] = None
            self.next_client_number = max(self.next_client_number, number + 1)
            return 0
        if kind == jn.END:
            self._end_session(record[1])
            return 0
        if kind == jn.WORKER:
            self._ghost(*record[1:6])
            return 0
        if kind == jn.COUNTERS:
            self.next_worker_id = max(self.next_worker_id, record[1])
            self.next_client_number = max(self.next_client_number, record[2])
            for number, done, total, next_broker_id, accepted_until in record[3]:
                client = self.sessions[number]
                client.n_done, client.n_total = done, total
                client.next_broker_id = max(client.next_broker_id, next_broker_id)
                client.accepted_until = max(client.accepted_until, accepted_until)
            if len(record) > 4:   # the types some worker provided (a journal since 2026-12)
                self.provided_types.update(record[4])
            return 0
        if kind == jn.RESTORE:  # a restart that had not finished waiting for its workers
            self.pending_restore_deadline = record[1]
            return 0
        if kind == jn.RESTORED:
            self.pending_restore_deadline = None
            return 0
        if kind == jn.EXPANDED:
            node = self.tasks.get(record[1])
            if node is None or node.state != ts.READY:
                return 1
            _expand(self, node, record[2])
            return 0
        if kind == jn.LOST:
            ghost = self.detached_workers.pop(record[1], None)
            if ghost is not None:
                self._ghost_lost(ghost, record[2] if len(record) > 2 else None)
            return 0
        return 1

    def _ghost(self, worker_id: int, address: str = "", cpus: int = 0,
               task_types: Iterable[str] = (), hostname: str = "") -> WorkerRecord:
        """The record of a worker named in the journal, not connected (yet)."""
        ghost = self.detached_workers.get(worker_id)
        if ghost is None:
            ghost = WorkerRecord(b"journal-worker-%d" % worker_id, worker_id, address, cpus,
                                 task_types, hostname, 0.0)
            self.detached_workers[worker_id] = ghost
            self.provided_types.update(task_types)
            self.next_worker_id = max(self.next_worker_id, worker_id + 1)
        return ghost

    def _replay_finished(self, task_id: int, worker_id: int, size: int, length: int) -> int:
        node = self.tasks.get(task_id)
        if node is None:
            return 1
        if node.state == ts.FINISHED:
            if not worker_id:
                return 1
            # Finished again: its data was lost in a way the journal does not show (a
            # re-attached worker no longer held it) and computed again there.
            self.add_holder(node, self._ghost(worker_id))
            return 0
        if node.state == ts.WAITING:
            # It finished before an input of it was lost, which is being computed again
            # now: a compacted journal (compaction.py) keeps no order of history.
            self.transition(node, ts.READY)
        elif node.state != ts.READY:
            return 1
        ghost = self._ghost(worker_id)
        self._adopt(node, ghost)
        self._finish(node, ghost, size, length)
        self.finished_in_journal.add(task_id)
        return 0

    def _adopt(self, node: Node, worker: WorkerRecord) -> None:
        """A READY task is (was) running on ``worker``: ASSIGNED there, nothing sent."""
        self.transition(node, ts.ASSIGNED)
        node.worker = worker
        worker.assigned[node] = None
        if node.n_cpus:
            worker.cpus_used += node.n_cpus
        else:
            worker.n_light += 1

    def _after_replay(self) -> None:
        self.outbox.clear()  # what the old broker sent, or what nobody is there to receive
        self.accepted_owed.clear()   # (a resumed client is told at once)
        self.requeue_ready()  # replayed events may have queued a READY node twice
        for client in self.sessions.values():
            client.pending_plan = None  # a chunked plan cut by the crash was never accepted
        for worker_id, ghost in list(self.detached_workers.items()):
            if not ghost.bytes_held and not _holds_anything(self, ghost):
                del self.detached_workers[worker_id]  # nothing to wait for
        self.restoring = bool(self.detached_workers)
        self.restore_deadline = None

    # ------------------------------------------------------------ restoring

    def restore_step(self, now: float) -> bool:
        """True while the broker still waits for ghost workers (nothing is scheduled)."""
        if self.restore_deadline is None:
            self.restore_deadline = now + self.reattach_timeout
            log.info("restored from the journal: %d tasks, %d sessions; waiting up to %.0f s "
                     "for %d workers to re-attach", len(self.tasks), len(self.sessions),
                     self.reattach_timeout, len(self.detached_workers))
        if self.detached_workers and now < self.restore_deadline:
            return True
        for ghost in list(self.detached_workers.values()):
            log.warning("worker %d did not re-attach: its data is recomputed", ghost.worker_id)
            self._ghost_lost(ghost)
        self.detached_workers.clear()
        self.restoring = False
        self.journal.restored()
        for task_id in [i for i in self.pending_fetches
                        if i in self.tasks and self.tasks[i].state == ts.FINISHED]:
            node = self.tasks[task_id]
            for client, request, release in self._take_fetches(task_id):
                self._serve_fetch(node, client, request, release)
        return False

    def _ghost_lost(self, ghost: WorkerRecord, kept: list[int] | None = None) -> None:
        """A ghost is lost: now (it did not re-attach), or in a replayed LOST record,
        whose ``kept`` names a worker still holding each node the live broker kept
        (older journals have none: then what the ghost computed is recomputed)."""
        lost, kept_now = self._drop_holder(ghost)
        if kept is None:
            self.journal.worker_lost(ghost.worker_id, kept_now)   # (replay records nothing)
        elif lost:
            lost = self._keep_copies(lost, dict(zip(kept[::2], kept[1::2])))
        if lost:
            self._recompute_lost(lost)

    def _keep_copies(self, lost: list[Node], holder_of: dict[int, int]) -> list[Node]:
        """Of ``lost``, the nodes a copy of which the live broker knew elsewhere are
        held there (a claim the worker confirms when it re-attaches); the rest is
        returned."""
        still_lost = []
        for node in lost:
            worker_id = holder_of.get(node.id)
            if worker_id is None:
                still_lost.append(node)
                continue
            holder = self._ghost(worker_id)
            node.holders = [holder]
            holder.bytes_held += node.size
        return still_lost

    # ------------------------------------------------------------ workers re-attach

    def on_worker_rejoin(self, identity: bytes, version: int, cpus: int, address: str,
                         task_types: list[Any], hostname: str, worker_id: int,
                         held: list[Any], running: list[Any], now: float) -> None:
        """A worker that lost its broker registers again with what it holds and runs."""
        if type(worker_id) is not int:
            self.outbox.add_error((identity, "RejoinWorker: worker_id must be an int", True))
            return
        ghost = self.detached_workers.pop(worker_id, None)
        worker = self.on_worker_hello(identity, version, cpus, address, task_types, hostname,
                                      now, worker_id=worker_id if ghost is not None else None)
        if worker is None:
            if ghost is not None:
                self.detached_workers[worker_id] = ghost
            return
        try:
            held_sizes = {int(e[0]): (int(e[1]), int(e[2])) for e in held}
            running_ids = [int(i) for i in running]
        except (TypeError, ValueError, IndexError):
            self._worker_error(worker, "RejoinWorker: malformed held or running entries")
            held_sizes, running_ids = {}, []
        if ghost is not None:
            self._take_over(ghost, worker, held_sizes)
        removed = self._reconcile_held(worker, held_sizes)
        canceled = []
        for task_id in running_ids:
            node = self.tasks.get(task_id)
            if node is not None and node.state == ts.READY and task_id not in held_sizes:
                self._adopt(node, worker)
            else:
                canceled.append(task_id)
        if canceled:
            self.outbox.cancel[worker].extend(canceled)
        self.requeue_ready()  # the tasks it adopted left READY but not the queue
        log.info("worker %d re-attached: holds %d objects (%d unwanted), runs %d (%d "
                 "canceled)", worker.worker_id, len(held_sizes), removed, len(running_ids),
                 len(canceled))

    def _take_over(self, ghost: WorkerRecord, worker: WorkerRecord,
                   held_sizes: dict[int, tuple[int, int]]) -> None:
        """The ghost's holdings become the worker's where it still holds them."""
        lost = []
        for node in self.tasks.values():
            holders = node.holders
            if holders is None or ghost not in holders:
                continue
            holders.remove(ghost)
            if node.id in held_sizes:
                self.add_holder(node, worker)
            elif not holders:
                node.holders = None
                if node.state == ts.FINISHED:
                    lost.append(node)
        if lost:
            self._recompute_lost(lost)

    def _reconcile_held(self, worker: WorkerRecord,
                        held_sizes: dict[int, tuple[int, int]]) -> int:
        """Objects the worker holds: kept if wanted; taken as finished if their tasks
        are still to run (they finished while the broker was away, or before and are
        waiting to be computed again, or were placed elsewhere since); removed
        otherwise. Returns how many are removed.

        A removal here goes out after this round's orders (and is held up to
        REMOVE_DELAY): removing an object whose task would still run, then giving the
        worker that object again, deleted the new copy.
        """
        remove = []
        for task_id in sorted(held_sizes):  # post-order: inputs before their consumers
            node = self.tasks.get(task_id)
            if node is None or node.state == ts.FAILED or node.state == ts.CANCELED:
                remove.append(task_id)   # unknown, released, failed: needed again only
                continue                 # if revived (_recompute_lost voids this then)
            if node.state == ts.FINISHED:
                self.add_holder(node, worker)
                continue
            if node.state == ts.ASSIGNED:  # placed elsewhere since the restart: this copy wins
                other = node.worker
                assert other is not None  # ASSIGNED (taskstate.py)
                self._unassign(node, other)
                other.canceled.add(task_id)
                self.outbox.cancel[other].append(task_id)
            if node.state != ts.READY:
                self.transition(node, ts.READY)
            self._adopt(node, worker)
            self._finish(node, worker, *held_sizes[task_id])
        if remove:
            self.outbox.remove[worker].extend(remove)
        return len(remove)

    def journal_stats(self) -> dict[str, Any]:
        """What ``info()["journal"]`` shows: how a restart went."""
        return {"restored_finished": len(self.finished_in_journal),
                "recomputed": self.n_recomputed, "restoring": self.restoring,
                "detached_workers": sorted(self.detached_workers),
                "detached_clients": sorted(self.detached_clients)}

    # ------------------------------------------------------------ compaction

    def compact_records(self) -> list[list[Any]]:
        """Records that replay to the present state (compaction.py)."""
        return compact_records(self)


def _holds_anything(state: CoreBase, ghost: WorkerRecord) -> bool:
    return any(n.holders and ghost in n.holders for n in state.tasks.values())
