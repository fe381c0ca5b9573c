"""Trace files: the cheap line-oriented writer each process uses, and the reader that merges them.

Each process (the broker, every worker) owns one ``<name>.ltrace`` file in a shared trace directory
and is the only writer of it.  The format is specified in ``docs/trace-format.md``; in short: a
header line ``H <version> <wall-clock µs at start> <name>``, then one event per line, a one-letter
event code, the time in µs since the file's start (monotonic clock), then space-separated fields.
Strings are escaped so that they never contain a space or a newline.

``read_trace`` parses every file of a directory into one ``Trace`` whose times are seconds
relative to the earliest event, aligned across files through each header's wall-clock time.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

FORMAT_VERSION = 1
SUFFIX = ".ltrace"
BROKER_NAME = "broker"
_WORKER_NAME = re.compile(r"worker-(\d+)\Z")
# Big enough that a worker running tiny tasks only issues a write(2) every few thousand events.
_BUFFER_BYTES = 1 << 20

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", " ": "\\s"}
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r", "s": " "}
_ESCAPE_RE = re.compile(r"[\\\n\r ]")
_UNESCAPE_RE = re.compile(r"\\(.)")


def escape(text: str) -> str:
    """Encode a string as one field: no space, no newline (reversible with ``unescape``)."""
    if _ESCAPE_RE.search(text) is None:  # the common case pays one regex scan, no copies
        return text
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text)


def unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


def label_group(label: str) -> str:
    """A label's colour group: the prefix before the first ':' (whole label if none), stripped."""
    return label.split(":", 1)[0].strip()


class TraceWriter:
    """Appends events to ``<directory>/<name>.ltrace``: one writer per process and per file.

    Not thread-safe: the owner's event loop is the only caller.  Events sit in the file object's
    buffer until ``flush``, ``sample`` (about once a second) or ``close``.
    """

    def __init__(self, directory: str, name: str,
                 clock: Callable[[], int] = time.monotonic_ns,
                 wall_clock: Callable[[], int] = time.time_ns):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, name + SUFFIX)
        self._clock = clock
        self._file = open(self.path, "w", encoding="utf-8", newline="\n", buffering=_BUFFER_BYTES)
        # Both clocks read back to back: the wall clock aligns files of different processes,
        # the monotonic one gives event times that never jump.
        self._origin_ns = clock()
        self._escaped = {}
        self._file.write(f"H {FORMAT_VERSION} {wall_clock() // 1000} {escape(name)}\n")
        # On disk at once: a process that dies before its first flush still leaves a valid file.
        self._file.flush()

    def _now_us(self) -> int:
        return (self._clock() - self._origin_ns) // 1000

    # ---- broker side -------------------------------------------------------------------------

    def worker_joined(self, worker_id: int, address: str, cpus: int) -> None:
        self._file.write(f"W {self._now_us()} {worker_id} {cpus} {escape(address)}\n")

    def tasks_submitted(self,
                        tasks: Iterable[tuple[int, str, Optional[str], Sequence[int]]]) -> None:
        """Record a plan: (task_id, task_type, label or None, input_ids) per task."""
        now = self._now_us()
        write = self._file.write
        escaped = self._escaped  # types and labels repeat: escape each once
        for task_id, task_type, label, input_ids in tasks:
            inputs = "".join([f" {i}" for i in input_ids])
            kind = escaped.get(task_type)
            if kind is None:
                kind = escaped[task_type] = escape(task_type)
            if label:
                tail = escaped.get(label)
                if tail is None:
                    tail = " " + escape(label)
                    if len(escaped) < 4096:  # unique labels per task must not pile up
                        escaped[label] = tail
            else:
                tail = ""
            write(f"T {now} {task_id} {kind} {len(input_ids)}{inputs}{tail}\n")

    # ---- worker side -------------------------------------------------------------------------

    def task_started(self, task_id: int, cpu_ids: Sequence[int]) -> None:
        if cpu_ids:
            self._file.write(f"S {self._now_us()} {task_id} {' '.join(map(str, cpu_ids))}\n")
        else:
            self._file.write(f"S {self._now_us()} {task_id}\n")

    def now_us(self) -> int:
        """The writer's clock, for ``task_ran``'s start."""
        return self._now_us()

    def task_ran(self, task_id: int, cpu_ids: Sequence[int], start_us: int, size: int,
                 ok: bool = True) -> None:
        """A task that started and finished within one step of the owner's loop: one line
        instead of ``S`` and ``F`` (most tiny tasks; halves the cost of tracing them)."""
        cpus = "".join(f" {c}" for c in cpu_ids)
        self._file.write(f"X {start_us} {task_id} {self._now_us() - start_us} {size} "
                         f"{1 if ok else 0}{cpus}\n")

    def task_finished(self, task_id: int, size: int, ok: bool = True) -> None:
        self._file.write(f"F {self._now_us()} {task_id} {size} {1 if ok else 0}\n")

    def data_sent(self, data_id: int, nbytes: int, target: str) -> None:
        self._file.write(f"D {self._now_us()} {data_id} {nbytes} {escape(target)}\n")

    def data_received(self, data_id: int, nbytes: int, source: str, seconds: float) -> None:
        self._file.write(f"R {self._now_us()} {data_id} {nbytes} {round(seconds * 1e6)} "
                         f"{escape(source)}\n")

    def sample(self, cpu_percent: float, mem_bytes: int) -> None:
        """Resource use of the process's node; also flushes, so a live trace lags ~1 s at most."""
        self._file.write(f"M {self._now_us()} {cpu_percent:.1f} {mem_bytes}\n")
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---- the merged view ---------------------------------------------------------------------------

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
    seconds: Optional[float] = None  # receive duration, when the receiver traced it


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
    bad_lines: int = 0            # unparsable lines skipped (e.g. a line cut by a crash)


