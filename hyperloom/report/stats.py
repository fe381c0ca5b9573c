"""The numbers behind the report, computed from a ``Trace`` with no plotting involved.

Lanes of the timeline, per-group and per-type duration tables, transfer totals per worker pair,
cumulative series, and the JSON summary embedded in the page all live here so they can be
tested without a browser.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional
from collections.abc import Callable, Iterable

from hyperloom.trace import Trace, TracedTask, Transfer


@dataclass(frozen=True)
class Lane:
    """One row of the timeline: a core of a worker, or (cpu None) its light tasks."""
    worker: int
    cpu: Optional[int]

    @property
    def name(self) -> str:
        return f"w{self.worker} " + ("light" if self.cpu is None else f"cpu {self.cpu}")


@dataclass(frozen=True)
class DurationRow:
    name: str
    count: int
    failed: int
    total: float
    mean: float
    longest: float


@dataclass(frozen=True)
class TransferRow:
    source: str
    target: str
    count: int
    nbytes: int


def lanes(trace: Trace) -> list[Lane]:
    """Per worker, in id order: a light-task lane, then one lane per core."""
    result = []
    for worker in trace.workers:
        result.append(Lane(worker.worker_id, None))
        result.extend(Lane(worker.worker_id, cpu) for cpu in range(worker.cpus))
    return result


def task_spans(task: TracedTask, lane_index: dict[Lane, int]) -> list[tuple[int, int]]:
    """Runs of adjacent lanes (first, last) a task occupies: its cores, or its light lane."""
    if not task.cpu_ids:
        row = lane_index[Lane(task.worker, None)]
        return [(row, row)]
    rows = sorted(lane_index[Lane(task.worker, cpu)] for cpu in set(task.cpu_ids))
    spans = [(rows[0], rows[0])]
    for row in rows[1:]:
        if row == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], row)
        else:
            spans.append((row, row))
    return spans


def task_end(task: TracedTask, trace: Trace) -> float:
    """When a task stopped occupying its lane; unfinished ones run to the end of the trace."""
    return trace.duration if task.end is None else task.end


def duration_table(trace: Trace, key: Callable[[TracedTask], str]) -> list[DurationRow]:
    """Count, failures and total/mean/longest durations per key, busiest (largest total) first."""
    buckets: dict[str, list[TracedTask]] = defaultdict(list)
    for task in trace.tasks:
        buckets[key(task)].append(task)
    rows = []
    for name, tasks in buckets.items():
        durations = [task_end(t, trace) - t.start for t in tasks]
        rows.append(DurationRow(name, len(tasks), sum(not t.ok for t in tasks), sum(durations),
                                sum(durations) / len(durations), max(durations)))
    return sorted(rows, key=lambda r: (-r.total, r.name))


def task_type_key(task: TracedTask) -> str:
    return task.task_type or "unknown"


def transfer_table(transfers: Iterable[Transfer]) -> list[TransferRow]:
    """Transfers and bytes per (source, target) pair, most bytes first."""
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for transfer in transfers:
        entry = totals[(transfer.source, transfer.target)]
        entry[0] += 1
        entry[1] += transfer.nbytes
    rows = [TransferRow(s, t, count, nbytes) for (s, t), (count, nbytes) in totals.items()]
    return sorted(rows, key=lambda r: (-r.nbytes, r.source, r.target))


def cumulative_transfers(transfers: list[Transfer], top: int = 8
                         ) -> dict[str, tuple[list[float], list[int]]]:
    """Cumulative bytes over time for the ``top`` busiest pairs (``a → b``), the rest as "other"."""
    busiest = {(r.source, r.target) for r in transfer_table(transfers)[:top]}
    series: dict[str, tuple[list[float], list[int]]] = {}
    for transfer in sorted(transfers, key=lambda x: x.time):
        pair = (transfer.source, transfer.target)
        name = f"{pair[0]} → {pair[1]}" if pair in busiest else "other"
        times, totals = series.setdefault(name, ([0.0], [0]))
        times.append(transfer.time)
        totals.append(totals[-1] + transfer.nbytes)
    return series


def groups(trace: Trace) -> list[str]:
    """Colour groups in first-start order, so colours stay stable as a run grows."""
    return list(dict.fromkeys(task.group for task in trace.tasks))


def summary(trace: Trace) -> dict:
    """The machine-readable facts embedded in the page (and checked by the tests)."""
    return {
        "n_tasks": len(trace.tasks),
        "n_failed": sum(1 for t in trace.tasks if not t.ok and t.end is not None),
        "n_unfinished": sum(1 for t in trace.tasks if t.end is None),
        "n_submitted": trace.n_submitted,
        "n_workers": len(trace.workers),
        "n_lanes": len(lanes(trace)),
        "groups": groups(trace),
        "n_transfers": len(trace.transfers),
        "bytes_transferred": sum(t.nbytes for t in trace.transfers),
        "n_samples": len(trace.samples),
        "duration": trace.duration,
        "bad_records": trace.bad_records,
    }


def human_bytes(nbytes: float) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
