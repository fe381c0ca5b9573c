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

The pipe protocol and shared-memory frames: ``py_wire``; the child side:
``py_child``. Log records travel to the worker and go to the running task's own
``ctx.log``, so they land wherever the worker's logging sends them, when they
happen.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import selectors
import shutil
import signal
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from ..data import BytesLike, DataError, DataObject, encode
from .py_child import CHILD_LOGGER, child_main
from .py_wire import SharedFiles, decode_all, pack, receive, send_parts
from .taskdef import Redirect, TaskContext, TaskError

# How long a child's replacement that failed to start waits for the pool to be closed
# (the worker stopping) before it is reported as a failure.
STOP_GRACE = 2.0
# How long a reader waits, after a child died of SIGTERM, for the worker to close the pool
# (the signal went to its whole process group) before it starts a replacement.
SIGTERM_GRACE = 0.5
# Exit codes of a child ended with the worker's process group: SIGTERM, or 255, which
# multiprocessing reports when the forkserver that would tell the real one died first.
GROUP_STOPPED = frozenset({-signal.SIGTERM, 255})


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
        self._mp = (multiprocessing.get_context("forkserver") if "forkserver" in methods
                    else multiprocessing.get_context("spawn"))
        self._log_level = log_level
        # Big frames cross to and from the children as files here (see the module doc).
        self._shared = SharedFiles("/dev/shm" if os.path.isdir("/dev/shm")
                                   else tempfile.gettempdir())
        self._lock = threading.Lock()  # guards _queue, _idle, _closed and each child's batch
        self._queue: deque[list[_Job]] = deque()   # batches (lists of jobs) waiting for a child
        self._closed = False
        self._closing = threading.Event()   # set with _closed, for a reader thread to wait on
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
        process = self._mp.Process(target=child_main,
                                   args=(child_conn, self._log_level, current, self._shared.dir),
                                   daemon=True, name="hyperloom-python-executor")
        process.start()
        # Our copy of the child's end must go, or a dead child would never read as EOF.
        child_conn.close()
        return _Child(process, parent_conn, current)

    # ------------------------------------------------------------ submitting

    def submit(self, fn_name: str, ctx: TaskContext) -> Future[DataObject | Redirect]:
        """Queue ``execute_python_task(fn_name, ctx)`` on a child process.

        May block while a large input is copied into a free child's pipe.
        """
        return self.submit_batch([(fn_name, ctx)])[0]

    def submit_batch(self, calls: Iterable[tuple[str, TaskContext]]
                     ) -> list[Future[DataObject | Redirect]]:
        """Queue ``[(fn_name, ctx), ...]`` to run one after the other in one child;
        one Future per call, in order."""
        jobs, futures = [], []
        for fn_name, ctx in calls:
            future: Future[DataObject | Redirect] = Future()
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
            requeued = self._find_queued(future)
            if requeued is None:
                self._kill_holder(future)
                return
            requeued.canceled = True  # queued again after its child died: dropped
        if not future.done():
            future.set_exception(TaskError("Canceled"))

    def _find_queued(self, future: Future):
        """The queued job of ``future``, or None (under _lock)."""
        for batch in self._queue:
            for job in batch:
                if job.future is future:
                    return job
        return None

    def _kill_holder(self, future: Future) -> None:
        """Kill the child whose batch holds ``future``'s unanswered job (under _lock)."""
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
            jobs: list[_Job] = []
            while self._queue and not jobs and not self._closed:
                jobs = [job for job in self._queue.popleft() if _claim(job)]
            if not jobs:
                self._idle.append(child)
                return
            child.batch = jobs
        fields, frames = [], []
        for job in jobs:
            fields.append((job.fields, len(job.frames)))
            frames += job.frames
        send_parts(child.conn, pack(("run", fields), frames, self._shared))

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
            fields, frames = receive(child.conn, self._shared)
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
        if not closed and child.process.exitcode in GROUP_STOPPED:
            # A SIGTERM to the worker's process group (a stopped cluster, scancel): the
            # worker closes this pool at once. Starting a replacement first asked the
            # forkserver's resource tracker, gone with the group, and Python warned
            # "resource_tracker: process died unexpectedly" on every other cluster stop.
            closed = self._closing.wait(SIGTERM_GRACE)
        died = TaskError(f"Python executor process died (exit code {child.process.exitcode})")
        again = []
        for index, job in unanswered:
            # The task it ran dies with it, unless we killed it for another one's cancel.
            if job.canceled or (index == running and not child.doomed) or closed:
                job.future.set_exception(died)
            else:
                again.append(job)
        if closed:
            with self._lock:  # its connection is closed: close() must not write to it
                self._children.remove(child)
            return
        try:
            replacement = self._start_child()
        except Exception as error:  # e.g. out of processes, or the worker is being
            # stopped with its process group: run on with one child fewer
            # A SIGTERM to the worker's process group (a stopped cluster, scancel) ends the
            # executors and their forkserver, so no replacement can start, and stops the
            # worker too, which closes this pool within a loop turn: not worth a warning.
            stopping = (child.process.exitcode in GROUP_STOPPED
                        or self._closing.wait(STOP_GRACE))
            logging.getLogger(CHILD_LOGGER).log(
                logging.DEBUG if stopping else logging.WARNING,
                "cannot replace a Python executor: %r", error)
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
        self._closing.set()
        self._wakeup_send.send_bytes(b"")
        self._reader.join()
        for child in self._children:
            send_parts(child.conn, [pickle.dumps((None, []))])
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


def _claim(job: _Job) -> bool:
    """Whether a queued job is to run: not canceled meanwhile. A job queued again
    after its child died is running already (its future says so)."""
    if job.canceled:
        return False
    return job.future.running() or job.future.set_running_or_notify_cancel()


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


def _job_message(fn_name: str, ctx: TaskContext) -> tuple[tuple[Any, ...], list[BytesLike]]:
    frames: list[BytesLike] = []
    metas = [encode(obj, frames)[0] for obj in ctx.inputs]
    fields = (fn_name, ctx.task_id, ctx.task_type, bytes(ctx.config), tuple(ctx.cpu_ids),
              ctx.work_dir, ctx.pin, ctx.label, metas)
    return fields, frames


def _settle(future: Future, kind, payload, frames) -> None:
    """Complete ``future`` from a child's answer."""
    try:
        if kind == "data":
            future.set_result(decode_all([payload], frames)[0])
        elif kind == "redirect":
            task_type, config, metas = payload
            future.set_result(Redirect(task_type, config, decode_all(metas, frames)))
        elif kind == "error":
            future.set_exception(TaskError(payload))
        else:
            future.set_exception(RuntimeError(
                f"Python executor failed running the task:\n{payload}"))
    except DataError as error:
        future.set_exception(TaskError(f"Result from the Python executor is invalid: {error}"))