def worker_id_of(name: str) -> Optional[int]:
    """The worker id in a file name like ``worker-3``, or None for any other name."""
    match = _WORKER_NAME.match(name)
    return int(match.group(1)) if match else None


def read_trace(directory: str | os.PathLike) -> Trace:
    """Parse every ``*.ltrace`` file of ``directory`` into one time-aligned ``Trace``."""
    paths = sorted(Path(directory).glob("*" + SUFFIX))
    if not paths:
        raise FileNotFoundError(f"no {SUFFIX} files in {directory}")
    files = [_parse_file(path) for path in paths]
    event_times = [t for f in files for _, t, _ in f.events]
    origin = min(event_times, default=min(f.start_us for f in files))
    assembler = _Assembler(origin)
    for parsed in files:
        assembler.feed(parsed)
    trace = assembler.result()
    trace.duration = (max(event_times, default=origin) - origin) / 1e6
    return trace


# ---- reading -----------------------------------------------------------------------------------

@dataclass
class _ParsedFile:
    name: str
    start_us: int                                  # wall clock at the writer's start
    events: list[tuple[str, int, list[str]]]       # (letter, absolute wall µs, fields)
    bad_lines: int


def _parse_file(path: Path) -> _ParsedFile:
    # newline="\n": labels may hold other line separators (\r is escaped, \u2028 is not) that
    # universal-newline reading would split on.
    with open(path, encoding="utf-8", errors="replace", newline="\n") as file:
        header = file.readline().rstrip("\n").split(" ")
        if len(header) != 4 or header[0] != "H":
            raise ValueError(f"{path}: not a hyperloom trace file (bad header)")
        if header[1] != str(FORMAT_VERSION):
            raise ValueError(f"{path}: trace format version {header[1]}, expected {FORMAT_VERSION}")
        start_us = int(header[2])
        events, bad_lines = [], 0
        for line in file:
            # A line without its newline was cut by a crash mid-write: its fields may be truncated.
            parts = line[:-1].split(" ") if line.endswith("\n") else []
            try:
                events.append((parts[0], start_us + int(parts[1]), parts[2:]))
            except (IndexError, ValueError):
                bad_lines += 1
    return _ParsedFile(unescape(header[3]), start_us, events, bad_lines)


