"""The merged view of a trace directory, what ``read_trace`` returns and the report draws:
task executions, workers, transfers and resource samples, times in seconds from the
trace's first event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .format import label_group


@dataclass(frozen=True)
class TracedTask:
    """One execution of a task on a worker (a task re-run elsewhere appears twice)."""
    task_id: int
    task_type: Optional[str]      # None when the broker's file is missing
    label: Optional[str]
    worker: int
    cpu_ids: tuple[int, ...]      # empty for light tasks
    start: float
    end: Optional[float]          # None when the worker never reported the end
    ok: bool
    size: Optional[int] = None
    inputs: tuple[int, ...] = ()

    @property
    def group(self) -> str:
        """Colour group: the label's group, or the task type for unlabelled tasks."""
        if self.label:
            return label_group(self.label)
        return self.task_type or "unknown"


@dataclass(frozen=True)
class TracedWorker:
    worker_id: int
    address: Optional[str]        # None when the broker's file does not know the worker
    cpus: int


@dataclass(frozen=True)
class Transfer:
    """Data moved between processes; ends are ``worker-<id>`` when the address is a known worker."""
    data_id: int
    nbytes: int
    source: str
    target: str
    time: float                   # when it was sent (receiver-only: when receiving began)
    seconds: Optional[float] = None  # receive duration, when the receiver knew it


@dataclass(frozen=True)
class Sample:
    worker: Optional[int]         # None for the broker
    time: float
    cpu_percent: float
    mem_bytes: int


@dataclass
class Trace:
    tasks: list[TracedTask] = field(default_factory=list)
    workers: list[TracedWorker] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    n_submitted: int = 0
    duration: float = 0.0         # seconds from the earliest to the latest event
    bad_records: int = 0          # unreadable blocks and events skipped (e.g. cut by a crash)
