"""Placement of ready tasks on workers: a pure function of what it is given.

``schedule(ready, workers)`` takes ready tasks off the front of ``ready`` (a
``ReadyQueue``: light and core-requesting tasks queue apart) and answers with a
``Placement``: (task, worker) assignments, tasks deferred to a
later round, tasks no connected worker can ever run. ``choose_steals`` picks
queued tasks to ask back for idle cores. Neither holds state, changes a task
or a worker record, or writes the outbox: the broker state applies the answer
(``BrokerState.apply_placement`` / ``apply_steals``).

Policy, cheapest first:
- a task goes to a worker with room for it: light tasks (no core requested)
  up to ``LIGHT_LIMIT`` queued per worker; core-requesting tasks while the
  worker's assigned cores stay within ``cpus * overbooking`` (the worker
  queues what it cannot start yet, so it never idles between round trips);
- among workers with room, the one already holding the most input bytes
  (no transfer at all in the common case); otherwise the least loaded;
- a task that no worker can ever run (more cores than any worker has, or a
  type nobody provides) is unplaceable; the state parks it (visible in
  ``info()``) and retries it when a worker joins.
Work per task is O(inputs) plus O(workers) only when it has no locality.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

from . import taskstate as ts
from .model import Node, WorkerRecord

LIGHT_LIMIT = 4096          # light tasks queued per worker at once
MAX_LOCALITY_INPUTS = 32    # inputs weighed for locality (bounded work per task)
LOCALITY_BYTES = 1 << 20    # moving this much is worth waiting for the holder
MAX_DEFERRED = 1024         # ready tasks skipped in one round before giving up


class ReadyQueue:
    """READY tasks waiting for a worker, in arrival order within each kind.

    Light tasks (no core requested) and core-requesting ones queue apart, so a round
    in which the workers have no core left stops at once instead of walking past the
    queued core tasks to find light ones behind them: with 10,000 queued Python tasks
    that walk (up to MAX_DEFERRED tasks each round) was ~60 % of the broker's CPU.
    """

    __slots__ = ("light", "core")

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.light: deque[Node] = deque()
        self.core: deque[Node] = deque()
        self.extend(nodes)

    def append(self, node: Node) -> None:
        (self.core if node.n_cpus else self.light).append(node)

    def extend(self, nodes: Iterable[Node]) -> None:
        light, core = self.light, self.core
        for node in nodes:
            (core if node.n_cpus else light).append(node)

    def put_back(self, nodes: Sequence[Node]) -> None:
        """Return ``nodes`` to the front of their queues, in their order."""
        light, core = self.light, self.core
        for node in reversed(nodes):
            (core if node.n_cpus else light).appendleft(node)

    def __len__(self) -> int:
        return len(self.light) + len(self.core)

    def __bool__(self) -> bool:
        return bool(self.light) or bool(self.core)

    def __iter__(self) -> Iterator[Node]:
        yield from self.light
        yield from self.core


class Placement:
    """The answer of one scheduling round."""

    __slots__ = ("nodes", "workers", "deferred", "unplaceable")

    def __init__(self) -> None:
        # Assignments in placement order: nodes[i] goes to workers[i]. Two flat lists,
        # not a tuple per task: 200k tuples more cost ~0.5 µs per task in allocation and
        # garbage collection (benchmarks/scheduler_scale.py).
        self.nodes: list[Node] = []
        self.workers: list[WorkerRecord] = []
        self.deferred: list[Node] = []   # READY tasks to put back at the front of the queue
        self.unplaceable: list[Node] = []   # READY tasks no connected worker can run


def schedule(ready: ReadyQueue, workers: list[WorkerRecord]) -> Placement:
    """Place tasks from the front of ``ready``'s queues on ``workers`` (a list).

    Every READY task taken off ``ready`` is in exactly one list of the
    answer; tasks that are no longer READY (canceled or failed while queued)
    are dropped. Each queue is left as soon as no worker has room for its kind.
    """
    placement = Placement()
    if not workers or not ready:
        return placement
    room = _Room(workers)
    kinds = _Kinds(workers)
    if ready.light:
        _place_from(ready.light, room, kinds, placement, core=False)
    if ready.core:
        _place_from(ready.core, room, kinds, placement, core=True)
    return placement


class _Kinds:
    """What the connected workers can run at all, for spotting unplaceable tasks.

    Built every round, so it computes nothing up front: a task type is looked up in
    the workers' types on its first appearance in the round only."""

    __slots__ = ("workers", "max_cpus", "runnable")

    def __init__(self, workers: list[WorkerRecord]) -> None:
        self.workers = workers
        self.max_cpus = max(w.cpus for w in workers)
        self.runnable: dict[str, bool] = {}

    def can_run(self, node: Node) -> bool:
        if node.n_cpus > self.max_cpus:
            return False
        task_type = node.type
        runnable = self.runnable.get(task_type)
        if runnable is None:
            runnable = self.runnable[task_type] = any(
                task_type in w.task_types for w in self.workers)
        return runnable


