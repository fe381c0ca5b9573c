"""The trace reader: parses the files of a trace directory and merges them into one ``Trace``.

``read_trace`` parses every file of a directory into one ``Trace`` whose times are seconds
relative to the earliest event, aligned across files through each header's wall-clock
time; ``read_file`` parses one file; ``dump`` prints files as text, an event a line
(``python -m hyperloom.trace PATH``).
"""

from __future__ import annotations

import os
import re
import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import IO, Any, Optional

import msgpack

from .format import FORMAT_NAME, FORMAT_VERSION, SCHEMAS, STRINGS, SUFFIX
from .model import Sample, Trace, TracedTask, TracedWorker, Transfer

_WORKER_NAME = re.compile(r"worker-(\d+)\Z")

# An event as decoded: its schema's fields in order (ints, strings, tuples of ints).
Event = tuple[Any, ...]
# One execution: (task, worker, cpu ids, start, end or None, ok, size or None)
Run = tuple[int, int, tuple[int, ...], float, Optional[float], bool, Optional[int]]


def _layout(schema: tuple[str, ...]) -> tuple[int, list[int], list[int], Optional[int]]:
    """(width, time field indices, string field indices, list field index or None)."""
    return (len(schema),
            [i for i, name in enumerate(schema) if name in ("t", "end")],
            [i for i, name in enumerate(schema) if name.endswith("$")],
            next((i for i, name in enumerate(schema) if name.endswith("*")), None))


_LAYOUTS = {kind: _layout(schema) for kind, schema in SCHEMAS.items()}


def worker_id_of(name: str) -> Optional[int]:
    """The worker id in a file name like ``worker-3``, or None for any other name."""
    match = _WORKER_NAME.match(name)
    return int(match.group(1)) if match else None


def read_trace(directory: str | os.PathLike[str]) -> Trace:
    """Parse every ``*.ltrace`` file of ``directory`` into one time-aligned ``Trace``."""
    files = [read_file(path) for path in _trace_files_in(directory)]
    first = [f.first_event for f in files if f.first_event is not None]
    last = [f.last_event for f in files if f.last_event is not None]
    origin = min(first, default=min(f.start_ns for f in files))
    assembler = _Assembler(origin)
    for parsed in files:
        assembler.feed(parsed)
    trace = assembler.result()
    trace.duration = (max(last, default=origin) - origin) / 1e9
    return trace


def _trace_files_in(directory: str | os.PathLike[str]) -> list[Path]:
    paths = sorted(Path(directory).glob("*" + SUFFIX))
    if not paths:
        raise FileNotFoundError(f"no {SUFFIX} files in {directory}")
    return paths


# ---- reading -----------------------------------------------------------------------------------

@dataclass
class TraceFile:
    """One file, parsed: its blocks, with times converted to the wall clock (ns since the epoch,
    kept as integers: a float of seconds since 1970 would round them to ~0.4 µs)."""
    name: str
    start_ns: int                                  # wall clock at the writer's start
    blocks: list[tuple[str, list[Event]]]          # (kind, events); an event's field 0 is its time
    bad_records: int = 0
    first_event: Optional[int] = None
    last_event: Optional[int] = None


