"""The broker's journal: what it needs to resume after a restart, as an append-only file.

Format (little endian)::

    header  b"HLOOMJNL" u32 journal_version u32 protocol_version
    record  u32 length  u32 crc32(payload)  payload (msgpack: [kind, ...])

A record is complete when its length and checksum agree; a reader stops at the
first that does not (a torn write after a power loss, a truncated copy) and says
how many bytes it dropped. A file whose header names another journal or
protocol version is refused with ``JournalError``.

The core never writes files: it calls a ``JournalRecorder`` (``NULL_JOURNAL``
when the broker runs without ``--journal``); ``JournalWriter`` is the one the
server gives it. Records are encoded into a buffer as the core emits them and
reach the file only in ``commit`` (group commit), which the server calls once
per loop iteration *before* it sends anything: see ``JournalWriter.commit``
for when it also fsyncs. Consecutive records of one kind (finished tasks,
releases) share one record, so a busy loop writes a few records per round,
not one per task.

Record kinds (``[kind, fields...]``):

    CLIENT    number, token                      a client session began
    END       number                             the session ended (Goodbye / expired)
    WORKER    id, address, cpus, types, hostname a worker joined
    LOST      id, kept                           a worker was lost (its data is gone);
                                                 kept: [id, worker id, ...], its data
                                                 that worker still holds (a copy)
    SUBMIT    number, symbols, labels, entries, load, more   a plan chunk (compaction)
    SUBMITTED number, header                     a plan chunk as received: the Submit
                                                 message's header bytes (not packed again)
    CUT       number                             the client's connection dropped while its
                                                 chunked plan came, or it abandoned that
                                                 plan (AbandonPlan): the chunks since its
                                                 last whole plan are dropped (a dropped
                                                 client sends it again, whole, on resuming)
    FINISHED  [id, worker id, size, length, ...] tasks that finished (flat)
    FAILED    id, error                          a task failed (its dependants follow)
    RELEASED  [id, ...]                          results the client released
    COUNTERS  next worker id, next client number, [[client, done, total, next broker id,
              accepted until], ...], task types  (compaction: what dropped history counted;
                                                 the types any worker provided, so a plan
                                                 sent before its workers rejoin is taken)
    EXPANDED  id, total cpus                     a dslice/dget expanded (with that many cores)
    RESTORE   deadline (wall clock, seconds)     a restart waits for its workers until then
    RESTORED                                     it stopped waiting (the missing ones: LOST)
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

import msgpack

from .. import protocol

log = logging.getLogger("hyperloom.broker")

MAGIC = b"HLOOMJNL"
JOURNAL_VERSION = 2   # 2: CUT, COUNTERS' accepted until
HEADER = struct.Struct("<8sII")
RECORD = struct.Struct("<II")
MAX_RECORD = protocol.MAX_HEADER_BYTES

CLIENT, END, WORKER, LOST, SUBMIT, FINISHED, FAILED, RELEASED, COUNTERS, SUBMITTED, \
    EXPANDED, RESTORE, RESTORED, CUT = range(1, 15)
KIND_NAMES = {CLIENT: "client", END: "end", WORKER: "worker", LOST: "lost", SUBMIT: "submit",
              FINISHED: "finished", FAILED: "failed", RELEASED: "released",
              COUNTERS: "counters", SUBMITTED: "submitted", EXPANDED: "expanded",
              RESTORE: "restore", RESTORED: "restored", CUT: "cut"}

# With records waiting, fsync at least this often even when no client waits on them.
SYNC_INTERVAL = 0.05


class JournalError(Exception):
    """A journal this broker cannot use (another version, not a journal at all)."""


class NullJournal:
    """Records nothing: the broker without ``--journal``."""

    def client(self, number: int, token: bytes) -> None: pass
    def client_end(self, number: int) -> None: pass
    def worker(self, worker_id: int, address: str, cpus: int, task_types: Iterable[str],
               hostname: str) -> None: pass
    def worker_lost(self, worker_id: int, kept: list[int]) -> None: pass
    def submit(self, number: int, symbols: list[str], labels: list[str | None],
               entries: list[Any], load: bool, more: bool) -> None: pass
    def submit_raw(self, number: int, header: bytes) -> None: pass
    def plan_cut(self, number: int) -> None: pass
    def finished(self, task_id: int, worker_id: int, size: int, length: int) -> None: pass
    def failed(self, task_id: int, error: list[Any]) -> None: pass
    def released(self, task_id: int) -> None: pass
    def expanded(self, task_id: int, total_cpus: int) -> None: pass
    def restore(self, deadline: float) -> None: pass
    def restored(self) -> None: pass


NULL_JOURNAL = NullJournal()


class JournalRecorder(NullJournal):
    """Encodes records into a buffer; the writer (or a test) takes them out.

    FINISHED and RELEASED events are kept as two flat lists and sealed into one
    record each (FINISHED first) when another kind comes or the buffer is taken,
    so a round writes a few records, not one per task. Order with every other
    kind is kept (replay depends on it). Between two other records, releases may
    go after finishes that came later: replay ends in the same state (a task
    finished after its release is finished and not held by the client either
    way; a finish after a release of one of its inputs only drops a reference
    the release drops too); a task released and later finished *again* had its
    data lost in between, which is a LOST record.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.n_records = 0
        self._finished: list[Any] = []
        self._released: list[int] = []
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def _record(self, payload: list[Any]) -> None:
        if self._finished or self._released:
            self._seal()
        self._append(payload)

    def _append(self, payload: list[Any]) -> None:
        body = self._pack(payload)
        self.buffer += RECORD.pack(len(body), zlib.crc32(body))
        self.buffer += body
        self.n_records += 1

    def _seal(self) -> None:
        if self._finished:
            run, self._finished = self._finished, []
            self._append([FINISHED, run])
        if self._released:
            ids, self._released = self._released, []
            self._append([RELEASED, ids])

    def take(self) -> bytes:
        """The encoded records since the last call."""
        if self._finished or self._released:
            self._seal()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def pending(self) -> bool:
        return bool(self.buffer or self._finished or self._released)

    def client(self, number: int, token: bytes) -> None:
        self._record([CLIENT, number, token])

    def client_end(self, number: int) -> None:
        self._record([END, number])

    def worker(self, worker_id: int, address: str, cpus: int, task_types: Iterable[str],
               hostname: str) -> None:
        self._record([WORKER, worker_id, address, cpus, list(task_types), hostname])

    def worker_lost(self, worker_id: int, kept: list[int]) -> None:
        self._record([LOST, worker_id, kept])

    def submit(self, number: int, symbols: list[str], labels: list[str | None],
               entries: list[Any], load: bool, more: bool) -> None:
        self._record([SUBMIT, number, symbols, labels, entries, load, more])

    def submit_raw(self, number: int, header: bytes) -> None:
        self._record([SUBMITTED, number, header])

    def plan_cut(self, number: int) -> None:
        self._record([CUT, number])

    def finished(self, task_id: int, worker_id: int, size: int, length: int) -> None:
        self._finished += (task_id, worker_id, size, length)

    def failed(self, task_id: int, error: list[Any]) -> None:
        self._record([FAILED, task_id, error])

    def released(self, task_id: int) -> None:
        self._released.append(task_id)

    def expanded(self, task_id: int, total_cpus: int) -> None:
        self._record([EXPANDED, task_id, total_cpus])

    def restore(self, deadline: float) -> None:
        self._record([RESTORE, deadline])

    def restored(self) -> None:
        self._record([RESTORED])


