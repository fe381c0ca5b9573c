"""Executor processes that run ``python``-mode tasks outside the worker's interpreter.

Owns the executor child processes, the pipe protocol between the worker and
them, and the queue of task batches waiting for a free child. Each child runs
the tasks of a batch one after the other through
``hyperloom.worker.py_task.execute_python_task``. Every worker, one-core ones
included, runs its Python tasks here: a canceled task can always be stopped
(its child is killed), and user code never holds the worker's GIL.

Batches: the worker hands a child several tiny tasks at once when they queue
for the same core (``Executor``); the child answers them together (at least
every FLUSH_SECONDS), so a tiny task costs one pickle entry, not two pipe
messages and two thread switches. A child writes the index of the task it
runs into shared memory (``current``): when it dies, the task it ran fails,
and the batch's other unanswered tasks run again on its replacement.

Why not ``concurrent.futures.ProcessPoolExecutor``: a child that dies (user
code calling ``os._exit`` or crashing the interpreter) breaks that executor
for good, whereas here only the task that was running fails and the child is
replaced. A canceled task is dropped from the queue, or its child is killed
with what it started, and replaced (``cancel``).

Children are started with ``forkserver`` (``spawn`` where unavailable), never
``fork``: the worker holds a ZeroMQ context that must not cross fork().

Pipe protocol (both directions): one ``send_bytes`` with a pickled
``(fields, frames)`` tuple, where each data frame below INLINE_FRAME_LIMIT is
inline bytes, each larger one is ``None`` and follows as its own
``send_bytes`` (no extra copy of big buffers on the sending side), and each
one of SHARED_FRAME_BYTES or more is written once into a file of the pool's
directory in shared memory (``/dev/shm``) and travels as ``(path, size,
owned)``: the receiver maps it read-only, so a NumPy array reaches the other
process with at most one memcpy instead of a trip through the pipe in 64 KiB
pieces. A child unlinks what it maps at once. The worker keeps the files of
its children's results for as long as it holds their mapping
(``SharedFiles``), so a result that goes back to a child as another task's
input is not copied at all: the child maps the same file (``owned`` False).
Data objects travel in ``hyperloom.data`` wire form (meta + frames).
    worker -> child: ("run", [((fn_name, task_id, task_type, config, cpu_ids,
                      work_dir, pin, label, input metas), n_frames), ...])
                     or None: exit
    child -> worker: ("log", level, message, index of the task running or -1)
                     ("done", [(index, kind, payload, seconds, n_frames), ...])
                     where kind/payload: "data"/meta | "redirect"/(task_type,
                     config, metas) | "error"/message | "crash"/traceback
Log records travel to the worker and go to the running task's own ``ctx.log``,
so they land wherever the worker's logging sends them, when they happen.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import pickle
import selectors
import shutil
import signal
import tempfile
import threading
import time
import traceback
import weakref
from collections import deque
from concurrent.futures import Future

from ..data import KIND_PYOBJ, DataError, decode, encode
from .py_task import execute_python_task
from .taskdef import Redirect, TaskContext, TaskError

INLINE_FRAME_LIMIT = 64 * 1024
SHARED_FRAME_BYTES = 1024 * 1024
# A function closing over big data is not kept between tasks (memory).
CACHED_PICKLE_LIMIT = 1024 * 1024
CHILD_LOGGER = "hyperloom.worker.python"
# A child running a batch answers at least this often, so that a batch whose
# tasks turn out slow still reports each one soon after it ends.
FLUSH_SECONDS = 0.001


class PythonPoolError(Exception):
    """The pool cannot take the task (it is closed)."""


class _Job:
    __slots__ = ("future", "fields", "frames", "log", "canceled")

    def __init__(self, future: Future, fields, frames: list, log: logging.Logger):
        self.future = future
        self.fields = fields      # kept until answered: the job may have to run again
        self.frames = frames
        self.log = log
        self.canceled = False


class _Child:
    __slots__ = ("process", "conn", "current", "batch", "answered", "doomed")

    def __init__(self, process, conn, current):
        self.process = process
        self.conn = conn
        self.current = current    # shared: index of the job the child runs, -1 between
        self.batch = None         # the jobs it was sent, None when idle
        self.answered = 0         # how many of them have come back
        self.doomed = False       # killed to stop a task: it takes no further batch

    def job_at(self, index):
        """The job at ``index`` of the batch the child runs, if any."""
        if self.batch is None or not 0 <= index < len(self.batch):
            return None
        return self.batch[index]


class PythonPool:
    """``n_processes`` executor processes; ``submit`` returns a Future of the task's result.

    The future's result is a DataObject or a Redirect (its ``seconds`` attribute:
    how long the function ran); it raises TaskError when the task fails
    (including when its executor process dies), or RuntimeError when the task
    implementation has a bug. Done-callbacks run in the pool's reader thread.
    Records below ``log_level`` are dropped in the child.
    """

    def __init__(self, n_processes: int, log_level: int = logging.INFO):
        if n_processes < 1:
            raise ValueError(f"n_processes must be at least 1, got {n_processes}")
        methods = multiprocessing.get_all_start_methods()
        self._mp = multiprocessing.get_context("forkserver" if "forkserver" in methods
                                               else "spawn")
        self._log_level = log_level
        # Big frames cross to and from the children as files here (see the module doc).
        self._shared = SharedFiles(tempfile.mkdtemp(
            prefix="hyperloom-pool-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        self._lock = threading.Lock()  # guards _queue, _idle, _closed and each child's batch
        self._queue: deque = deque()   # batches (lists of jobs) waiting for a child
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
        current = self._mp.RawValue("q", -1)
        process = self._mp.Process(target=_child_main,
                                   args=(child_conn, self._log_level, current, self._shared.dir),
                                   daemon=True, name="hyperloom-python-executor")
        process.start()
        # Our copy of the child's end must go, or a dead child would never read as EOF.
        child_conn.close()
        return _Child(process, parent_conn, current)

    # ------------------------------------------------------------ submitting

    def submit(self, fn_name: str, ctx: TaskContext) -> Future:
        """Queue ``execute_python_task(fn_name, ctx)`` on a child process.

        May block while a large input is copied into a free child's pipe.
        """
        return self.submit_batch([(fn_name, ctx)])[0]

    def submit_batch(self, calls) -> list:
        """Queue ``[(fn_name, ctx), ...]`` to run one after the other in one child;
        one Future per call, in order."""
        jobs, futures = [], []
        for fn_name, ctx in calls:
            future = Future()
            futures.append(future)
            try:
                fields, frames = _job_message(fn_name, ctx)
            except Exception:  # e.g. an input PyObj that cannot be pickled
                future.set_exception(TaskError(
                    "An input cannot be sent to the Python executor process:\n"
                    + traceback.format_exc()))
                continue
            jobs.append(_Job(future, fields, frames, ctx.log))
        if jobs:
            self._enqueue(jobs)
        return futures

    def _enqueue(self, jobs, first=False) -> None:
        with self._lock:
            if self._closed:
                raise PythonPoolError("the Python executor pool is closed")
            if first:
                self._queue.appendleft(jobs)
            else:
                self._queue.append(jobs)
            child = self._idle.pop() if self._idle else None
        if child is not None:
            self._dispatch_next(child)

    def cancel(self, future: Future) -> None:
        """Stop the task of ``future``: drop it from the queue, or kill the executor
        process that has it (and what that process started). A replacement process
        starts and runs the batch's other tasks; the future fails with TaskError
        ("process died"), or gets its result if the task ended first."""
        if future.cancel():
            return  # it was still queued: _dispatch_next skips it
        with self._lock:  # so that the child cannot move on to another batch meanwhile
            for child in self._children:
                batch = child.batch
                if batch is None:
                    continue
                for job in batch[child.answered:]:
                    if job.future is future:
                        job.canceled = True
                        child.doomed = True
                        _kill_tree(child.process.pid)
                        return

    def _dispatch_next(self, child: _Child) -> None:
        """Give ``child`` the next queued batch, or make it idle."""
        with self._lock:
            child.batch, child.answered = None, 0
            if child.doomed:
                return  # it is being killed: its replacement takes the queue
            jobs = []
            while self._queue and not jobs and not self._closed:
                # False: cancelled while queued
                jobs = [job for job in self._queue.popleft()
                        if job.future.set_running_or_notify_cancel()]
            if not jobs:
                self._idle.append(child)
                return
            child.batch = jobs
        fields, frames = [], []
        for job in jobs:
            fields.append((job.fields, len(job.frames)))
            frames += job.frames
        _send_parts(child.conn, _pack(("run", fields), frames, self._shared))

    # ------------------------------------------------------------ replies

    def _read_replies(self) -> None:
        while True:
            for key, _ in self._selector.select():
                child = key.data
                if child is None:
                    return  # close() asked us to stop
                self._read_reply(child)

    def _read_reply(self, child: _Child) -> None:
        # A method of its own: the frames (big shared-memory mappings) go when it returns.
        try:
            fields, frames = _receive(child.conn, self._shared)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._on_child_died(child)
            return
        self._on_reply(child, fields, frames)

    def _on_reply(self, child: _Child, fields, frames) -> None:
        if fields[0] == "log":
            # A thread the user started may log after its task ended.
            job = child.job_at(fields[3])
            log = job.log if job is not None else logging.getLogger(CHILD_LOGGER)
            log.log(fields[1], "%s", fields[2])
            return
        batch = child.batch
        if fields[0] != "done" or batch is None:  # only if the child breaks the protocol
            logging.getLogger(CHILD_LOGGER).error("unexpected reply %r", fields[:1])
            return
        entries = fields[1]
        with self._lock:
            child.answered = entries[-1][0] + 1
            complete = child.answered >= len(batch)
        if complete:  # keep the child busy before the (possibly slow) decoding
            self._dispatch_next(child)
        position = 0
        for index, kind, payload, seconds, n_frames in entries:
            job = batch[index]
            job.future.seconds = seconds
            _settle(job.future, kind, payload, frames[position:position + n_frames])
            job.fields = job.frames = None
            position += n_frames

    def _on_child_died(self, child: _Child) -> None:
        # One critical section, so that submit() cannot hand this child a batch
        # that nobody would then run.
        with self._lock:
            if child in self._idle:
                self._idle.remove(child)
            running = child.current.value
            unanswered = list(enumerate(child.batch or ()))[child.answered:]
            child.batch = None
            closed = self._closed
        self._selector.unregister(child.conn)
        child.process.join(timeout=5)
        child.conn.close()
        died = TaskError(f"Python executor process died (exit code {child.process.exitcode})")
        again = []
        for index, job in unanswered:
            # The task it ran dies with it, unless we killed it for another one's cancel.
            if job.canceled or (index == running and not child.doomed) or closed:
                job.future.set_exception(died)
            else:
                again.append(job)
        if closed:
            return
        try:
            replacement = self._start_child()
        except Exception as error:  # e.g. out of processes, or the worker is being
            # stopped with its process group: run on with one child fewer
            logging.getLogger(CHILD_LOGGER).warning("cannot replace a Python executor: %r",
                                                    error)
            with self._lock:
                self._children.remove(child)
            replacement = None
        if replacement is not None:
            with self._lock:  # cancel() looks for jobs among the children
                self._children[self._children.index(child)] = replacement
            self._selector.register(replacement.conn, selectors.EVENT_READ, replacement)
        if again:
            with self._lock:
                self._queue.appendleft(again)
        if replacement is not None:
            self._dispatch_next(replacement)
        elif again:
            with self._lock:
                idle = self._idle.pop() if self._idle else None
            if idle is not None:
                self._dispatch_next(idle)

    # ------------------------------------------------------------ closing

    def close(self, timeout: float = 1.0) -> None:
        """Stop the children; queued and running tasks fail with TaskError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            unfinished = [job.future for batch in self._queue for job in batch]
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
            if child.batch is not None:
                unfinished += [job.future for job in child.batch[child.answered:]]
        for future in unfinished:
            if not future.done():
                future.set_exception(TaskError("the Python executor pool was closed"))
        self._selector.close()
        self._wakeup_send.close()
        self._wakeup_recv.close()
        shutil.rmtree(self._shared.dir, ignore_errors=True)

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