def read_file(path: str | os.PathLike[str]) -> TraceFile:
    """Parse one ``.ltrace`` file; a block cut short by a crash or unreadable is counted, not
    fatal, but a file that does not start with a trace header is refused."""
    with open(path, "rb") as file:
        raw = file.read()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(raw) + 1)
    unpacker.feed(raw)
    try:
        header = next(unpacker)
    except (StopIteration, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a hyperloom trace file (bad header)")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: trace format version {header.get('version')}, "
                         f"expected {FORMAT_VERSION}")
    try:
        name = str(header["name"])
        clock_ns, wall_ns = int(header["clock_ns"]), int(header["wall_ns"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: not a hyperloom trace file (bad header)") from None
    parsed = TraceFile(name, wall_ns, [])
    decoder = _BlockDecoder(wall_ns - clock_ns)  # the writer's monotonic clock + offset = wall
    read_up_to = unpacker.tell()  # the end of the last whole object read
    try:
        for block in unpacker:
            read_up_to = unpacker.tell()
            decoded = decoder.decode(block)
            if decoded is None:
                parsed.bad_records += 1
            elif decoded[1]:
                parsed.blocks.append(decoded)
                kind, events = decoded
                low = min(e[0] for e in events)
                high = max(e[2] for e in events) if kind == "X" else max(e[0] for e in events)
                if parsed.first_event is None or low < parsed.first_event:
                    parsed.first_event = low
                if parsed.last_event is None or high > parsed.last_event:
                    parsed.last_event = high
    except ValueError:  # garbage in the stream: what follows cannot be framed
        parsed.bad_records += 1
        return parsed
    if read_up_to < len(raw):  # a block cut short: the writer died while writing it
        parsed.bad_records += 1
    return parsed


class _BlockDecoder:
    """Turns one file's blocks into events: tuples of the schema's fields, times on the wall
    clock (ns), strings looked up, and each ``*`` count replaced by its tuple of integers."""

    def __init__(self, clock_offset_ns: int):
        self._offset = clock_offset_ns
        self._strings: list[str] = []

    def decode(self, block: object) -> Optional[tuple[str, list[Event]]]:
        """(kind, events); no events for a kind this reader does not know (a newer writer's:
        skipping it keeps old readers useful); None for a malformed block."""
        if not (isinstance(block, list) and len(block) == 4 and isinstance(block[0], str)
                and isinstance(block[1], int) and isinstance(block[2], list)
                and isinstance(block[3], list)):
            return None
        kind, count, ints, extras = block
        if kind == STRINGS:
            if len(extras) != count or not all(isinstance(x, str) for x in extras):
                return None
            self._strings.extend(extras)
            return kind, []
        schema = SCHEMAS.get(kind)
        if schema is None:
            return kind, []
        width, time_fields, string_fields, list_field = _LAYOUTS[kind]
        if len(ints) != count * width:
            return None
        try:  # every item an int64: array checks it in C
            array("q", ints)
            array("q", extras)
        except (TypeError, OverflowError):
            return None
        offset, strings, n_strings = self._offset, self._strings, len(self._strings)
        events, cursor = [], 0
        for fields in zip(*[iter(ints)] * width):
            event = list(fields)
            for i in time_fields:
                event[i] += offset
            for i in string_fields:
                index = event[i]
                if not -1 <= index < n_strings:
                    return None
                event[i] = strings[index] if index >= 0 else None
            if list_field is not None:
                n = event[list_field]
                if n < 0 or cursor + n > len(extras):
                    return None
                event[list_field] = tuple(extras[cursor:cursor + n])
                cursor += n
            events.append(tuple(event))
        if cursor != len(extras):
            return None
        return kind, events


class _Assembler:
    """Folds the events of all files into the records of a ``Trace``."""

    def __init__(self, origin: int):  # wall clock ns of the earliest event
        self._origin = origin
        self._submitted: dict[int, tuple[str, Optional[str], tuple[int, ...]]] = {}
        self._joined: dict[int, tuple[str, int]] = {}
        self._worker_files: set[int] = set()
        # (worker, task) -> its starts and finishes; paired in time order once all are read,
        # since blocks of different kinds are not written in time order.
        self._starts: dict[tuple[int, int], list[tuple[float, tuple[int, ...]]]] = {}
        self._finishes: dict[tuple[int, int], list[tuple[float, int, bool]]] = {}
        self._runs: list[Run] = []
        # (data id, bytes, source, target, time)
        self._sent: list[tuple[int, int, str, str, float]] = []
        # (data id, bytes, source, target, time, seconds or None)
        self._received: list[tuple[int, int, str, str, float, Optional[float]]] = []
        self._samples: list[Sample] = []
        self._bad_records = 0
        # kind -> handler(worker id or None, file name, events)
        self._handlers: dict[str, Callable[[Optional[int], str, list[Event]], None]] = {
            "W": self._on_workers_joined, "T": self._on_tasks_submitted,
            "S": self._on_tasks_started, "F": self._on_tasks_finished,
            "X": self._on_tasks_ran, "D": self._on_data_sent,
            "R": self._on_data_received, "M": self._on_samples}

    def feed(self, parsed: TraceFile) -> None:
        worker = worker_id_of(parsed.name)
        if worker is not None:
            self._worker_files.add(worker)
        self._bad_records += parsed.bad_records
        origin = self._origin
        for kind, events in parsed.blocks:
            if kind in "SFX" and worker is None:
                self._bad_records += len(events)  # task events outside a worker file
                continue
            # Times become seconds since the trace's first event.
            if kind == "X":
                events = [((t - origin) / 1e9, task, (end - origin) / 1e9, *rest)
                          for t, task, end, *rest in events]
            else:
                events = [((t - origin) / 1e9, *rest) for t, *rest in events]
            self._handlers[kind](worker, parsed.name, events)

    def _on_workers_joined(self, _worker: Optional[int], _endpoint: str,
                           events: list[Event]) -> None:
        for _, worker_id, cpus, address in events:
            self._joined[worker_id] = (address, cpus)

    def _on_tasks_submitted(self, _worker: Optional[int], _endpoint: str,
                            events: list[Event]) -> None:
        submitted = self._submitted
        for _, task_id, task_type, label, inputs in events:
            submitted[task_id] = (task_type, label, inputs)

    def _on_tasks_started(self, worker: Optional[int], _endpoint: str,
                          events: list[Event]) -> None:
        assert worker is not None  # feed() passes task events of worker files only
        starts = self._starts
        for t, task_id, cpus in events:
            starts.setdefault((worker, task_id), []).append((t, cpus))

    def _on_tasks_finished(self, worker: Optional[int], _endpoint: str,
                           events: list[Event]) -> None:
        assert worker is not None  # (as above)
        finishes = self._finishes
        for t, task_id, size, ok in events:
            finishes.setdefault((worker, task_id), []).append((t, size, bool(ok)))

    def _on_tasks_ran(self, worker: Optional[int], _endpoint: str,
                      events: list[Event]) -> None:
        assert worker is not None  # (as above)
        self._runs.extend((task_id, worker, cpus, start, end, bool(ok), size)
                          for start, task_id, end, size, ok, cpus in events)

    def _on_data_sent(self, _worker: Optional[int], endpoint: str,
                      events: list[Event]) -> None:
        self._sent.extend((data_id, nbytes, endpoint, target or "", t)
                          for t, data_id, nbytes, target in events)

    def _on_data_received(self, _worker: Optional[int], endpoint: str,
                          events: list[Event]) -> None:
        self._received.extend((data_id, nbytes, source or "", endpoint, t,
                               duration / 1e9 if duration >= 0 else None)
                              for t, data_id, nbytes, duration, source in events)

    def _on_samples(self, worker: Optional[int], _endpoint: str,
                    events: list[Event]) -> None:
        self._samples.extend(Sample(worker, t, cpu_tenths / 10, memory)
                             for t, cpu_tenths, memory in events)

    def _pair_starts_and_finishes(self) -> list[Run]:
        """Each finish ends the latest open start of the same task on the same worker; a start
        left open is unfinished, a finish with nothing open (started before tracing) is bad."""
        runs: list[Run] = []
        starts, finishes = self._starts, self._finishes
        for key in starts.keys() | finishes.keys():
            worker, task_id = key
            started, finished = starts.get(key), finishes.get(key)
            if started and finished and len(started) == 1 == len(finished) \
                    and started[0][0] <= finished[0][0]:  # the common case: one run
                (start, cpus), (end, size, ok) = started[0], finished[0]
                runs.append((task_id, worker, cpus, start, end, ok, size))
                continue
            events: list[tuple[float, int, Any]] = sorted(
                [(t, 0, cpus) for t, cpus in self._starts.get(key, ())] +
                [(t, 1, (size, ok)) for t, size, ok in self._finishes.get(key, ())],
                key=lambda e: (e[0], e[1]))
            open_starts = []
            for t, is_finish, payload in events:
                if not is_finish:
                    open_starts.append((t, payload))
                elif open_starts:
                    start, cpus = open_starts.pop()
                    runs.append((task_id, worker, cpus, start, t, payload[1], payload[0]))
                else:
                    self._bad_records += 1
            runs.extend((task_id, worker, cpus, start, None, False, None)
                        for start, cpus in open_starts)
        return runs

    def result(self) -> Trace:
        runs = self._runs + self._pair_starts_and_finishes()
        tasks = [self._task(*run) for run in sorted(runs, key=lambda r: (r[3], r[1], r[0]))]
        samples = sorted(self._samples, key=lambda s: (s.time, s.worker is not None, s.worker or 0))
        return Trace(tasks=tasks, workers=self._workers(tasks), transfers=self._transfers(),
                     samples=samples, n_submitted=len(self._submitted),
                     bad_records=self._bad_records)

    def _task(self, task_id: int, worker: int, cpu_ids: tuple[int, ...], start: float,
              end: Optional[float], ok: bool, size: Optional[int]) -> TracedTask:
        task_type, label, inputs = self._submitted.get(task_id, (None, None, ()))
        return TracedTask(task_id, task_type, label, worker, cpu_ids, start, end, ok, size, inputs)

    def _workers(self, tasks: list[TracedTask]) -> list[TracedWorker]:
        # Every core a worker reported using gets a lane, even if the broker never announced the
        # worker or announced fewer cores.
        used: dict[int, int] = {}  # worker id -> cores
        for task in tasks:
            used[task.worker] = max(used.get(task.worker, 1), max(task.cpu_ids, default=0) + 1)
        workers = []
        for i in sorted(set(self._joined) | self._worker_files | set(used)):
            address, cpus = self._joined.get(i, (None, 1))
            workers.append(TracedWorker(i, address, max(cpus, used.get(i, 1))))
        return workers

    def _transfers(self) -> list[Transfer]:
        names = {address: f"worker-{wid}" for wid, (address, _) in self._joined.items()}
        pending: dict[tuple[int, int, str, str], list[tuple[float, Optional[float]]]] = {}
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
            transfers.extend(Transfer(*key, max(t - (seconds or 0.0), 0.0), seconds)
                             for t, seconds in rest)
        return sorted(transfers, key=attrgetter("time", "data_id"))


# ---- a file as text, for people ----------------------------------------------------------------

def dump(path: str | os.PathLike[str], out: IO[str] = sys.stdout) -> None:
    """Print a trace file (or every file of a directory) as text: the header, then one event per
    line, ``<kind> <µs since the file's start> <fields...>`` in the order they were written."""
    for file_path in _trace_files_in(path) if os.path.isdir(path) else [Path(path)]:
        parsed = read_file(file_path)
        print(f"# {file_path}: {parsed.name}, started at wall clock {parsed.start_ns / 1e9:.6f} s"
              + (f", {parsed.bad_records} unreadable records" if parsed.bad_records else ""),
              file=out)
        for kind, events in parsed.blocks:
            for event in events:
                t = (event[0] - parsed.start_ns) // 1000
                fields = [(f - parsed.start_ns) // 1000 if kind == "X" and i == 1 else f
                          for i, f in enumerate(event[1:])]
                print(kind, t, *(repr(f) if isinstance(f, str) or f is None else f
                                 for f in fields), file=out)