class _Assembler:
    """Folds the events of all files into the records of a ``Trace``."""

    def __init__(self, origin_us: int):
        self._origin_us = origin_us
        self._submitted: dict[int, tuple[str, Optional[str], tuple[int, ...]]] = {}
        self._joined: dict[int, tuple[str, int]] = {}
        self._worker_files: set[int] = set()
        self._open: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
        self._runs: list[tuple] = []
        self._sent: list[tuple] = []
        self._received: list[tuple] = []
        self._samples: list[Sample] = []
        self._bad_lines = 0
        self._handlers = {"W": self._on_worker_joined, "T": self._on_task_submitted,
                          "S": self._on_task_started, "F": self._on_task_finished,
                          "X": self._on_task_ran,
                          "D": self._on_data_sent, "R": self._on_data_received,
                          "M": self._on_sample}

    def feed(self, parsed: _ParsedFile) -> None:
        worker = worker_id_of(parsed.name)
        if worker is not None:
            self._worker_files.add(worker)
        endpoint = parsed.name
        self._bad_lines += parsed.bad_lines
        for letter, t_us, fields in parsed.events:
            handler = self._handlers.get(letter)
            if handler is None:
                continue  # an event from a newer writer: skipping keeps old readers useful
            try:
                handler(worker, endpoint, (t_us - self._origin_us) / 1e6, fields)
            except (IndexError, ValueError, KeyError):  # KeyError: a finish with no start
                self._bad_lines += 1

    def _on_worker_joined(self, _worker, _endpoint, _t, fields):
        self._joined[int(fields[0])] = (unescape(fields[2]), int(fields[1]))

    def _on_task_submitted(self, _worker, _endpoint, _t, fields):
        n_inputs = int(fields[2])
        inputs = tuple(int(x) for x in fields[3:3 + n_inputs])
        if len(inputs) != n_inputs or len(fields) > 4 + n_inputs:
            raise ValueError("input count does not match")
        label = unescape(fields[3 + n_inputs]) if len(fields) > 3 + n_inputs else None
        self._submitted[int(fields[0])] = (unescape(fields[1]), label, inputs)

    def _on_task_started(self, worker, _endpoint, t, fields):
        if worker is None:
            raise ValueError("task event outside a worker file")
        self._open[(worker, int(fields[0]))] = (t, tuple(int(c) for c in fields[1:]))

    def _on_task_finished(self, worker, _endpoint, t, fields):
        start, cpu_ids = self._open.pop((worker, int(fields[0])))
        self._runs.append((int(fields[0]), worker, cpu_ids, start, t, fields[2] == "1",
                           int(fields[1])))

    def _on_task_ran(self, worker, _endpoint, t, fields):
        if worker is None:
            raise ValueError("task event outside a worker file")
        self._runs.append((int(fields[0]), worker, tuple(int(c) for c in fields[4:]), t,
                           t + int(fields[1]) / 1e6, fields[3] == "1", int(fields[2])))

    def _on_data_sent(self, _worker, endpoint, t, fields):
        self._sent.append((int(fields[0]), int(fields[1]), endpoint, unescape(fields[2]), t))

    def _on_data_received(self, _worker, endpoint, t, fields):
        seconds = int(fields[2]) / 1e6
        self._received.append((int(fields[0]), int(fields[1]), unescape(fields[3]), endpoint,
                               t, seconds))

    def _on_sample(self, worker, _endpoint, t, fields):
        self._samples.append(Sample(worker, t, float(fields[0]), int(fields[1])))

    def result(self) -> Trace:
        runs = self._runs + [(task_id, worker, cpus, start, None, False, None)
                             for (worker, task_id), (start, cpus) in self._open.items()]
        tasks = [self._task(*run) for run in sorted(runs, key=lambda r: (r[3], r[1], r[0]))]
        samples = sorted(self._samples, key=lambda s: (s.time, s.worker is not None, s.worker or 0))
        return Trace(tasks=tasks, workers=self._workers(tasks), transfers=self._transfers(),
                     samples=samples, n_submitted=len(self._submitted), bad_lines=self._bad_lines)

    def _task(self, task_id, worker, cpu_ids, start, end, ok, size) -> TracedTask:
        task_type, label, inputs = self._submitted.get(task_id, (None, None, ()))
        return TracedTask(task_id, task_type, label, worker, cpu_ids, start, end, ok, size, inputs)

    def _workers(self, tasks: list[TracedTask]) -> list[TracedWorker]:
        # Every core a worker reported using gets a lane, even if the broker never announced the
        # worker or announced fewer cores.
        used = {}
        for task in tasks:
            used[task.worker] = max(used.get(task.worker, 1), max(task.cpu_ids, default=0) + 1)
        workers = []
        for i in sorted(set(self._joined) | self._worker_files | set(used)):
            address, cpus = self._joined.get(i, (None, 1))
            workers.append(TracedWorker(i, address, max(cpus, used.get(i, 1))))
        return workers

    def _transfers(self) -> list[Transfer]:
        names = {address: f"worker-{wid}" for wid, (address, _) in self._joined.items()}
        pending: dict[tuple, list] = {}
        for data_id, nbytes, source, target, t, seconds in self._received:
            key = (data_id, nbytes, names.get(source, source), target)
            pending.setdefault(key, []).append((t, seconds))
        transfers = []
        for data_id, nbytes, source, target, t in self._sent:
            key = (data_id, nbytes, source, names.get(target, target))
            # Both ends traced the same move: keep one record, with the receiver's duration.
            matches = pending.get(key)
            seconds = matches.pop(0)[1] if matches else None
            transfers.append(Transfer(*key, t, seconds))
        for key, rest in pending.items():
            transfers.extend(Transfer(*key, max(t - seconds, 0.0), seconds) for t, seconds in rest)
        return sorted(transfers, key=lambda x: (x.time, x.data_id))