def _place_from(queue: deque[Node], room: _Room, kinds: _Kinds, placement: Placement,
                core: bool) -> None:
    deferred = placement.deferred
    assigned_nodes, assigned_workers = placement.nodes, placement.workers
    while queue and (room.max_cpu_free > 0 if core else room.light_free > 0):
        node = queue.popleft()
        if node.state != ts.READY:
            continue
        if not kinds.can_run(node):
            placement.unplaceable.append(node)
            continue
        n_cpus = node.n_cpus
        worker = _place(node, room) if room.fits(n_cpus) else None
        if worker is None:
            deferred.append(node)
            if len(deferred) >= MAX_DEFERRED:
                return
            continue
        assigned_nodes.append(node)
        assigned_workers.append(worker)
        room.took(worker, n_cpus)


def choose_steals(workers: list[WorkerRecord],
                  tasks: dict[int, Node]) -> list[tuple[WorkerRecord, Node]]:
    """Idle cores while others have queued tasks: ``[(worker, node)]`` to ask back.

    Overbooking keeps workers busy between round trips but may leave tasks
    queued on one worker while another is idle; the worker gives back the
    ones it has not started (TasksDone.stolen) and they are placed again.
    """
    idle = 0
    queued_somewhere = False
    for w in workers:  # one pass: this runs after every round whose queue emptied
        free = w.cpus - w.cpus_used
        if free > 0:
            idle += free
        elif free < 0:
            queued_somewhere = True
    if not (idle and queued_somewhere):
        return []
    steals = []
    for worker in sorted(workers, key=lambda w: w.cpus - w.cpus_used):
        queued = worker.cpus_used - worker.cpus - sum(
            tasks[i].n_cpus for i in worker.stealing if i in tasks)
        if queued <= 0 or idle <= 0:
            break
        for node in reversed(worker.assigned):  # the latest are the likeliest queued
            if queued <= 0 or idle <= 0:
                break
            if node.n_cpus and node.id not in worker.stealing:
                steals.append((worker, node))
                queued -= node.n_cpus
                idle -= node.n_cpus
    return steals


def why_unplaceable(node: Node, workers: Iterable[WorkerRecord]) -> str:
    workers = list(workers)
    if not any(node.type in w.task_types for w in workers):
        return f"no connected worker provides task type '{node.type}'"
    return (f"needs {node.n_cpus} cpus; no connected worker has that many "
            f"(largest: {max((w.cpus for w in workers), default=0)})")


def _place(node: Node, room: _Room) -> WorkerRecord | None:
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
    best, local, total = _most_bytes(inputs, n_cpus, task_type, room)
    if total - local >= LOCALITY_BYTES:
        # Megabytes would move (the holder has no room): only to start at once.
        if best is not None and (not n_cpus or room.starts_at_once(best, n_cpus)):
            return best
        return room.idle(n_cpus, task_type)
    if best is not None and n_cpus and not room.starts_at_once(best, n_cpus):
        idle = room.idle(n_cpus, task_type)  # the holder would only queue it
        if idle is not None:
            return idle
    return best if best is not None else room.least_loaded(n_cpus, task_type)


def _most_bytes(inputs: Sequence[Node], n_cpus: int, task_type: str,
                room: _Room) -> tuple[WorkerRecord | None, int, int]:
    """The holder with room that holds most input bytes: (worker, its bytes, all bytes)."""
    if len(inputs) == 1:
        inp = inputs[0]
        for worker in inp.holders or ():
            if room.has(worker, n_cpus) and task_type in worker.task_types:
                return worker, inp.size, inp.size
        return None, 0, inp.size
    scores: dict[WorkerRecord, int] = {}
    total = 0
    for inp in inputs[:MAX_LOCALITY_INPUTS]:
        size = inp.size
        total += size
        for worker in inp.holders or ():
            scores[worker] = scores.get(worker, 0) + size + 1  # +1: tiny inputs count too
    for worker, score in sorted(scores.items(), key=lambda item: -item[1]):
        if room.has(worker, n_cpus) and task_type in worker.task_types:
            return worker, score - 1, total
    return None, 0, total