class SharedFiles:
    """The worker's side of shared-memory frames: which mappings are files of ours.

    A mapping made by ``receive`` stays registered (by id, with a weak reference)
    until it is garbage collected; its file is unlinked then."""

    def __init__(self, shm_dir: str):
        self.dir = shm_dir
        self._paths: dict = {}   # id(mmap) -> (weakref to it, path)
        self._lock = threading.Lock()

    def path_of(self, frame) -> str | None:
        owner = frame.obj if isinstance(frame, memoryview) else None
        if type(owner) is not mmap.mmap:
            return None
        with self._lock:
            entry = self._paths.get(id(owner))
        return entry[1] if entry is not None and entry[0]() is owner else None

    def keep(self, mapping, path: str) -> None:
        key = id(mapping)

        def forget(_ref):
            with self._lock:
                if self._paths.get(key, (None,))[0] is ref:
                    del self._paths[key]
            try:
                os.unlink(path)
            except OSError:
                pass

        ref = weakref.ref(mapping, forget)
        with self._lock:
            self._paths[key] = (ref, path)


def _pack(fields, frames=(), shared=None) -> list:
    """Message parts: the pickled header, then each large frame on its own; the
    biggest ones go through a shared-memory file (``shared``: a SharedFiles in the
    worker, the directory's path in a child)."""
    inline, large = [], []
    for frame in frames:
        nbytes = memoryview(frame).nbytes
        if nbytes < INLINE_FRAME_LIMIT:
            inline.append(frame if type(frame) is bytes else bytes(frame))
        elif shared is not None and nbytes >= SHARED_FRAME_BYTES:
            if isinstance(shared, str):
                inline.append((_to_shared_file(shared, frame), nbytes, True))
                continue
            path = shared.path_of(frame)
            inline.append((path, nbytes, False) if path is not None else
                          (_to_shared_file(shared.dir, frame), nbytes, True))
        else:
            inline.append(None)
            large.append(frame)
    return [pickle.dumps((fields, inline), pickle.HIGHEST_PROTOCOL)] + large


