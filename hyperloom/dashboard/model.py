"""The dashboard's sans-I/O core: broker snapshots in, the page's data out.

``on_snapshot`` folds one Snapshot (hyperloom/broker/snapshot.py) into what
the page shows: the history of task counts, the task stream of the last
minute, every worker ever seen (those that left or were lost stay, marked),
and progress per client and label group. ``page_data`` is the JSON the page
polls. No sockets, threads or clocks: the caller passes the wall time.

Task start times: the broker knows when it sent a task and when the worker's
report arrived, not when the task started (a worker queues a few tasks per
core). The stream places each finished task on the worker core ("lane") that
came free first and starts it at the later of its send time and that lane's
previous end; for tasks sent before the dashboard watched, the first snapshot
stands in for the send time. Reports are batched, so ends can be late by a
worker's report interval. The report (loom-report) has exact times.
"""

from __future__ import annotations

from collections import deque
from itertools import cycle
from typing import Any

from .. import protocol

STREAM_SECONDS = 60.0       # the task stream shows the last minute
HISTORY_SECONDS = 600.0     # task counts over the last ten minutes
MAX_BARS = 20_000           # newest task bars kept for the page (it must stay light)
STATES = ("waiting", "ready", "running", "finished", "failed")
EARLIER = "(before the dashboard)"

# Category20's strong colours first, then its light ones (as loom-report does), without its
# reds: red marks failures on the page.
_C20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a",
        "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
        "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")
PALETTE = _C20[0::2] + _C20[1::2]


