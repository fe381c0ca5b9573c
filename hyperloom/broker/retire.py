"""Retiring workers: a worker whose batch job is about to end leaves without losing work.

The worker sends ``Retiring``; from then on:

1. the scheduler places nothing more on it (``WorkerRecord.retiring``), and every task
   queued there is asked back (StealTasks): those it has not started are placed elsewhere,
   the running ones finish there as usual;
2. once nothing is assigned to it, asked back or being uploaded, every finished object
   that only it holds is copied to the other workers (SendData, least-loaded first);
3. then it is told ``Shutdown``. It closes its data sockets lingering, so the copies it
   was ordered to push reach their targets, and says Goodbye.

A copy from a retired worker counts as delivered when it leaves (``on_left``), so the
broker's loss handling finds every object still held and recomputes nothing. Without
another worker to copy to, the worker keeps waiting (and serving) until one joins or its
job ends; then it is an ordinary worker loss.

Sans-I/O, part of the core: ``BrokerState`` handles Retiring with ``on_retiring``, runs
``advance()`` in ``on_drained`` and puts the workers it returns into ``outbox.shutdown``,
which is sent after everything else, so the SendData orders go first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import taskstate as ts
from .model import WorkerRecord

if TYPE_CHECKING:
    from .base import CoreBase

log = logging.getLogger("hyperloom.broker")


class Retirements:
    def __init__(self, state: CoreBase) -> None:
        self.state = state
        # WorkerRecord -> True once its sole data was copied
        self.workers: dict[WorkerRecord, bool] = {}
        # told Shutdown: its Goodbye is a clean retirement
        self.told_to_go: set[WorkerRecord] = set()
        # retiring workers already logged as having nowhere to copy
        self.stuck: set[WorkerRecord] = set()

    def on_retiring(self, worker: WorkerRecord) -> None:
        if worker.retiring:
            return
        worker.retiring = True
        self.workers[worker] = False
        queued = [node.id for node in worker.assigned if node.id not in worker.stealing]
        if queued:
            worker.stealing.update(queued)
            self.state.outbox.steal[worker].extend(queued)
        log.info("worker %d retires: %d assigned tasks asked back", worker.worker_id,
                 len(queued))

    def advance(self) -> list[WorkerRecord]:
        """Workers that may go now (tell them Shutdown after the outbox is flushed)."""
        leaving = []
        for worker, copied in list(self.workers.items()):
            if worker.identity not in self.state.workers:
                del self.workers[worker]          # lost meanwhile: ordinary loss handling
                continue
            if worker.assigned or worker.stealing or worker.uploads:
                continue
            if not copied:
                if not self._copy_sole_data(worker):
                    continue
                self.workers[worker] = True
            del self.workers[worker]
            self.told_to_go.add(worker)
            leaving.append(worker)
        return leaving

    def _copy_sole_data(self, worker: WorkerRecord) -> bool:
        """Order copies of what only ``worker`` holds; False if there is nowhere to copy."""
        targets = [w for w in self.state.workers.values() if not w.retiring]
        sole = [node for node in self.state.tasks.values()
                if node.state == ts.FINISHED and node.holders == [worker]]
        if sole and not targets:
            if worker in self.stuck:
                return False
            self.stuck.add(worker)
            log.warning("retiring worker %d holds %d objects no other worker has, and there is "
                        "no other worker to copy them to: it waits", worker.worker_id, len(sole))
            return False
        self.stuck.discard(worker)
        deliver = self.state.deliver
        for node in sole:
            deliver(node, min(targets, key=lambda w: w.bytes_held))
        log.info("retiring worker %d: copying %d objects only it held (%d bytes) to other "
                 "workers, then it leaves", worker.worker_id, len(sole),
                 sum(node.size for node in sole))
        return True

    def on_left(self, worker: WorkerRecord, clean: bool) -> None:
        """``worker`` leaves. After Shutdown and with a Goodbye (``clean``), the copies it
        pushed before going arrive (it lingers on close): real copies, not transfers to void."""
        self.workers.pop(worker, None)
        self.stuck.discard(worker)
        if worker not in self.told_to_go or not clean:
            self.told_to_go.discard(worker)
            return      # lost before it was told to go: what it pushed may not have arrived
        self.told_to_go.discard(worker)
        for other in self.state.workers.values():
            if other.incoming:
                for data_id in [d for d, source in other.incoming.items() if source is worker]:
                    del other.incoming[data_id]
