"""The worker's sans-I/O core: its registration, data store, tasks waiting for inputs or cores.

Every message from the broker is an event here (``on_compute``, ``on_data``,
``on_remove``, ``on_cancel``, ``on_steal``, ``on_send_data``, ``on_upload``,
``on_welcome``, ``on_error``, ``on_shutdown``); ``take_startable()`` hands out
tasks whose inputs are all here and whose cores are free, in arrival order.
What the broker must hear is collected in ``finished``/``failed`` until the
server flushes it; what must go to peers or clients is returned to the server,
which only encodes and sends it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..protocol import INLINE_RESULT_BYTES, ComputeTask, DataSend

if TYPE_CHECKING:
    from ..data import DataObject

log = logging.getLogger("hyperloom.worker")

NO_LONGER_HERE = "the data is no longer on its worker"


class WorkerTask:
    __slots__ = ("id", "type", "config", "input_ids", "n_cpus", "label", "is_result",
                 "missing", "cpu_ids", "canceled", "owner", "checkpoint_path")

    def __init__(self, task_id: int, task_type: str, config: bytes, input_ids: list[int],
                 n_cpus: int, label: str | None, is_result: bool = False,
                 checkpoint_path: str | None = None) -> None:
        self.id = task_id
        self.type = task_type
        self.config = config
        self.input_ids = input_ids
        self.n_cpus = n_cpus
        self.label = label
        self.is_result = is_result
        self.missing = 0              # inputs not here yet
        self.cpu_ids: tuple[int, ...] = ()  # core slots while it runs
        self.canceled = False
        self.owner: WorkerCore | None = None  # the core that accepted it
        self.checkpoint_path = checkpoint_path

    def __repr__(self) -> str:
        return f"<WorkerTask {self.id} {self.type}>"


class WorkerCore:
    def __init__(self, cpus: int) -> None:
        self.cpus = cpus
        self.worker_id: int | None = None   # from Welcome: None while not registered
        self.refusal: str | None = None     # a fatal Error's message: the broker refused us
        self.shutdown_requested = False
        self.free_cpus = list(range(cpus))  # slots; the executor maps them to cores
        self.store: dict[int, DataObject] = {}
        self.waiting_for: dict[int, list[WorkerTask]] = {}   # data id -> tasks that need it
        self.queued: deque[WorkerTask] = deque()      # tasks whose inputs just became complete
        self.queued_cpu: deque[WorkerTask] = deque()  # core-requesting tasks waiting for cores
        self.tasks: dict[int, WorkerTask] = {}        # not yet reported
        self.tombstones: set[int] = set()             # data removed before it arrived
        self.finished: list[list[int]] = []           # [id, size, length] to report
        self.failed: list[list[Any]] = []             # [id, message] to report
        self.results: list[tuple[int, DataObject]] = []   # small results sent along
        self.stolen: list[int] = []                   # ids given back to the broker

    # ------------------------------------------------------------ events

    def on_compute(self, entries: Iterable[ComputeTask]) -> None:
        """Accept ComputeTasks entries (lists in ComputeTask's field order: the broker
        builds them, the worker trusts them)."""
        store = self.store
        for task_id, task_type, config, input_ids, n_cpus, label, is_result, checkpoint \
                in entries:
            task = WorkerTask(task_id, task_type, config, input_ids, n_cpus, label, is_result,
                              checkpoint)
            task.owner = self
            self.tasks[task_id] = task
            missing = 0
            for data_id in input_ids:
                if data_id not in store:
                    missing += 1
                    waiters = self.waiting_for.get(data_id)
                    if waiters is None:
                        self.waiting_for[data_id] = [task]
                    else:
                        waiters.append(task)
            task.missing = missing
            if not missing:
                self.queued.append(task)

    def on_data(self, data_id: int, obj: DataObject) -> None:
        if data_id in self.tombstones:
            self.tombstones.discard(data_id)
            return
        self.store[data_id] = obj
        self._arrived(data_id)

    def _arrived(self, data_id: int) -> None:
        waiters = self.waiting_for.pop(data_id, None)
        if waiters:
            for task in waiters:
                task.missing -= 1
                if task.missing == 0 and not task.canceled:
                    self.queued.append(task)

    def on_remove(self, ids: Iterable[int]) -> None:
        store = self.store
        for data_id in ids:
            if store.pop(data_id, None) is None and data_id in self.waiting_for:
                self.tombstones.add(data_id)

    def on_cancel(self, ids: Iterable[int]) -> None:
        for task_id in ids:
            task = self.tasks.pop(task_id, None)
            if task is not None:
                task.canceled = True  # dropped when dequeued; a running one is not reported

    def on_steal(self, ids: Iterable[int]) -> None:
        """Give back the tasks among ``ids`` that have not started."""
        wanted = set(ids)
        kept: deque[WorkerTask] = deque()
        for task in self.queued_cpu:
            if task.id in wanted and not task.canceled:
                self.tasks.pop(task.id, None)
                self.stolen.append(task.id)
            else:
                kept.append(task)
        self.queued_cpu = kept

    # ------------------------------------------------------------ registration

    def on_welcome(self, worker_id: int) -> None:
        self.worker_id = worker_id
        log.info("registered as worker %d", worker_id)

    def on_error(self, message: str, fatal: bool) -> None:
        log.error("broker: %s", message)
        if fatal:
            self.refusal = message

    def on_shutdown(self) -> None:
        log.info("the broker asked this worker to shut down")
        self.shutdown_requested = True

    # ------------------------------------------------------------ data for others

    def on_send_data(self, sends: Iterable[DataSend]
                     ) -> list[tuple[str, list[tuple[int, DataObject]]]]:
        """SendData: ``[(target address, [(id, DataObject)])]`` to push, of what is here."""
        store = self.store
        pushes = []
        for address, ids in sends:
            objects = [(i, store[i]) for i in ids if i in store]
            if len(objects) < len(ids):
                log.error("asked to send data this worker does not hold: %s",
                          [i for i in ids if i not in store])
            pushes.append((address, objects))
        return pushes

    def on_upload(self, ids: Iterable[int]) -> list[tuple[int, DataObject | None]]:
        """Upload: ``[(id, DataObject or None)]``; None for what is not (any more) here."""
        store = self.store
        return [(data_id, store.get(data_id)) for data_id in ids]

    # ------------------------------------------------------------ tasks

    def take_startable(self) -> list[WorkerTask]:
        """Tasks to start now, with ``cpu_ids`` allocated.

        Light tasks (no core requested) always start; core-requesting ones
        start in arrival order while their cores are free.
        """
        started = []
        queued = self.queued
        while queued:
            task = queued.popleft()
            if task.canceled:
                continue
            if task.n_cpus:
                self.queued_cpu.append(task)
            else:
                started.append(task)
        queued_cpu = self.queued_cpu
        free = self.free_cpus
        while queued_cpu:
            task = queued_cpu[0]
            if task.canceled:
                queued_cpu.popleft()
                continue
            n_cpus = task.n_cpus
            if n_cpus > len(free):
                break
            task.cpu_ids = tuple(free[:n_cpus])
            del free[:n_cpus]
            queued_cpu.popleft()
            started.append(task)
        return started

    def take_followers(self, leader: WorkerTask, accept: Callable[[WorkerTask], bool],
                       limit: int) -> list[WorkerTask]:
        """Queued one-core tasks that ``accept`` lets run right after ``leader`` on its
        core, in arrival order (at most ``limit``; stops at the first refused one).
        The core is freed when the last of them is done: it moves to that task."""
        followers: list[WorkerTask] = []
        queued_cpu = self.queued_cpu
        while queued_cpu and len(followers) < limit:
            task = queued_cpu[0]
            if task.canceled:
                queued_cpu.popleft()
                continue
            if task.n_cpus != 1 or not accept(task):
                break
            queued_cpu.popleft()
            followers.append(task)
        if followers:
            followers[-1].cpu_ids, leader.cpu_ids = leader.cpu_ids, ()
        return followers

    def inputs_of(self, task: WorkerTask) -> list[DataObject]:
        store = self.store
        return [store[data_id] for data_id in task.input_ids]

    def on_task_done(self, task: WorkerTask, result: DataObject | None = None,
                     error: str | None = None) -> None:
        """A started task ended: store its result (or failure) and free its cores."""
        if task.owner is not self:
            return  # started before this worker re-registered: void
        if task.cpu_ids:
            self.free_cpus.extend(task.cpu_ids)
            task.cpu_ids = ()
        if task.canceled or self.tasks.pop(task.id, None) is None:
            return
        if error is not None:
            self.failed.append([task.id, error])
        else:
            assert result is not None  # an ended task has a result or an error
            self.store[task.id] = result
            if self.waiting_for:
                # A task here waits for it as pushed data: its holder was lost before the
                # push arrived (a failed bulk fetch), and the broker computed it again here.
                self._arrived(task.id)
            self.finished.append([task.id, result.size, result.length])
            if task.is_result and result.size <= INLINE_RESULT_BYTES:
                self.results.append((task.id, result))

    def take_reports(self) -> tuple[list[list[int]], list[list[Any]],
                                    list[tuple[int, DataObject]], list[int]]:
        """``(finished, failed, results, stolen)`` since the last call."""
        reports = self.finished, self.failed, self.results, self.stolen
        self.finished, self.failed, self.results, self.stolen = [], [], [], []
        return reports

    def rejoining(self) -> tuple[WorkerCore, list[list[int]], list[int]]:
        """For a broker this worker re-attaches to: ``(core, held, running)``.

        ``core`` keeps the data and the tasks already started (they finish and are
        reported as usual); tasks not started are dropped (the broker places them again)
        and unsent reports too (finished results are in ``held``: ``[id, size, length]``;
        failures run again). ``running`` are the ids of the started tasks.
        """
        core = WorkerCore(self.cpus)
        core.store = self.store
        waiting = {id(t) for waiters in self.waiting_for.values() for t in waiters}
        not_started = {id(t) for t in (*self.queued, *self.queued_cpu)} | waiting
        running = []
        for task in self.tasks.values():
            if id(task) in not_started or task.canceled:
                task.canceled = True
                continue
            task.owner = core
            core.tasks[task.id] = task
            for cpu in task.cpu_ids:
                core.free_cpus.remove(cpu)
            running.append(task.id)
        held = [[data_id, obj.size, obj.length] for data_id, obj in self.store.items()]
        return core, held, running

    def check_invariants(self) -> None:
        for data_id, waiters in self.waiting_for.items():
            assert data_id not in self.store
            assert all(t.missing > 0 for t in waiters)
        assert len(set(self.free_cpus)) == len(self.free_cpus)