class DashboardModel:
    def __init__(self, broker: str, slurm_job_name: str | None = None):
        self.broker = broker
        # the dashboard's own connection: not shown as a client
        self.own_client: int | None = None
        self.seq = 0                  # cursor for the next GetSnapshot
        self.snapshot: dict[str, Any] | None = None  # the latest one
        self.updated: float | None = None     # wall time of the latest snapshot
        self.status = "connecting"
        self.first_seen: float | None = None  # broker time of the first snapshot
        # (wall time, {state: count})
        self.history: deque[tuple[float, dict[str, int]]] = deque()
        # [worker id, lane, start, end, group, ok, client, id]
        self.bars: deque[list[Any]] = deque()
        # [at, source id, target id, n objects, bytes]
        self.transfers: deque[list[Any]] = deque()
        self.lanes: dict[int, list[float]] = {}  # worker id -> [broker time each core came free]
        # worker id -> row (the latest seen, gone or not)
        self.workers: dict[int, dict[str, Any]] = {}
        self.colors: dict[str, str] = {}  # label group -> colour, in first-seen order
        self._palette = cycle(PALETTE)
        self.slurm_job_name = slurm_job_name
        self.slurm: dict[str, Any] | None = (
            {"jobs": [], "error": None, "updated": None} if slurm_job_name else None)
        self.missed_events = False

    # ------------------------------------------------------------ events in

    def on_connected(self, client_number: int):
        """A (new) connection: maybe to a restarted broker, whose clock, event numbers and
        worker ids start over; what the broker still knows comes with the next snapshot."""
        self.own_client = client_number
        self.seq = 0
        self.first_seen = None
        for kept in (self.lanes, self.bars, self.transfers, self.workers):
            kept.clear()

    def on_broker_error(self, message: str):
        self.status = f"broker unreachable: {message}"

    def on_snapshot(self, snapshot: dict, wall_now: float):
        now = snapshot["now"]
        if self.first_seen is None:
            self.first_seen = now
        self.snapshot = snapshot
        self.updated = wall_now
        self.status = "connected"
        self.missed_events = self.missed_events or snapshot["missed_events"]
        self.seq = snapshot["seq"]
        self._update_workers(snapshot)
        for event in snapshot["events"]:
            if event[1] == "task":
                self._place_task(event)
            elif event[1] == "transfer":
                self.transfers.append([event[6], event[2], event[3], event[4], event[5]])
        self._record_history(snapshot, wall_now)
        self._prune(now, wall_now)

    def on_slurm(self, jobs: list, error: str | None, wall_now: float):
        self.slurm = {"jobs": jobs, "error": error, "updated": wall_now}

    def _update_workers(self, snapshot):
        for row in snapshot["departed"]:  # ids are never reused: a departed worker stays so
            self.workers[row["id"]] = {**self.workers.get(row["id"], {}), **row,
                                       "cpus_used": 0, "running": 0, "bytes_held": 0}
        live = set()
        for row in snapshot["workers"]:
            live.add(row["id"])
            self.workers[row["id"]] = dict(row, state="running")
            lanes = self.lanes.setdefault(row["id"], [])
            lanes.extend([float("-inf")] * (max(1, row["cpus"]) - len(lanes)))
        for worker_id, row in self.workers.items():
            if worker_id not in live and row.get("state") == "running":
                row["state"] = "gone"  # departed before a snapshot could say how

    def _place_task(self, event):
        _, _, worker_id, client, group, sent_at, done_at, n_cpus, ok, local_id = event
        lanes = self.lanes.setdefault(worker_id, [float("-inf")])
        need = min(max(1, n_cpus), len(lanes))
        chosen = sorted(range(len(lanes)), key=lanes.__getitem__)[:need]
        start = sent_at if sent_at is not None else self.first_seen
        start = min(done_at, max(start, max(lanes[i] for i in chosen)))
        for lane in chosen:
            lanes[lane] = done_at
            self.bars.append([worker_id, lane, start, done_at, group, ok, client, local_id])
        self.color(group)

    def color(self, group: str) -> str:
        color = self.colors.get(group)
        if color is None:
            color = self.colors[group] = next(self._palette)
        return color

    def _record_history(self, snapshot, wall_now):
        tasks = snapshot["tasks"]
        finished = failed = 0
        for client in self._clients(snapshot):
            failed_here = sum(g[3] for g in client["groups"])
            canceled = sum(g[4] for g in client["groups"])
            failed += failed_here
            finished += client["done"] - failed_here - canceled
        self.history.append((wall_now, {
            "waiting": tasks.get("waiting", 0), "ready": tasks.get("ready", 0),
            "running": tasks.get("assigned", 0), "finished": finished, "failed": failed}))

    def _prune(self, now, wall_now):
        while self.history and self.history[0][0] < wall_now - HISTORY_SECONDS:
            self.history.popleft()
        while self.bars and (self.bars[0][3] < now - STREAM_SECONDS or len(self.bars) > MAX_BARS):
            self.bars.popleft()
        while self.transfers and self.transfers[0][0] < now - STREAM_SECONDS:
            self.transfers.popleft()
        shown = {bar[0] for bar in self.bars}
        for worker_id in [w for w, row in self.workers.items() if row["state"] != "running"]:
            if worker_id not in shown:
                self.lanes.pop(worker_id, None)  # gone, and nothing of it left in the stream

    def _clients(self, snapshot):
        return [c for c in snapshot["clients"]
                if c["number"] != self.own_client and c["total"] > 0]

    # ------------------------------------------------------------ page data out

    def page_data(self) -> dict:
        snapshot, updated = self.snapshot, self.updated
        data: dict[str, Any] = {
            "broker": self.broker, "status": self.status, "updated": updated,
            "missed_events": self.missed_events, "slurm": self.slurm,
            "slurm_job_name": self.slurm_job_name}
        if snapshot is None or updated is None:  # both are set together, by on_snapshot
            return data
        data.update(
            tasks=snapshot["tasks"], progress=self.progress(),
            history=self._history_columns(updated),
            workers=[self.workers[i] for i in sorted(self.workers)],
            unplaceable=[dict(u, client=u["id"] >> protocol.CLIENT_SHIFT,
                              id=protocol.local_id(u["id"])) for u in snapshot["unplaceable"]],
            failures=list(reversed(snapshot["failures"])), colors=self.colors,
            **self.stream_columns(snapshot["now"]))
        return data

    def progress(self) -> list:
        """Per client: done / total, and finished / failed / total per label group."""
        entries = []
        for client in self._clients(self.snapshot):
            groups = [{"name": name, "total": total, "finished": finished, "failed": failed,
                       "canceled": canceled, "color": self.color(name)}
                      for name, total, finished, failed, canceled in sorted(client["groups"])]
            earlier_total = client["total"] - sum(g["total"] for g in groups)
            earlier_done = client["done"] - sum(g["finished"] + g["failed"] + g["canceled"]
                                                for g in groups)
            if earlier_total > 0:
                groups.append({"name": EARLIER, "total": earlier_total, "finished": earlier_done,
                               "failed": 0, "canceled": 0, "color": "#999999"})
            entries.append({"client": client["number"], "done": client["done"],
                            "total": client["total"], "groups": groups})
        return entries

    def _history_columns(self, updated: float) -> dict:
        """Task counts over time, times in seconds relative to ``updated``."""
        columns = {"t": [t - updated for t, _ in self.history]}
        for state in STATES:
            columns[state] = [counts[state] for _, counts in self.history]
        return columns

    def lane_names(self) -> dict:
        """Worker id -> the names of its lanes (w1.0, w1.1, ...), workers in id order."""
        return {worker_id: [f"w{worker_id}.{core}" for core in range(len(self.lanes[worker_id]))]
                for worker_id in sorted(self.lanes)}

    def stream_columns(self, now: float) -> dict:
        """The task stream as columns, times in seconds relative to ``now``, the broker time
        of the latest snapshot."""
        names = self.lane_names()
        bars: dict[str, list[Any]] = {
            k: [] for k in ("left", "right", "lane", "color", "group", "worker", "client",
                            "id", "ok")}
        failed: dict[str, list[Any]] = {"x": [], "lane": []}
        for worker_id, lane, start, end, group, ok, client, local_id in self.bars:
            lane_name = names[worker_id][lane] if worker_id in names \
                and lane < len(names[worker_id]) else f"w{worker_id}.{lane}"
            for key, value in (("left", start - now), ("right", end - now), ("lane", lane_name),
                               ("color", self.color(group)), ("group", group),
                               ("worker", worker_id), ("client", client), ("id", local_id),
                               ("ok", ok)):
                bars[key].append(value)
            if not ok:
                failed["x"].append(end - now)
                failed["lane"].append(lane_name)
        transfers: dict[str, list[Any]] = {"x": [], "y0": [], "y1": [], "bytes": []}
        for at, source, target, _, size in self.transfers:
            if source in names and target in names:
                transfers["x"].append(at - now)
                transfers["y0"].append(names[source][len(names[source]) // 2])
                transfers["y1"].append(names[target][len(names[target]) // 2])
                transfers["bytes"].append(size)
        # Factors run bottom to top: the first worker's first core on top.
        lanes = [name for worker_names in names.values() for name in worker_names]
        return {"stream": bars, "stream_failed": failed, "transfers": transfers,
                "lanes": lanes[::-1]}