def header_bytes() -> bytes:
    return HEADER.pack(MAGIC, JOURNAL_VERSION, protocol.PROTOCOL_VERSION)


class JournalWriter(JournalRecorder):
    """The recorder the server gives the core, appending to ``path`` on ``commit``."""

    def __init__(self, path: str, sync_interval: float = SYNC_INTERVAL):
        super().__init__()
        self.path = path
        self.sync_interval = sync_interval
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if os.fstat(self.fd).st_size == 0:
            os.write(self.fd, header_bytes())
            os.fsync(self.fd)
        self.unsynced = False
        self.last_sync = time.monotonic()
        self.bytes_written = os.fstat(self.fd).st_size
        self.n_syncs = 0

    def commit(self, now: float, before_answers: bool) -> None:
        """Write what was recorded; fsync it if clients are about to see its effects.

        The schedule: every loop iteration writes its records (one ``write``). They
        are fsynced before the iteration sends anything to a client
        (``before_answers``: TasksFinished, TasksFailed, Welcome, Accepted...): a
        client is never told of a finished task, a failure, a session or a plan the
        journal could lose. Otherwise, with records unsynced, at most every
        ``sync_interval`` (what workers are told needs no fsync: after a crash they
        re-attach and report what they hold; the server sends it before the fsync).
        So a broker crash loses nothing a client saw.
        """
        self.write()
        self.sync(now, before_answers)

    def write(self) -> None:
        """Write what was recorded (one ``write`` a round: group commit), not synced."""
        if self.pending():
            data = memoryview(self.take())
            self.bytes_written += len(data)
            while data:  # a write may take less than all (a huge round, a signal)
                data = data[os.write(self.fd, data):]
            self.unsynced = True

    def sync(self, now: float, before_answers: bool) -> None:
        """fsync what was written if clients are about to see it, or it waited long enough."""
        if self.unsynced and (before_answers or now - self.last_sync >= self.sync_interval):
            os.fdatasync(self.fd)
            self.unsynced = False
            self.last_sync = now
            self.n_syncs += 1

    def close(self) -> None:
        if self.fd >= 0:
            self.commit(time.monotonic(), True)
            os.close(self.fd)
            self.fd = -1


