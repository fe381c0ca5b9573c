"""What the broker keeps for live dashboards, and the Snapshot it answers GetSnapshot with.

Cheap when nobody watches: task events, send times and per-label counters are
recorded only while a dashboard has asked for a snapshot within WATCH_SECONDS
(``active``); a cluster without a dashboard pays one attribute test per ended
task. When watching starts, one scan of the tasks the broker holds sets the
per-label counters; tasks finished and forgotten before that are only in the
clients' totals (the snapshot says how many, the page shows them as "earlier").

Times are the broker's monotonic clock; the snapshot carries ``now`` so the
dashboard can place events relative to it. A task's start is not known here:
events carry when its ComputeTasks left and when its report arrived (see
docs/dashboard.md for how the page estimates the start from them).

Sans-I/O: the server calls the ``on_*`` hooks and ``snapshot``; no sockets, no clocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..trace import label_group
from . import taskstate as ts
from .model import ClientRecord, Node, WorkerRecord

if TYPE_CHECKING:
    from .base import CoreBase

WATCH_SECONDS = 5.0         # recording stops this long after the last GetSnapshot
EVENT_CAPACITY = 20_000     # events kept between snapshots (oldest dropped; the page shows
#                             at most 20,000 task bars anyway)
MAX_GROUPS = 40             # label groups per client; more are counted as "(other groups)"
OTHER_GROUPS = "(other groups)"
LAST_FAILURES = 20
LAST_DEPARTURES = 64

# Event kinds, the first field after the sequence number.
TASK = "task"               # [seq, "task", worker id, client, group, sent_at, done_at, n_cpus,
#                              ok, local id]
TRANSFER = "transfer"       # [seq, "transfer", source worker id, target worker id, n objects,
#                              bytes, at]
WORKER = "worker"           # [seq, "worker", worker id, "joined" | "left" | "lost", at]


class DashboardFeed:
    def __init__(self, watch_seconds: float = WATCH_SECONDS, capacity: int = EVENT_CAPACITY):
        self.watch_seconds = watch_seconds
        self.active = False
        self.watch_until = 0.0
        self.events: deque[list[Any]] = deque(maxlen=capacity)   # [seq, kind, ...]
        self.seq = 0
        # task id -> when its ComputeTasks left (while active)
        self.sent_at: dict[int, float] = {}
        # client number -> {group: [total, finished, failed, canceled]}
        self.groups: dict[int, dict[str, list[int]]] = {}
        # (label, type) -> group, so each label is split once
        self._group_of: dict[tuple[str | None, str], str] = {}
        # (client record, label, type) -> its group's counts (fast path)
        self._counts_of: dict[tuple[ClientRecord, str | None, str], list[int]] = {}
        self.failures: deque[dict[str, Any]] = deque(maxlen=LAST_FAILURES)   # always: rare
        self.departed: deque[dict[str, Any]] = deque(maxlen=LAST_DEPARTURES)  # always: rare
        self.usage: dict[int, tuple[int, int]] = {}   # worker id -> (cpu percent, memory)
        self.worker_of_address: dict[str, int] = {}

    # ------------------------------------------------------------ watching

    def watch(self, state: CoreBase, now: float) -> None:
        """A dashboard asked: record (again) for the next WATCH_SECONDS."""
        if not self.active:
            self.active = True
            self._scan(state)
        self.watch_until = now + self.watch_seconds

    def tick(self, now: float) -> None:
        """Called now and then by the server: stop recording once nobody asks."""
        if self.active and now > self.watch_until:
            self.active = False
            self.sent_at.clear()
            self.groups.clear()
            self._group_of.clear()
            self._counts_of.clear()

    def _scan(self, state: CoreBase) -> None:
        """Counters for the tasks the broker holds now (once, when watching starts)."""
        self.groups.clear()
        self._counts_of.clear()
        for node in state.tasks.values():
            counts = self._counts(node)
            counts[0] += 1
            if node.state >= ts.FINISHED:
                counts[node.state - ts.FINISHED + 1] += 1
        for worker in state.workers.values():
            self.worker_of_address[worker.address] = worker.worker_id

    def _counts(self, node: Node) -> list[int]:
        counts = self._counts_of.get((node.client, node.label, node.type))
        if counts is None:
            counts = self._counts_of[(node.client, node.label, node.type)] = \
                self._counts_slow(node)
        return counts

    def _counts_slow(self, node: Node) -> list[int]:
        key = (node.label, node.type)
        group = self._group_of.get(key)
        if group is None:
            group = self._group_of[key] = (label_group(node.label) if node.label
                                           else node.type.rsplit("/", 1)[-1])
        groups = self.groups.setdefault(node.client.number, {})
        counts = groups.get(group)
        if counts is None:
            if len(groups) >= MAX_GROUPS and group != OTHER_GROUPS:
                return self._counts_other(groups)
            counts = groups[group] = [0, 0, 0, 0]
        return counts

    @staticmethod
    def _counts_other(groups: dict[str, list[int]]) -> list[int]:
        counts = groups.get(OTHER_GROUPS)
        if counts is None:
            counts = groups[OTHER_GROUPS] = [0, 0, 0, 0]
        return counts

    def _event(self, *fields: Any) -> None:
        self.seq += 1
        self.events.append([self.seq, *fields])

    # ------------------------------------------------------------ hooks (state.py)

    def on_tasks_added(self, nodes: Iterable[Node]) -> None:
        """New tasks of a client (a submit, or tasks the broker made); only while active."""
        for node in nodes:
            self._counts(node)[0] += 1

    def on_task_ended(self, node: Node, new_state: int) -> None:
        """``node`` became FINISHED, FAILED or CANCELED for the first time; only while active."""
        self._counts(node)[new_state - ts.FINISHED + 1] += 1
        self.sent_at.pop(node.id, None)

    def on_failed(self, node: Node, error: list[Any]) -> None:
        """A task failed with ``error`` = [failed id, worker, message]; always recorded."""
        self.failures.append({"client": node.client.number,
                              "id": protocol.local_id(node.id), "label": node.label,
                              "type": node.type, "worker": str(error[1]),
                              "message": str(error[2])})

    # ------------------------------------------------------------ hooks (server.py)

    def on_worker_joined(self, worker: WorkerRecord, now: float) -> None:
        self.worker_of_address[worker.address] = worker.worker_id
        self.usage.pop(worker.worker_id, None)
        if self.active:
            self._event(WORKER, worker.worker_id, "joined", now)

    def on_worker_gone(self, worker: WorkerRecord, left: bool, why: str, now: float) -> None:
        """Always recorded (rare), so a dashboard started later still sees who went."""
        kind = "left" if left else "lost"
        self.worker_of_address.pop(worker.address, None)
        cpu, memory = self.usage.pop(worker.worker_id, (None, None))
        self.departed.append({
            "id": worker.worker_id, "hostname": worker.hostname, "address": worker.address,
            "cpus": worker.cpus, "state": kind, "why": why, "at": now,
            "tasks_finished": worker.n_finished, "bytes_received": worker.bytes_received,
            "bytes_sent": worker.bytes_sent})
        if self.active:
            self._event(WORKER, worker.worker_id, kind, now)

    def on_usage(self, worker: WorkerRecord, cpu_percent: int, memory: int) -> None:
        self.usage[worker.worker_id] = (cpu_percent, memory)

    def on_compute_sent(self, entries: Iterable[list[Any]], now: float) -> None:
        """ComputeTasks left for a worker; only while active."""
        sent_at = self.sent_at
        for entry in entries:
            sent_at[entry[0]] = now

    def on_tasks_done(self, worker: WorkerRecord, tasks: dict[int, Node],
                      finished: list[Any], failed: list[Any], now: float) -> None:
        """A worker's report, before the state handles it (the nodes are still assigned).

        Per task while watching: kept lean (locals, no calls on the common path)."""
        events, sent_at, group_of = self.events, self.sent_at, self._group_of
        worker_id, seq, mask = worker.worker_id, self.seq, protocol.LOCAL_MASK
        for entries, ok in ((finished, True), (failed, False)):
            for entry in entries:
                node = tasks.get(entry[0]) if type(entry) is list and entry \
                    and type(entry[0]) is int else None
                if node is None or node.worker is not worker:
                    continue  # the state's handler reports the problem
                group = group_of.get((node.label, node.type))
                if group is None:
                    self._counts(node)  # fills the cache (a zero row if new, harmless)
                    group = group_of[(node.label, node.type)]
                seq += 1
                events.append([seq, TASK, worker_id, node.client.number, group,
                               sent_at.pop(node.id, None), now, node.n_cpus, ok, node.id & mask])
        self.seq = seq

    def on_sends(self, source: WorkerRecord, targets: dict[str, list[int]],
                 tasks: dict[int, Node], now: float) -> None:
        """SendData left for ``source``: one event per target; only while active."""
        for address, ids in targets.items():
            size = 0
            for data_id in ids:
                node = tasks.get(data_id)
                if node is not None:
                    size += node.size
            self._event(TRANSFER, source.worker_id, self.worker_of_address.get(address),
                        len(ids), size, now)

    # ------------------------------------------------------------ the answer

    def snapshot(self, state: CoreBase, since: int, now: float) -> dict[str, Any]:
        """Counters now and the events after ``since`` (a previous snapshot's ``seq``)."""
        self.watch(state, now)
        events = []
        for event in reversed(self.events):
            if event[0] <= since:
                break
            events.append(event)
        events.reverse()
        oldest = self.events[0][0] if self.events else self.seq + 1
        stats = state.stats()
        for worker in stats["workers"]:
            worker["cpu_percent"], worker["memory"] = self.usage.get(worker["id"], (None, None))
        return {
            "now": now, "seq": self.seq, "missed_events": since + 1 < oldest and since > 0,
            "events": events, "tasks": stats["tasks"], "workers": stats["workers"],
            "departed": list(self.departed), "unplaceable": stats["unplaceable"],
            "failures": list(self.failures),
            "clients": [self._client_entry(client) for client in state.clients.values()],
        }

    def _client_entry(self, client: ClientRecord) -> dict[str, Any]:
        groups = self.groups.get(client.number, {})
        return {"number": client.number, "done": client.n_done, "total": client.n_total,
                "groups": [[name, *counts] for name, counts in groups.items()]}