def _to_shared_file(shm_dir: str, frame) -> str:
    """Write ``frame`` into a new file of ``shm_dir`` (one copy); its path."""
    fd, path = tempfile.mkstemp(dir=shm_dir)
    try:
        view = memoryview(frame).cast("B")
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return path


def _from_shared_file(path: str, nbytes: int, owned: bool, keep=None) -> memoryview:
    """The frame in ``path``, mapped read-only without a copy. ``keep`` (the worker's
    SharedFiles) keeps the file for as long as the mapping lives; otherwise an
    ``owned`` file is unlinked now (the memory goes with the last view of it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mapping = mmap.mmap(fd, nbytes, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
        if keep is None and owned:
            os.unlink(path)
    if keep is not None:
        keep.keep(mapping, path)
    return memoryview(mapping)


def _send_parts(conn, parts) -> None:
    """Send a message; a dead peer is left for the reader to notice as EOF."""
    try:
        for part in parts:
            conn.send_bytes(part)
    except OSError:
        pass


def _receive(conn, keep=None):
    fields, frames = pickle.loads(conn.recv_bytes())
    return fields, [conn.recv_bytes() if frame is None else
                    _from_shared_file(*frame, keep) if type(frame) is tuple else frame
                    for frame in frames]


def _job_message(fn_name: str, ctx: TaskContext) -> tuple:
    frames = []
    metas = [encode(obj, frames)[0] for obj in ctx.inputs]
    fields = (fn_name, ctx.task_id, ctx.task_type, bytes(ctx.config), tuple(ctx.cpu_ids),
              ctx.work_dir, ctx.pin, ctx.label, metas)
    return fields, frames


def _decode_all(metas, frames) -> list:
    objects, position = [], 0
    for meta in metas:
        obj, position = decode(meta, frames, position)
        objects.append(obj)
    return objects


def _settle(future: Future, kind, payload, frames) -> None:
    """Complete ``future`` from a child's answer."""
    try:
        if kind == "data":
            future.set_result(_decode_all([payload], frames)[0])
        elif kind == "redirect":
            task_type, config, metas = payload
            future.set_result(Redirect(task_type, config, _decode_all(metas, frames)))
        elif kind == "error":
            future.set_exception(TaskError(payload))
        else:
            future.set_exception(RuntimeError(
                f"Python executor failed running the task:\n{payload}"))
    except DataError as error:
        future.set_exception(TaskError(f"Result from the Python executor is invalid: {error}"))