def write_journal(path: str, records: Iterable[list[Any]]) -> int:
    """Replace the journal at ``path`` by ``records``, atomically (a crash leaves the old
    one or the new one); returns its size in bytes."""
    recorder = JournalRecorder()
    for record in records:
        recorder._record(record)
    data = header_bytes() + recorder.take()
    temporary = path + ".compacting"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return len(data)


@dataclass
class JournalContents:
    records: list[Any] = field(default_factory=list)
    size: int = 0                # bytes of the file
    good_bytes: int = 0          # bytes up to the end of the last complete record
    dropped_bytes: int = 0       # bytes after it (a damaged or torn tail)
    problem: str | None = None   # why reading stopped early


def read_journal(path: str) -> JournalContents:
    """Every complete record of the journal at ``path``, up to the first damaged one."""
    with open(path, "rb") as file:
        data = file.read()
    contents = JournalContents(size=len(data))
    if len(data) < HEADER.size:
        if data and not MAGIC.startswith(data[:len(MAGIC)]):
            raise JournalError(f"{path} is not a hyperloom journal")
        contents.problem = "the header is incomplete"
        contents.dropped_bytes = len(data)
        return contents
    magic, version, protocol_version = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise JournalError(f"{path} is not a hyperloom journal (no {MAGIC!r} header)")
    if version != JOURNAL_VERSION or protocol_version != protocol.PROTOCOL_VERSION:
        raise JournalError(
            f"{path} was written by another hyperloom (journal version {version}, protocol "
            f"version {protocol_version}); this broker reads journal version "
            f"{JOURNAL_VERSION}, protocol version {protocol.PROTOCOL_VERSION}: move it away "
            f"or start with another --journal path")
    position = HEADER.size
    unpack = msgpack.unpackb
    while position < len(data):
        if position + RECORD.size > len(data):
            contents.problem = f"a record header is cut off at byte {position}"
            break
        length, checksum = RECORD.unpack_from(data, position)
        start = position + RECORD.size
        if length > MAX_RECORD or start + length > len(data):
            contents.problem = f"the record at byte {position} is cut off"
            break
        body = data[start:start + length]
        if zlib.crc32(body) != checksum:
            contents.problem = f"the record at byte {position} fails its checksum"
            break
        try:
            record = unpack(body, raw=False, strict_map_key=False)
        except Exception as error:  # a checksum collision on garbage: stop as for damage
            contents.problem = f"the record at byte {position} does not decode: {error}"
            break
        contents.records.append(record)
        position = start + length
    contents.good_bytes = position
    contents.dropped_bytes = len(data) - position
    return contents


def describe(path: str) -> dict[str, Any]:
    """Counts per record kind and sizes (``python -m hyperloom.broker.journal PATH``)."""
    contents = read_journal(path)
    kinds: dict[str, int] = {}
    for record in contents.records:
        name = KIND_NAMES.get(record[0], str(record[0]))
        kinds[name] = kinds.get(name, 0) + 1
    n_finished = sum(len(r[1]) // 4 for r in contents.records if r[0] == FINISHED)
    return {"bytes": contents.size, "records": len(contents.records), "kinds": kinds,
            "finished_tasks": n_finished, "dropped_bytes": contents.dropped_bytes,
            "problem": contents.problem}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    parser = argparse.ArgumentParser(prog="python -m hyperloom.broker.journal",
                                     description="Describe a loom-broker journal: records "
                                                 "per kind, size, a damaged tail.")
    parser.add_argument("path")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(describe(args.path), indent=2))
    except (OSError, JournalError) as error:
        parser.exit(2, f"{error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
