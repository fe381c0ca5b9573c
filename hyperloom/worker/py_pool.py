"""Executor processes that run ``python``-mode tasks in parallel on a multi-core worker.

Owns the executor child processes, the pipe protocol between the worker and
them, and the queue of tasks waiting for a free child. Each child runs one
task at a time through ``hyperloom.worker.py_task.execute_python_task``, the
same function a 1-core worker calls in a thread.

Why not ``concurrent.futures.ProcessPoolExecutor``: a child that dies (user
code calling ``os._exit`` or crashing the interpreter) breaks that executor
for good, whereas here only the task that was running fails and the child is
replaced; and a persistent child per pipe has about half its per-task
overhead (benchmarks/py_parallel.py). A canceled task is dropped from the
queue, or its child is killed with what it started, and replaced (``cancel``).
No batching: the worker runs at most one python task per reserved core, so the
queue rarely holds more tasks than there are children and latency, not
throughput, is what counts.

Children are started with ``forkserver`` (``spawn`` where unavailable), never
``fork``: the worker holds a ZeroMQ context that must not cross fork().

Pipe protocol (both directions): one ``send_bytes`` with a pickled
``(fields, frames)`` tuple, where each data frame below INLINE_FRAME_LIMIT is
inline bytes and each larger one is ``None`` and follows as its own
``send_bytes`` (no extra copy of big buffers on the sending side). Data
objects travel in ``hyperloom.data`` wire form (meta + frames).
    worker -> child: (fn_name, task_id, task_type, config, cpu_ids, work_dir,
                      pin, label, input metas)   or None: exit
    child -> worker: ("log", level, message)  any number, while the task runs
                     then one of ("data", meta) | ("redirect", task_type,
                     config, metas) | ("error", message) | ("crash", traceback)
Log records travel to the worker and go to the task's own ``ctx.log``, so they
land wherever the worker's logging sends them, when they happen.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import selectors
import signal
import threading
import traceback
from collections import deque
from concurrent.futures import Future

from ..data import KIND_PYOBJ, DataError, decode, encode
from .py_task import execute_python_task
from .taskdef import Redirect, TaskContext, TaskError

INLINE_FRAME_LIMIT = 64 * 1024
# A function closing over big data is not kept between tasks (memory).
CACHED_PICKLE_LIMIT = 1024 * 1024
CHILD_LOGGER = "hyperloom.worker.python"


class PythonPoolError(Exception):
    """The pool cannot take the task (it is closed)."""


class _Job:
    __slots__ = ("future", "parts", "log")

    def __init__(self, future: Future, parts: list, log: logging.Logger):
        self.future = future
        self.parts = parts
        self.log = log


class _Child:
    __slots__ = ("process", "conn", "job", "doomed")

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.job = None  # the task it runs now, None when idle
        self.doomed = False  # killed to stop its task: it takes no further task


class PythonPool:
    """``n_processes`` executor processes; ``submit`` returns a Future of the task's result.

    The future's result is a DataObject or a Redirect; it raises TaskError when
    the task fails (including when its executor process dies), or RuntimeError
    when the task implementation has a bug. Done-callbacks run in the pool's
    reader thread. Records below ``log_level`` are dropped in the child.
    """

    def __init__(self, n_processes: int, log_level: int = logging.INFO):
        if n_processes < 1:
            raise ValueError(f"n_processes must be at least 1, got {n_processes}")
        methods = multiprocessing.get_all_start_methods()
        self._mp = multiprocessing.get_context("forkserver" if "forkserver" in methods
                                               else "spawn")
        self._log_level = log_level
        self._lock = threading.Lock()  # guards _queue, _idle, _closed and each child.job
        self._queue: deque = deque()
        self._closed = False
        self._children = [self._start_child() for _ in range(n_processes)]
        self._idle = list(self._children)
        self._wakeup_recv, self._wakeup_send = self._mp.Pipe(duplex=False)
        # One long-lived selector, changed only by the reader thread once it
        # runs: building one per wait costs as much as a tiny task.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wakeup_recv, selectors.EVENT_READ, None)
        for child in self._children:
            self._selector.register(child.conn, selectors.EVENT_READ, child)
        self._reader = threading.Thread(target=self._read_replies, daemon=True,
                                        name="hyperloom-python-pool")
        self._reader.start()

    def _start_child(self) -> _Child:
        parent_conn, child_conn = self._mp.Pipe()
        process = self._mp.Process(target=_child_main, args=(child_conn, self._log_level),
                                   daemon=True, name="hyperloom-python-executor")
        process.start()
        # Our copy of the child's end must go, or a dead child would never read as EOF.
        child_conn.close()
        return _Child(process, parent_conn)

    # ------------------------------------------------------------ submitting

    def submit(self, fn_name: str, ctx: TaskContext) -> Future:
        """Queue ``execute_python_task(fn_name, ctx)`` on a child process.

        May block while a large input is copied into a free child's pipe.
        """
        future = Future()
        try:
            parts = _job_parts(fn_name, ctx)
        except Exception:  # e.g. an input PyObj that cannot be pickled
            future.set_exception(TaskError(
                "An input cannot be sent to the Python executor process:\n"
                + traceback.format_exc()))
            return future
        job = _Job(future, parts, ctx.log)
        with self._lock:
            if self._closed:
                raise PythonPoolError("the Python executor pool is closed")
            if not self._idle:
                self._queue.append(job)
                return job.future
            child = self._idle.pop()
            child.job = job
            job.future.set_running_or_notify_cancel()
        _send_parts(child.conn, job.parts)
        job.parts = None  # the inputs' buffers are the child's now
        return job.future

    def cancel(self, future: Future) -> None:
        """Stop the task of ``future``: drop it from the queue, or kill the executor
        process running it (and what that process started). A replacement process
        starts; the future fails with TaskError ("process died"), or gets its result
        if the task ended first."""
        if future.cancel():
            return  # it was still queued: _dispatch_next skips it
        with self._lock:  # so that the child cannot move on to another task meanwhile
            for child in self._children:
                if child.job is not None and child.job.future is future:
                    child.doomed = True
                    _kill_tree(child.process.pid)
                    return

    def _dispatch_next(self, child: _Child) -> None:
        """Give ``child`` the next queued task, or make it idle."""
        with self._lock:
            child.job = None
            if child.doomed:
                return  # it is being killed: its replacement takes the queue
            while self._queue and not self._closed:
                job = self._queue.popleft()
                if job.future.set_running_or_notify_cancel():  # False: cancelled meanwhile
                    child.job = job
                    break
            else:
                self._idle.append(child)
                return
        _send_parts(child.conn, job.parts)
        job.parts = None

    # ------------------------------------------------------------ replies

    def _read_replies(self) -> None:
        while True:
            for key, _ in self._selector.select():
                child = key.data
                if child is None:
                    return  # close() asked us to stop
                try:
                    fields, frames = _receive(child.conn)
                except (EOFError, OSError, pickle.UnpicklingError):
                    self._on_child_died(child)
                    continue
                self._on_reply(child, fields, frames)

    def _on_reply(self, child: _Child, fields, frames) -> None:
        job = child.job
        if fields[0] == "log":
            # A thread the user started may log after its task ended.
            log = job.log if job is not None else logging.getLogger(CHILD_LOGGER)
            log.log(fields[1], "%s", fields[2])
            return
        if job is None:  # cannot happen unless the child breaks the protocol
            logging.getLogger(CHILD_LOGGER).error("unexpected reply %r", fields[:1])
            return
        # Keep the child busy before the (possibly slow) decoding.
        self._dispatch_next(child)
        _settle(job.future, fields, frames)

    def _on_child_died(self, child: _Child) -> None:
        # One critical section, so that submit() cannot hand this child a task
        # that nobody would then fail.
        with self._lock:
            if child in self._idle:
                self._idle.remove(child)
            job, child.job = child.job, None
            closed = self._closed
        self._selector.unregister(child.conn)
        child.process.join(timeout=5)
        child.conn.close()
        if job is not None:
            job.future.set_exception(TaskError(
                f"Python executor process died (exit code {child.process.exitcode})"))
        if closed:
            return
        try:
            replacement = self._start_child()
        except Exception:  # e.g. out of processes: run on with one child fewer
            logging.getLogger(CHILD_LOGGER).exception("cannot replace a Python executor")
            with self._lock:
                self._children.remove(child)
            return
        with self._lock:  # cancel() looks for jobs among the children
            self._children[self._children.index(child)] = replacement
        self._selector.register(replacement.conn, selectors.EVENT_READ, replacement)
        self._dispatch_next(replacement)

    # ------------------------------------------------------------ closing

    def close(self, timeout: float = 1.0) -> None:
        """Stop the children; queued and running tasks fail with TaskError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unfinished = [job.future for job in self._queue]
            self._queue.clear()
        self._wakeup_send.send_bytes(b"")
        self._reader.join()
        for child in self._children:
            _send_parts(child.conn, [pickle.dumps((None, []))])
        for child in self._children:
            child.process.join(timeout)
            if child.process.is_alive():
                child.process.terminate()
                child.process.join()
            child.conn.close()
            if child.job is not None:
                unfinished.append(child.job.future)
        for future in unfinished:
            if not future.done():
                future.set_exception(TaskError("the Python executor pool was closed"))
        self._selector.close()
        self._wakeup_send.close()
        self._wakeup_recv.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (a canceled task's subprocesses too)."""
    import psutil  # here, not at the top: executor processes import this module too
    try:
        process = psutil.Process(pid)
        victims = process.children(recursive=True) + [process]
    except psutil.Error:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.Error:
            pass


# ---------------------------------------------------------------- messages

def _pack(fields, frames=()) -> list:
    """Message parts: the pickled header, then each large frame on its own."""
    inline, large = [], []
    for frame in frames:
        if memoryview(frame).nbytes < INLINE_FRAME_LIMIT:
            inline.append(bytes(frame))
        else:
            inline.append(None)
            large.append(frame)
    return [pickle.dumps((fields, inline), pickle.HIGHEST_PROTOCOL)] + large


def _send_parts(conn, parts) -> None:
    """Send a message; a dead peer is left for the reader to notice as EOF."""
    try:
        for part in parts:
            conn.send_bytes(part)
    except OSError:
        pass


def _receive(conn):
    fields, frames = pickle.loads(conn.recv_bytes())
    return fields, [conn.recv_bytes() if frame is None else frame for frame in frames]


def _job_parts(fn_name: str, ctx: TaskContext) -> list:
    frames = []
    metas = [encode(obj, frames)[0] for obj in ctx.inputs]
    fields = (fn_name, ctx.task_id, ctx.task_type, bytes(ctx.config), tuple(ctx.cpu_ids),
              ctx.work_dir, ctx.pin, ctx.label, metas)
    return _pack(fields, frames)


def _decode_all(metas, frames) -> list:
    objects, position = [], 0
    for meta in metas:
        obj, position = decode(meta, frames, position)
        objects.append(obj)
    return objects


def _settle(future: Future, fields, frames) -> None:
    """Complete ``future`` from a child's final reply."""
    kind = fields[0]
    try:
        if kind == "data":
            future.set_result(_decode_all([fields[1]], frames)[0])
        elif kind == "redirect":
            future.set_result(Redirect(fields[1], fields[2], _decode_all(fields[3], frames)))
        elif kind == "error":
            future.set_exception(TaskError(fields[1]))
        else:
            future.set_exception(RuntimeError(
                f"Python executor failed running the task:\n{fields[1]}"))
    except DataError as error:
        future.set_exception(TaskError(f"Result from the Python executor is invalid: {error}"))


# ---------------------------------------------------------------- child side

class _PipeLogHandler(logging.Handler):
    """Sends each record to the worker, which logs it to the task's ctx.log."""

    def __init__(self, conn, send_lock: threading.Lock):
        super().__init__()
        self._conn = conn
        self._send_lock = send_lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = _pack(("log", record.levelno, record.getMessage()))
        except Exception:
            self.handleError(record)
            return
        with self._send_lock:
            _send_parts(self._conn, parts)


class _FunctionCache:
    """The child's unpickled py_call functions, keyed by their pickle (LRU).

    Unpickling a function costs about as much as the rest of a tiny task, and
    every call of one py_task sends the same pickle. Sharing the object across
    calls is what the original did too: one py_value PyObj served every
    py_call on a worker. Lives in ``_child_main``'s frame, one per child.
    """

    def __init__(self, capacity: int = 64):
        self._capacity = capacity
        self._entries: dict = {}  # insertion order = recency

    def decode_inputs(self, fn_name: str, metas, frames) -> list:
        if (fn_name != "py_call" or not metas or metas[0][0] != KIND_PYOBJ
                or len(metas[0]) > 2 or len(frames[0]) > CACHED_PICKLE_LIMIT):
            return _decode_all(metas, frames)
        pickled = frames[0]
        obj = self._entries.pop(pickled, None)
        if obj is None:
            obj = decode(metas[0], frames)[0]
            if len(self._entries) >= self._capacity:
                del self._entries[next(iter(self._entries))]
        self._entries[pickled] = obj
        return [obj] + _decode_all(metas[1:], frames[1:])


def _child_main(conn, log_level: int) -> None:
    """Executor process: run jobs until told to stop or the worker goes away."""
    # Ctrl-C reaches the whole process group; the worker decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()  # user threads may log while a reply is sent
    log = logging.getLogger(CHILD_LOGGER)
    log.handlers[:] = [_PipeLogHandler(conn, send_lock)]
    log.setLevel(log_level)
    log.propagate = False
    functions = _FunctionCache()
    while True:
        try:
            fields, frames = _receive(conn)
        except (EOFError, OSError):
            return  # the worker is gone
        if fields is None:
            return
        parts = _run_job(fields, frames, log, functions)
        with send_lock:
            _send_parts(conn, parts)


def _run_job(fields, frames, log, functions: _FunctionCache) -> list:
    """Run one task; the reply's message parts (never raises)."""
    fn_name, task_id, task_type, config, cpu_ids, work_dir, pin, label, metas = fields
    try:
        inputs = functions.decode_inputs(fn_name, metas, frames)
    except DataError as error:  # e.g. a PyObj whose class this process cannot import
        return _pack(("error", f"Cannot load the inputs in the Python executor process: {error}"))
    try:
        ctx = TaskContext(task_id, task_type, config, inputs, cpu_ids, work_dir, pin, label, log)
        result = execute_python_task(fn_name, ctx)
    except TaskError as error:
        return _pack(("error", str(error)))
    except BaseException:  # a bug, not a task failure: the worker reports it as such
        return _pack(("crash", traceback.format_exc()))
    try:
        return _encode_result(result)
    except Exception:  # e.g. a wrapped object that cannot be pickled
        return _pack(("error", "The result cannot leave the Python executor process:\n"
                      + traceback.format_exc()))


def _encode_result(result) -> list:
    frames = []
    if isinstance(result, Redirect):
        metas = [encode(obj, frames)[0] for obj in result.inputs]
        return _pack(("redirect", result.task_type, result.config, metas), frames)
    meta, frames = encode(result, frames)
    return _pack(("data", meta), frames)
