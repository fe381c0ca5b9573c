"""Worker reports: TasksDone (finished, failed, inline results, given-back tasks).

A mixin of ``BrokerState``. A report about a task the worker does not run for
this broker gets an Error; one about a task canceled meanwhile is expected
and ignored (its unwanted result is deleted on the worker).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..protocol import PUSH_RESULT_BYTES
from .base import CoreBase
from . import taskstate as ts
from .model import Node, WorkerRecord

log = logging.getLogger("hyperloom.broker")


class WorkerReports(CoreBase):
    def on_tasks_done(self, worker: WorkerRecord, finished: list[Any], failed: list[Any],
                      now: float, results: Sequence[Any] = (),
                      frames: Sequence[Any] = ()) -> None:
        """TasksDone as msgpack decoded it (FinishedTask, FailedTask, InlineResult entries
        as lists): each entry is checked before it is used; ``frames`` are the inline
        results' payload frames."""
        if results:
            self._keep_inline_results(worker, results, frames)
        for entry in finished:
            node = self._reported_node(worker, entry, "finished")
            if node is None:
                continue
            size, length = entry[1], entry[2]
            if type(size) is not int or type(length) is not int or size < 0 or length < 0:
                self._worker_error(worker, f"task {node.id}: invalid size or length")
                continue
            self._finish(node, worker, size, length)
        for entry in failed:
            node = self._reported_node(worker, entry, "failed")
            if node is not None:
                self._unassign(node, worker)
                self._fail(node, [node.id, worker.address, str(entry[1])])

    def _reported_node(self, worker: WorkerRecord, entry: Any, kind: str) -> Node | None:
        """The ASSIGNED node a finished/failed ``entry`` reports on this worker, or None."""
        try:
            task_id = entry[0]
            entry[2 if kind == "finished" else 1]  # the fields read after this exist
        except (TypeError, IndexError, KeyError):
            self._worker_error(worker, f"malformed {kind} entry {entry!r:.60}")
            return None
        if type(task_id) is not int:
            self._worker_error(worker,
                               f"malformed {kind} entry (id not an integer) {entry!r:.60}")
            return None
        node = self.tasks.get(task_id)
        if node is None or node.worker is not worker or node.state != ts.ASSIGNED:
            self._unexpected_report(worker, task_id, finished=kind == "finished")
            return None
        return node

    def _keep_inline_results(self, worker: WorkerRecord, results: Sequence[Any],
                             frames: Sequence[Any]) -> None:
        """Small results sent along with TasksDone: kept to answer fetches at once."""
        position = 0
        tasks = self.tasks
        for entry in results:
            try:
                task_id, meta, n_frames = entry
                taken = frames[position:position + n_frames]
                position += n_frames
                if type(task_id) is not int or type(n_frames) is not int:
                    raise TypeError
            except (TypeError, ValueError):
                self._worker_error(worker, f"malformed inline result {entry!r:.60}")
                return
            node = tasks.get(task_id)
            if node is not None and node.worker is worker and node.is_result:
                node.get_extra().inline = (meta, taken)

    def on_tasks_stolen(self, worker: WorkerRecord, ids: list[Any]) -> None:
        """The worker gave back tasks it had not started: place them again."""
        returned = []
        for task_id in ids:
            if type(task_id) is not int:
                self._worker_error(worker, f"malformed stolen id (not an integer): {task_id!r:.30}")
                continue
            node = self.tasks.get(task_id)
            if node is None or node.worker is not worker or task_id not in worker.stealing:
                if task_id not in worker.canceled:
                    self._worker_error(worker, f"task {task_id!r:.30} was not asked back")
                worker.canceled.discard(task_id)
                continue
            worker.stealing.discard(task_id)
            self._unassign(node, worker)
            unfinished = sum(1 for inp in node.inputs if inp.state != ts.FINISHED)
            if unfinished:  # an input was lost after it was placed: computed again now
                self.transition(node, ts.WAITING)
                node.remaining = unfinished
                continue
            self.transition(node, ts.READY)
            returned.append(node)
        self.ready.put_back(returned)

    def _unexpected_report(self, worker: WorkerRecord, task_id: int, finished: bool) -> None:
        if task_id in worker.canceled:
            worker.canceled.discard(task_id)
            if finished:
                node = self.tasks.get(task_id)
                if node is not None and node.state == ts.FINISHED:
                    # Finished elsewhere meanwhile (a worker re-attached with it): this
                    # copy is as good, and a task placed here may already be queued on
                    # it. Deleting it crashed such a worker (KeyError starting the task).
                    self.add_holder(node, worker)
                else:  # its result is unwanted: delete it on the worker
                    self.outbox.remove[worker].append(task_id)
            return
        self._worker_error(worker, f"task {task_id!r:.30} was never assigned to this worker")

    def _worker_error(self, worker: WorkerRecord, message: str) -> None:
        log.warning("worker %d: %s", worker.worker_id, message)
        self.outbox.add_error((worker.identity, message, False))

    def _finish(self, node: Node, worker: WorkerRecord, size: int, length: int) -> None:
        self.journal.finished(node.id, worker.worker_id, size, length)
        if self.finished_in_journal and node.id in self.finished_in_journal \
                and not self.replaying:
            self.n_recomputed += 1   # finished before a restart, and computed again
        self._unassign(node, worker)
        if worker.incoming:  # its inputs did arrive: they are real copies now
            for inp in node.inputs:
                worker.incoming.pop(inp.id, None)
        self.transition(node, ts.FINISHED)
        node.size = size
        node.length = length
        node.holders = [worker]
        worker.bytes_held += size
        worker.n_finished += 1
        if node.n_cpus:
            worker.n_core_finished += 1
        if node.consumers is not None:
            self._input_finished(node)
        for inp in node.inputs:
            inp.refs -= 1
            if inp.refs == 0:
                self._forget(inp)
        if node.is_result:
            self.outbox.finished[node.client].append(node.id)
            fetches = self._take_fetches(node.id) if self.pending_fetches else ()
            for client, request, release in fetches:
                self._serve_fetch(node, client, request, release)
            if not fetches and size <= PUSH_RESULT_BYTES:
                extra = node.extra
                if extra is not None and extra.inline is not None:
                    # Its value goes to the client now: a gather needs no Fetch.
                    self.outbox.pushed[node.client].append((node.id, *extra.inline))
        if node.refs == 0 and node.id in self.tasks:
            self._forget(node)

    def _input_finished(self, node: Node) -> None:
        """``node`` finished: its consumers have one input less to wait for."""
        consumers = node.consumers
        ready = None
        for consumer in (consumers,) if isinstance(consumers, Node) else consumers or ():
            if consumer.state == ts.ASSIGNED:
                # Recomputed after a loss: the consumer already waits on its worker.
                assert consumer.worker is not None
                self.deliver(node, consumer.worker)
                continue
            consumer.remaining -= 1
            if consumer.remaining == 0 and consumer.state == ts.WAITING:
                self.transition(consumer, ts.READY)
                if ready is None:
                    ready = [consumer]
                else:
                    ready.append(consumer)
        if ready:
            self.add_ready(ready)
