"""Placement of ready tasks on workers: ready tasks x workers -> assignments.

Policy, cheapest first:
- a task goes to a worker with room for it: light tasks (no core requested)
  up to ``light_limit`` queued per worker; core-requesting tasks while the
  worker's assigned cores stay within ``cpus * overbooking`` (the worker
  queues what it cannot start yet, so it never idles between round trips);
- among workers with room, the one already holding the most input bytes
  (no transfer at all in the common case); otherwise the least loaded;
- a task that no worker can ever run (more cores than any worker has, or a
  type nobody provides) is parked as unplaceable, visible in ``info()``, and
  retried when a worker joins.
Work per task is O(inputs) plus O(workers) only when it has no locality.
"""

from __future__ import annotations

import logging
from collections import deque

from . import dynamic
from . import taskstate as ts
from .dynamic import DYNAMIC_TYPES

log = logging.getLogger("hyperloom.broker")

LIGHT_LIMIT = 4096          # light tasks queued per worker at once
MAX_LOCALITY_INPUTS = 32    # inputs weighed for locality (bounded work per task)
LOCALITY_BYTES = 1 << 20    # moving this much is worth waiting for the holder
MAX_DEFERRED = 1024         # ready tasks skipped in one round before giving up


class Scheduler:
    def __init__(self, state, overbooking: int = 3):
        self.state = state
        self.overbooking = overbooking
        self.ready = deque()
        self.unplaceable = []

    def add_ready(self, nodes):
        self.ready.extend(nodes)

    def on_worker_joined(self, worker):
        if self.unplaceable:
            self.ready.extendleft(reversed(self.unplaceable))
            self.unplaceable = []

    def unplaceable_summary(self):
        return [{"id": node.id, "n_cpus": node.n_cpus, "type": node.type,
                 "reason": self._why_unplaceable(node)}
                for node in self.unplaceable if node.state == ts.READY]

    def _why_unplaceable(self, node) -> str:
        workers = self.state.workers.values()
        if not any(node.type in w.task_types for w in workers):
            return f"no connected worker provides task type '{node.type}'"
        return (f"needs {node.n_cpus} cpus; no connected worker has that many "
                f"(largest: {max((w.cpus for w in workers), default=0)})")

    # ------------------------------------------------------------ one round

    def schedule(self):
        """Assign as many ready tasks as the workers have room for."""
        ready = self.ready
        workers = [w for w in self.state.workers.values() if not w.retiring]
        if not workers:
            return
        if ready:
            self._place_ready(ready, workers)
        if not ready:
            self._steal(workers)

    def _place_ready(self, ready, workers):
        max_cpus = max(w.cpus for w in workers)
        common_types = frozenset.intersection(*(w.task_types for w in workers))
        deferred = []
        room = _Room(workers)
        while ready and room.any():
            node = ready.popleft()
            if node.state != ts.READY:
                continue  # canceled or failed while queued
            if node.type in DYNAMIC_TYPES:
                dynamic.expand(self.state, node)
                continue
            n_cpus = node.n_cpus
            if n_cpus > max_cpus or (node.type not in common_types and not any(
                    node.type in w.task_types for w in workers)):
                self.unplaceable.append(node)
                continue
            if not room.fits(n_cpus):
                deferred.append(node)
                if len(deferred) >= MAX_DEFERRED:
                    break
                continue
            worker = self._place(node, workers, room)
            if worker is None:
                deferred.append(node)
                if len(deferred) >= MAX_DEFERRED:
                    break
                continue
            self._assign(node, worker)
            room.took(worker, n_cpus)
        if deferred:
            ready.extendleft(reversed(deferred))

    def _steal(self, workers):
        """Idle cores while others have queued tasks: ask those tasks back.

        Overbooking keeps workers busy between round trips but may leave tasks
        queued on one worker while another is idle; the worker gives back the
        ones it has not started (TasksDone.stolen) and they are placed again.
        """
        idle = sum(max(0, w.cpus - w.cpus_used) for w in workers)
        if not idle:
            return
        steal = self.state.outbox.steal
        tasks = self.state.tasks
        for worker in sorted(workers, key=lambda w: w.cpus - w.cpus_used):
            queued = worker.cpus_used - worker.cpus - sum(
                tasks[i].n_cpus for i in worker.stealing if i in tasks)
            if queued <= 0 or idle <= 0:
                break
            for node in reversed(worker.assigned):  # the latest are the likeliest queued
                if queued <= 0 or idle <= 0:
                    break
                if node.n_cpus and node.id not in worker.stealing:
                    log.debug("asking worker %d to give back task %d", worker.worker_id, node.id)
                    worker.stealing.add(node.id)
                    steal[worker].append(node.id)
                    queued -= node.n_cpus
                    idle -= node.n_cpus

    def _place(self, node, workers, room):
        """Where ``node`` runs now, or None to let it wait for a better moment.

        Big inputs (LOCALITY_BYTES or more to move) stay where they are: the task
        goes to the holder if it has room, else to a worker with an idle core,
        else it waits; moving megabytes to a worker that would only queue the
        task gains nothing. With small inputs an idle core beats queueing on
        the holder, and the holder beats any other busy worker.
        """
        n_cpus = node.n_cpus
        task_type = node.type
        inputs = node.inputs
        if not inputs:
            return room.least_loaded(n_cpus, task_type)
        best, local, total = self._most_bytes(inputs, n_cpus, task_type, room)
        if total - local >= LOCALITY_BYTES:
            # Megabytes would move (the holder has no room): only to start at once.
            if best is not None and (not n_cpus or best.cpus_used + n_cpus <= best.cpus):
                return best
            return room.idle(n_cpus, task_type)
        if best is not None and n_cpus and best.cpus_used + n_cpus > best.cpus:
            idle = room.idle(n_cpus, task_type)  # the holder would only queue it
            if idle is not None:
                return idle
        return best if best is not None else room.least_loaded(n_cpus, task_type)

    @staticmethod
    def _most_bytes(inputs, n_cpus, task_type, room):
        """The holder with room that holds most input bytes: (worker, its bytes, all bytes)."""
        if len(inputs) == 1:
            inp = inputs[0]
            for worker in inp.holders:
                if room.has(worker, n_cpus) and task_type in worker.task_types:
                    return worker, inp.size, inp.size
            return None, 0, inp.size
        scores = {}
        total = 0
        for inp in inputs[:MAX_LOCALITY_INPUTS]:
            size = inp.size
            total += size
            for worker in inp.holders:
                scores[worker] = scores.get(worker, 0) + size + 1  # +1: tiny inputs count too
        for worker, score in sorted(scores.items(), key=lambda item: -item[1]):
            if room.has(worker, n_cpus) and task_type in worker.task_types:
                return worker, score - 1, total
        return None, 0, total

    def _assign(self, node, worker):
        state = self.state
        state.transition(node, ts.ASSIGNED)
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
            if worker not in inp.holders:
                self.deliver(inp, worker)
        extra = node.extra
        checkpoint = extra.checkpoint_path if extra is not None else None
        state.outbox.compute[worker].append([node.id, node.type, node.config, input_ids, n_cpus,
                                             node.label, node.is_result, checkpoint])


    def deliver(self, node, worker):
        """Order a holder of ``node``'s data to push it to ``worker``."""
        holders = node.holders
        if worker in holders:
            return
        source = holders[0]
        self.state.outbox.send_data(source, worker.address, node.id)
        holders.append(worker)
        worker.incoming[node.id] = source
        size = node.size
        worker.bytes_held += size
        worker.bytes_received += size
        source.bytes_sent += size


