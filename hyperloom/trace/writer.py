"""The trace writer: each process (the broker, every worker) appends its events to one
``<name>.ltrace`` file of a shared trace directory and is the only writer of it.

Why flat integer blocks (format.py): recording an event is then one ``list +=`` of a few
ints (~0.3 µs), retains no object the garbage collector has to scan, and the encoding is
paid once per block in C (msgpack), not once per event in Python.  A text line per event
cost 1–2 µs, several percent of a plan of tiny tasks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, Optional

import msgpack

from .format import FORMAT_NAME, FORMAT_VERSION, SCHEMAS, STRINGS, SUFFIX

# Integers of one kind held before they are written as a block: ~20k task events, a few MB.
BLOCK_INTS = 1 << 17
# Strings remembered for reuse; beyond that a new string (say a unique label per task) is
# written each time it occurs instead of growing the table without bound.
MAX_INTERNED = 1 << 16


class TraceWriter:
    """Appends events to ``<directory>/<name>.ltrace``: one writer per process and per file.

    Not thread-safe: the owner's event loop is the only caller.  Events wait in per-kind lists
    until ``flush``, ``sample`` (about once a second), ``close``, or until a kind has
    ``BLOCK_INTS`` integers; a process that dies loses at most that much.
    """

    def __init__(self, directory: str, name: str,
                 clock: Callable[[], int] = time.monotonic_ns,
                 wall_clock: Callable[[], int] = time.time_ns):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, name + SUFFIX)
        self.now = clock  # the time events carry; the worker reads it for a task's start
        self._file = open(self.path, "wb")
        self._packer = msgpack.Packer(use_bin_type=True)
        self._ints: dict[str, list[int]] = {kind: [] for kind in SCHEMAS}
        self._extras: dict[str, list[int]] = {kind: [] for kind in SCHEMAS}
        self._ran = self._ints["X"]
        self._strings: dict[str, int] = {}
        self._n_strings = 0
        self._new_strings: list[str] = []
        # Both clocks read back to back: the wall clock aligns files of different processes,
        # the monotonic one gives event times that never jump.
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "name": name,
                  "clock_ns": clock(), "wall_ns": wall_clock()}
        self._file.write(self._packer.pack(header))
        # On disk at once: a process that dies before its first flush still leaves a valid file.
        self._file.flush()

    # ---- broker side -------------------------------------------------------------------------

    def worker_joined(self, worker_id: int, address: str, cpus: int) -> None:
        self._add("W", (self.now(), worker_id, cpus, self._string(address)))

    def tasks_submitted(self,
                        tasks: Iterable[tuple[int, str, Optional[str], Sequence[int]]]) -> None:
        """Record a plan: (task_id, task_type, label or None, input_ids) per task."""
        now = self.now()
        ints, inputs = self._ints["T"], self._extras["T"]
        strings, string = self._strings, self._string
        for task_id, task_type, label, input_ids in tasks:
            type_index = strings.get(task_type)
            if type_index is None:
                type_index = string(task_type)
            if label:
                label_index = strings.get(label)
                if label_index is None:
                    label_index = string(label)
            else:
                label_index = -1
            ints += (now, task_id, type_index, label_index, len(input_ids))
            inputs += input_ids
            if len(ints) >= BLOCK_INTS:
                self._write_block("T")

    # ---- worker side -------------------------------------------------------------------------

    def task_started(self, task_id: int, cpu_ids: Sequence[int]) -> None:
        self._extras["S"] += cpu_ids
        self._add("S", (self.now(), task_id, len(cpu_ids)))

    def tasks_ran(self, runs: list[Any]) -> None:
        """Tasks that ran within one step of the worker's loop, as one flat list of six fields
        a task: start_ns, task_id, end_ns (both read from ``now``), result size, ok, cpu_ids.
        One event each instead of an ``S`` and an ``F``, one call per batch, and flat because
        this is the event of every tiny task: a tuple per task, alive until the batch ends,
        would be tracked and scanned by the garbage collector (measured: +1 µs a task).
        The writer takes ``runs`` over: it rewrites the list in place."""
        cpu_ids = runs[5::6]
        runs[5::6] = map(len, cpu_ids)
        runs[4::6] = map(int, runs[4::6])  # ok: True/False -> 1/0, as the format says
        self._ran += runs
        self._extras["X"].extend(chain.from_iterable(cpu_ids))
        if len(self._ran) >= BLOCK_INTS:
            self._write_block("X")

    def task_finished(self, task_id: int, size: int, ok: bool = True) -> None:
        self._add("F", (self.now(), task_id, size, 1 if ok else 0))

    def data_sent(self, data_id: int, nbytes: int, target: str) -> None:
        self._add("D", (self.now(), data_id, nbytes, self._string(target)))

    def data_received(self, data_id: int, nbytes: int, source: str,
                      seconds: Optional[float] = None) -> None:
        """``seconds``: how long receiving took, if the receiver knows (-1 in the file if not)."""
        duration = -1 if seconds is None else round(seconds * 1e9)
        self._add("R", (self.now(), data_id, nbytes, duration, self._string(source)))

    def sample(self, cpu_percent: float, mem_bytes: int) -> None:
        """Resource use of the process's node; also flushes, so a live trace lags ~1 s at most."""
        self._add("M", (self.now(), round(cpu_percent * 10), mem_bytes))
        self.flush()

    # ---- writing -----------------------------------------------------------------------------

    def _add(self, kind: str, fields: tuple[int, ...]) -> None:
        ints = self._ints[kind]
        ints += fields
        if len(ints) >= BLOCK_INTS:
            self._write_block(kind)

    def _string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._n_strings
            self._n_strings += 1
            self._new_strings.append(text)
            if index < MAX_INTERNED:
                self._strings[text] = index
        return index

    def _write_block(self, kind: str) -> None:
        if self._new_strings:  # before the block that may refer to them
            self._file.write(self._packer.pack(
                [STRINGS, len(self._new_strings), [], self._new_strings]))
            self._new_strings = []
        ints, extras = self._ints[kind], self._extras[kind]
        self._file.write(self._packer.pack([kind, len(ints) // len(SCHEMAS[kind]), ints, extras]))
        # Cleared in place: tasks_submitted holds the lists while it fills them.
        ints.clear()
        extras.clear()

    def flush(self) -> None:
        for kind, ints in self._ints.items():
            if ints:
                self._write_block(kind)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
