"""The Python executor process's side of ``py_pool``: run batches of tasks, answer.

Each child runs the tasks of a batch one after the other through
``hyperloom.worker.py_task.execute_python_task``, writing the index of the one
it runs into shared memory (``current``) so that the worker knows which task a
death takes with it, and answers at least every FLUSH_SECONDS.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from typing import Any

from ..data import KIND_PYOBJ, BytesLike, DataError, decode, encode
from .py_task import execute_python_task
from .py_wire import INLINE_FRAME_LIMIT, decode_all, pack, receive, send_parts
from .taskdef import Redirect, TaskContext, TaskError

# A function closing over big data is not kept between tasks (memory).
CACHED_PICKLE_LIMIT = 1024 * 1024
CHILD_LOGGER = "hyperloom.worker.python"
# A child running a batch answers at least this often, so that a batch whose
# tasks turn out slow still reports each one soon after it ends.
FLUSH_SECONDS = 0.001


class _PipeLogHandler(logging.Handler):
    """Sends each record to the worker, which logs it to the task's ctx.log."""

    def __init__(self, conn, send_lock: threading.Lock, current):
        super().__init__()
        self._conn = conn
        self._send_lock = send_lock
        self._current = current

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = pack(("log", record.levelno, record.getMessage(), self._current.value))
        except Exception:
            self.handleError(record)
            return
        with self._send_lock:
            send_parts(self._conn, parts)


class FunctionCache:
    """The child's unpickled py_call functions, keyed by their pickle (LRU).

    Unpickling a function costs about as much as the rest of a tiny task, and
    every call of one py_task sends the same pickle. Sharing the object across
    calls is what the original did too: one py_value PyObj served every
    py_call on a worker. Lives in ``child_main``'s frame, one per child.
    """

    def __init__(self, capacity: int = 64):
        self._capacity = capacity
        self._entries: dict = {}  # insertion order = recency

    def decode_inputs(self, fn_name: str, metas, frames) -> list:
        if (fn_name != "py_call" or not metas or metas[0][0] != KIND_PYOBJ
                or len(metas[0]) > 2 or len(frames[0]) > CACHED_PICKLE_LIMIT):
            return decode_all(metas, frames)
        pickled = frames[0]
        obj = self._entries.pop(pickled, None)
        if obj is None:
            obj = decode(metas[0], frames)[0]
            if len(self._entries) >= self._capacity:
                del self._entries[next(iter(self._entries))]
        self._entries[pickled] = obj
        return [obj] + decode_all(metas[1:], frames[1:])


def child_main(conn, log_level: int, current, shm_dir: str) -> None:
    """Executor process: run batches until told to stop or the worker goes away."""
    # Ctrl-C reaches the whole process group; the worker decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()  # user threads may log while a reply is sent
    log = logging.getLogger(CHILD_LOGGER)
    log.handlers[:] = [_PipeLogHandler(conn, send_lock, current)]
    log.setLevel(log_level)
    log.propagate = False
    functions = FunctionCache()
    while True:
        try:
            fields, frames = receive(conn)
        except (EOFError, OSError):
            return  # the worker is gone
        if fields is None:
            return
        _run_batch(conn, send_lock, fields[1], frames, log, functions, current, shm_dir)


def _run_batch(conn, send_lock, jobs, frames, log, functions, current, shm_dir) -> None:
    """Run the jobs in order; answer at least every FLUSH_SECONDS, and at the end."""
    entries, out_frames = [], []
    position, flushed, last = 0, time.monotonic(), len(jobs) - 1
    for index, (fields, n_frames) in enumerate(jobs):
        current.value = index
        started = time.perf_counter()
        kind, payload, result_frames = _run_job(fields, frames[position:position + n_frames],
                                                log, functions)
        entries.append((index, kind, payload, time.perf_counter() - started,
                        len(result_frames)))
        out_frames += result_frames
        position += n_frames
        now = time.monotonic()
        if index == last:
            # Before the last answer, not after: once it is read, the worker may hand
            # this process a new batch, and a death before the next write would blame
            # that batch's first task, which never started, for it.
            current.value = -1
        if index == last or now - flushed >= FLUSH_SECONDS:
            try:
                parts = pack(("done", entries), out_frames, shm_dir)
            except Exception:  # e.g. a result the pipe's pickle cannot take
                parts = pack(("done", [(i, "error", "The result cannot leave the Python "
                                         "executor process:\n" + traceback.format_exc(), 0, 0)
                                        for i, *_ in entries]))
            with send_lock:
                send_parts(conn, parts)
            entries, out_frames, flushed = [], [], now


def _run_job(fields, frames, log, functions: FunctionCache) -> tuple:
    """Run one task: ``(kind, payload, frames)`` of its answer (never raises)."""
    fn_name, task_id, task_type, config, cpu_ids, work_dir, pin, label, metas = fields
    try:
        inputs = functions.decode_inputs(fn_name, metas, frames)
    except DataError as error:  # e.g. a PyObj whose class this process cannot import
        return "error", f"Cannot load the inputs in the Python executor process: {error}", []
    try:
        ctx = TaskContext(task_id, task_type, config, inputs, cpu_ids, work_dir, pin, label, log)
        result = execute_python_task(fn_name, ctx)
    except TaskError as error:
        return "error", str(error), []
    except BaseException:  # a bug, not a task failure: the worker reports it as such
        return "crash", traceback.format_exc(), []
    try:
        return _encode_result(result)
    except Exception:  # e.g. a wrapped object that cannot be pickled
        return ("error", "The result cannot leave the Python executor process:\n"
                + traceback.format_exc(), [])


def _encode_result(result: Any) -> tuple[str, Any, list[BytesLike]]:
    frames: list[BytesLike] = []
    if isinstance(result, Redirect):
        metas = [encode(obj, frames)[0] for obj in result.inputs]
        return "redirect", (result.task_type, result.config, metas), frames
    meta, frames = encode(result, frames)
    # Pickled here, where the object lives: an unpicklable result fails this task only.
    frames = [bytes(frame) if memoryview(frame).nbytes < INLINE_FRAME_LIMIT else frame
              for frame in frames]
    return "data", meta, frames