class _Room:
    """Free capacity of the workers during one scheduling round.

    Placement without locality is amortised O(1) per task: workers are taken
    in turn, idle cores first, then overbooking room. ``max_cpu_free`` is an
    upper bound during the round, made exact whenever a search fails, so a
    task that fits nowhere costs one scan and the next ones none.
    """

    def __init__(self, workers):
        self.workers = workers
        self.light_turn = 0
        self.core_turn = 0
        self.idle_left = True
        self.light_free = sum(1 for w in workers if w.n_light < LIGHT_LIMIT)
        self.max_cpu_free = max(self.cpu_free(w) for w in workers)

    def cpu_free(self, worker) -> int:
        return worker.cpus * worker.overbooking - worker.cpus_used

    def any(self) -> bool:
        return self.light_free > 0 or self.max_cpu_free > 0

    def fits(self, n_cpus) -> bool:
        return self.max_cpu_free >= n_cpus if n_cpus else self.light_free > 0

    def has(self, worker, n_cpus) -> bool:
        if n_cpus:
            return n_cpus <= worker.cpus and worker.cpus_used + n_cpus <= \
                worker.cpus * worker.overbooking
        return worker.n_light < LIGHT_LIMIT

    def took(self, worker, n_cpus):
        if not n_cpus and worker.n_light == LIGHT_LIMIT:
            self.light_free -= 1

    def least_loaded(self, n_cpus, task_type):
        """A worker with room for a task with no locality preference, or None."""
        if not n_cpus:
            return self._next_light(task_type)
        worker = None
        if self.idle_left:
            worker = self._next_core(n_cpus, task_type, idle_only=True)
            if worker is None and n_cpus == 1:
                self.idle_left = False   # no idle core anywhere: it stays so this round
        if worker is None:
            worker = self._next_core(n_cpus, task_type, idle_only=False)
        if worker is None:
            self.max_cpu_free = max(self.cpu_free(w) for w in self.workers)
        return worker

    def idle(self, n_cpus, task_type):
        """A worker that would start the task at once (light tasks: any with room)."""
        if not n_cpus:
            return self._next_light(task_type)
        if not self.idle_left:
            return None
        return self._next_core(n_cpus, task_type, idle_only=True)

    def _next_core(self, n_cpus, task_type, idle_only):
        workers = self.workers
        count = len(workers)
        for step in range(count):
            worker = workers[(self.core_turn + step) % count]
            limit = worker.cpus if idle_only else worker.cpus * worker.overbooking
            if n_cpus <= worker.cpus and worker.cpus_used + n_cpus <= limit \
                    and task_type in worker.task_types:
                self.core_turn = (self.core_turn + step + 1) % count
                return worker
        return None

    def _next_light(self, task_type):
        workers = self.workers
        count = len(workers)
        for step in range(count):
            worker = workers[(self.light_turn + step) % count]
            if worker.n_light < LIGHT_LIMIT and task_type in worker.task_types:
                self.light_turn = (self.light_turn + step + 1) % count
                return worker
        return None