class _Room:
    """Free capacity of the workers during one scheduling round.

    It counts what this round assigned in its own tables, lists parallel to
    ``workers`` (``used``: cores, ``light``: light tasks; ``cores`` and
    ``limit`` hold each worker's cores and overbooked cores), so that placing
    never touches a worker record and a scan over the workers reads lists only.
    Placement without locality is amortised O(1) per task: workers are taken
    in turn, idle cores first, then overbooking room. ``max_cpu_free`` is an
    upper bound during the round, made exact whenever a search fails, so a
    task that fits nowhere costs one scan and the next ones none.
    """

    def __init__(self, workers: list[WorkerRecord]) -> None:
        self.workers = workers
        # one pass over the workers (this runs every round, even for one task)
        index: dict[WorkerRecord, int] = {}
        used: list[int] = []
        light: list[int] = []
        cores: list[int] = []
        limit: list[int] = []
        self.index, self.used, self.light, self.cores, self.limit = \
            index, used, light, cores, limit
        light_free = 0
        for i, w in enumerate(workers):
            index[w] = i
            used.append(w.cpus_used)
            light.append(w.n_light)
            cores.append(w.cpus)
            limit.append(w.cpus * w.overbooking)
            if w.n_light < LIGHT_LIMIT:
                light_free += 1
        self.light_turn = 0
        self.core_turn = 0
        self.idle_left = True
        self.light_free = light_free
        self.max_cpu_free = self._max_cpu_free()

    def _max_cpu_free(self) -> int:
        return max(limit - used for limit, used in zip(self.limit, self.used))

    def fits(self, n_cpus: int) -> bool:
        return self.max_cpu_free >= n_cpus if n_cpus else self.light_free > 0

    def has(self, worker: WorkerRecord, n_cpus: int) -> bool:
        """Room on ``worker`` for a task of ``n_cpus`` this round (none on a holder of
        an input that is not placed on: a retiring worker)."""
        i = self.index.get(worker)
        if i is None:
            return False
        if n_cpus:
            return n_cpus <= self.cores[i] and self.used[i] + n_cpus <= self.limit[i]
        return self.light[i] < LIGHT_LIMIT

    def starts_at_once(self, worker: WorkerRecord, n_cpus: int) -> bool:
        i = self.index[worker]
        return self.used[i] + n_cpus <= self.cores[i]

    def took(self, worker: WorkerRecord, n_cpus: int) -> None:
        i = self.index[worker]
        if n_cpus:
            self.used[i] += n_cpus
        else:
            light = self.light[i] + 1
            self.light[i] = light
            if light == LIGHT_LIMIT:
                self.light_free -= 1

    def least_loaded(self, n_cpus: int, task_type: str) -> WorkerRecord | None:
        """A worker with room for a task with no locality preference, or None."""
        if not n_cpus:
            return self._next_light(task_type)
        worker = None
        if self.idle_left:
            worker = self._next_core(n_cpus, task_type, self.cores)
            if worker is None and n_cpus == 1:
                self.idle_left = False   # no idle core anywhere: it stays so this round
        if worker is None:
            worker = self._next_core(n_cpus, task_type, self.limit)
        if worker is None:
            self.max_cpu_free = self._max_cpu_free()
        return worker

    def idle(self, n_cpus: int, task_type: str) -> WorkerRecord | None:
        """A worker that would start the task at once (light tasks: any with room)."""
        if not n_cpus:
            return self._next_light(task_type)
        if not self.idle_left:
            return None
        return self._next_core(n_cpus, task_type, self.cores)

    def _next_core(self, n_cpus: int, task_type: str,
                   limits: list[int]) -> WorkerRecord | None:
        """The next worker in turn whose used cores stay within ``limits`` (its cores:
        idle ones only; its overbooked cores: room to queue) with ``n_cpus`` more."""
        workers, used, cores = self.workers, self.used, self.cores
        count = len(workers)
        turn = self.core_turn
        for step in range(count):
            i = (turn + step) % count
            if n_cpus <= cores[i] and used[i] + n_cpus <= limits[i] \
                    and task_type in workers[i].task_types:
                self.core_turn = (i + 1) % count
                return workers[i]
        return None

    def _next_light(self, task_type: str) -> WorkerRecord | None:
        workers, light = self.workers, self.light
        count = len(workers)
        turn = self.light_turn
        for step in range(count):
            i = (turn + step) % count
            if light[i] < LIGHT_LIMIT and task_type in workers[i].task_types:
                self.light_turn = (i + 1) % count
                return workers[i]
        return None