# ---------------------------------------------------------------- child side

class _PipeLogHandler(logging.Handler):
    """Sends each record to the worker, which logs it to the task's ctx.log."""

    def __init__(self, conn, send_lock: threading.Lock, current):
        super().__init__()
        self._conn = conn
        self._send_lock = send_lock
        self._current = current

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = _pack(("log", record.levelno, record.getMessage(), self._current.value))
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


def _child_main(conn, log_level: int, current, shm_dir: str) -> None:
    """Executor process: run batches until told to stop or the worker goes away."""
    # Ctrl-C reaches the whole process group; the worker decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send_lock = threading.Lock()  # user threads may log while a reply is sent
    log = logging.getLogger(CHILD_LOGGER)
    log.handlers[:] = [_PipeLogHandler(conn, send_lock, current)]
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
        if index == last or now - flushed >= FLUSH_SECONDS:
            try:
                parts = _pack(("done", entries), out_frames, shm_dir)
            except Exception:  # e.g. a result the pipe's pickle cannot take
                parts = _pack(("done", [(i, "error", "The result cannot leave the Python "
                                         "executor process:\n" + traceback.format_exc(), 0, 0)
                                        for i, *_ in entries]))
            with send_lock:
                _send_parts(conn, parts)
            entries, out_frames, flushed = [], [], now
    current.value = -1


def _run_job(fields, frames, log, functions: _FunctionCache) -> tuple:
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


def _encode_result(result) -> tuple:
    frames = []
    if isinstance(result, Redirect):
        metas = [encode(obj, frames)[0] for obj in result.inputs]
        return "redirect", (result.task_type, result.config, metas), frames
    meta, frames = encode(result, frames)
    # Pickled here, where the object lives: an unpicklable result fails this task only.
    frames = [bytes(frame) if memoryview(frame).nbytes < INLINE_FRAME_LIMIT else frame
              for frame in frames]
    return "data", meta, frames
