"""Runs started tasks where their mode says, and hands completions back to the loop.

``inline`` tasks run right away in the loop (their result is returned);
``thread`` tasks run in a thread pool; ``python`` tasks run in a pool of
executor processes, one per core (so user Python code is not serialised by
the worker's GIL, and a canceled one can be stopped by killing its process).
Completions from other threads are queued and the loop is woken through a
pipe it polls, so the loop owns every socket and all worker state.

Tiny Python tasks travel in batches: once the tasks of one function (a py_call
on one function object, or an extension task type) have been seen to run in
under BATCH_TASK_SECONDS, the tasks of that kind queued behind a starting one
for the same core go to its executor process with it, to run one after the
other on that core (``WorkerCore.take_followers``). A batch costs one message
each way instead of one per task, and its results reach the broker together.
Slow functions are never batched, so a queued task stays free to be stolen by
an idle worker.

Thread tasks (``run`` programs above all) batch the same way: once a kind (a
run task's program) has been seen to run in under BATCH_TASK_SECONDS, the tiny
thread tasks queued behind a starting one for its core run after it in the
same worker thread, which reports what finished at least every
REPORT_SECONDS. Measured with 2 one-core workers on `run("true")`: one thread
hand-off, one loop wake-up and one TasksDone per task cost more CPU (worker,
broker and client together) than the program's spawn itself
(benchmarks/README.md, "Programs").

One exception, decided by measurement (benchmarks/README.md, "Python tasks"):
on a one-core worker, a Python task whose inputs hold THREAD_INPUT_BYTES or
more that would have to be copied into shared memory (data that came from
another worker) runs in a worker thread, on the inputs in place. There is no
parallelism to gain on one core, and the copy cost more than the task
(100 MB NumPy array from another worker: 0.62 GB/s in a thread, 0.33 GB/s
through an executor process). Such a task cannot be stopped when canceled.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import TYPE_CHECKING

from .. import protocol
from ..data import DataObject, File, PyObj
from .py_wire import SHARED_FRAME_BYTES
from .run_task import RunDirs, program_of
from .taskdef import Cancellation, Redirect, TaskContext, TaskError, TaskRegistry
from .wake import WakePipe

if TYPE_CHECKING:
    from .py_pool import PythonPool
    from .state import WorkerTask

log = logging.getLogger("hyperloom.worker")

INLINE_INPUT_BYTES = 256 * 1024   # inline tasks on bigger inputs go to a thread
THREAD_INPUT_BYTES = 16 * 1024 * 1024  # see the module doc
BATCH_TASK_SECONDS = 0.002        # Python and thread tasks of a kind that ran faster are batched
MAX_BATCH = 64
MAX_KINDS = 4096                  # kinds whose task durations are remembered
REPORT_SECONDS = 0.002            # a batch in a thread posts what finished at least this often


class Executor:
    def __init__(self, registry: TaskRegistry, cpus: int, work_dir: str, pin: bool,
                 core_ids: list[int] | None = None) -> None:
        self.registry = registry
        # Cores are allocated as slots 0..cpus-1; this maps them to real core ids for taskset.
        self.core_ids = core_ids or list(range(cpus))
        self.cpus = cpus
        self.work_dir = work_dir
        self.pin = pin
        self.threads = ThreadPoolExecutor(max_workers=max(4, 2 * cpus + 1),
                                          thread_name_prefix="task")
        self._python_pool: PythonPool | None = None
        self._pool_names: dict[str, str] = {}   # task symbol -> name the pool imports
        # batch key -> moving average of how long one such task ran (seconds)
        self._seconds: dict = {}
        self.run_dirs = RunDirs()
        self.completions: deque[tuple[WorkerTask, DataObject | None, str | None]] = deque()
        # task id -> (WorkerTask, Cancellation) of what runs outside the loop, so that a
        # cancel can stop it; a task leaves when its completion is posted.
        self._running: dict[int, tuple] = {}
        self._running_lock = threading.Lock()
        self._wake = WakePipe()
        self.wake_read = self._wake.read_fd   # the loop polls it: completions wait

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self._python_pool is not None:
            self._python_pool.close()
        self.run_dirs.close()
        self._wake.close()

    # ------------------------------------------------------------ starting

    def start(self, task, inputs, core=None):
        """Start ``task``; return ``(result, error)`` if it ran inline, else None.

        With the worker's ``core``, tiny Python tasks queued behind ``task`` for its
        core may start with it, as a batch."""
        kind = self.registry.get(task.type)
        if kind is None:
            return None, f"Task type '{task.type}' is not provided by this worker"
        cpu_ids = tuple(self.core_ids[slot] for slot in task.cpu_ids)
        ctx = TaskContext(task.id, task.type, task.config, inputs, cpu_ids,
                          self.work_dir, self.pin, task.label, log)
        mode = kind.mode
        if task.checkpoint_path is not None and mode == "inline":
            mode = "thread"  # writing the checkpoint must not hold up the loop
        if mode == "inline" and sum(obj.size for obj in inputs) <= INLINE_INPUT_BYTES:
            outcome = self._call(kind.fn, ctx)
            if isinstance(outcome[0], Redirect):
                self._redirect(task, ctx, outcome[0])
                return None
            return outcome
        self._runs_outside(task, ctx)
        if mode == "python" and not (self.cpus == 1 and _bytes_to_copy(inputs)
                                     >= THREAD_INPUT_BYTES):
            self._start_python([(task, kind, ctx)], core)
            return None
        if mode == "thread" and core is not None and task.n_cpus == 1 and self._is_tiny(task):
            self._start_thread_batch([(task, kind.fn, ctx)], core)
            return None
        self.threads.submit(self._run_in_thread, task, kind.fn, ctx)
        return None

    def _runs_outside(self, task, ctx) -> None:
        """Give ``ctx`` what a task running outside the loop needs, and make it stoppable."""
        ctx.cancel = cancel = Cancellation()
        ctx.run_dirs = self.run_dirs
        with self._running_lock:
            self._running[task.id] = (task, cancel)

    def _follower_context(self, follower, core, cpu_ids) -> TaskContext:
        ctx = TaskContext(follower.id, follower.type, follower.config, core.inputs_of(follower),
                          cpu_ids, self.work_dir, self.pin, follower.label, log)
        self._runs_outside(follower, ctx)
        return ctx

    # ------------------------------------------------------------ python tasks

    def _start_python(self, batch, core) -> None:
        """Send ``[(task, kind, ctx)]`` (one task, and its tiny followers) to the pool."""
        if core is not None and batch[0][0].n_cpus == 1 and self._is_tiny(batch[0][0]):
            for follower in core.take_followers(batch[0][0], self._batchable, MAX_BATCH - 1):
                kind = self.registry.get(follower.type)
                batch.append((follower, kind,
                              self._follower_context(follower, core, batch[0][2].cpu_ids)))
        pool = self._pool()
        futures = pool.submit_batch([(self._pool_name(kind), ctx) for _, kind, ctx in batch])
        for (task, _, ctx), future in zip(batch, futures):
            # start() or the loop above gave every task of the batch its Cancellation.
            assert ctx.cancel is not None
            ctx.cancel.on_cancel(lambda future=future: pool.cancel(future))
            future.add_done_callback(
                lambda f, task=task, ctx=ctx: self._pool_done(task, ctx, f))

    def _batchable(self, task, mode="python") -> bool:
        kind = self.registry.get(task.type)
        return (kind is not None and kind.mode == mode and task.n_cpus == 1
                and task.checkpoint_path is None and self._is_tiny(task))

    # ------------------------------------------------------------ thread tasks

    def _start_thread_batch(self, batch, core) -> None:
        """Run ``[(task, fn, ctx)]`` and the tiny thread tasks queued behind it for its
        core, one after the other in one worker thread."""
        leader_ctx = batch[0][2]
        accept = functools.partial(self._batchable, mode="thread")
        for follower in core.take_followers(batch[0][0], accept, MAX_BATCH - 1):
            kind = self.registry.get(follower.type)
            assert kind is not None  # accept() found it
            batch.append((follower, kind.fn,
                          self._follower_context(follower, core, leader_ctx.cpu_ids)))
        self.threads.submit(self._run_batch_in_thread, batch)

    def _run_batch_in_thread(self, batch):
        """Post what finished at least every REPORT_SECONDS and at the end: one wake-up
        of the loop, one TasksDone and one ComputeTasks in answer, for several tasks."""
        done: list = []
        oldest = 0.0
        try:
            for task, fn, ctx in batch:
                if done and time.perf_counter() - oldest >= REPORT_SECONDS:
                    self._post_many(done)
                    done = []
                result, error = self._execute(task, fn, ctx)
                if not done:
                    oldest = time.perf_counter()
                done.append((task, result, error))
        finally:
            self._post_many(done)

    def _is_tiny(self, task) -> bool:
        seconds = self._seconds.get(_batch_key(task))
        return seconds is not None and seconds < BATCH_TASK_SECONDS

    def _learn(self, task, seconds) -> None:
        # Runs in the pool's reader thread or a worker thread; a dict item assignment is atomic.
        key = _batch_key(task)
        previous = self._seconds.get(key)
        if previous is None and len(self._seconds) >= MAX_KINDS:
            return  # (programs by the thousand): those not yet seen are never batched
        self._seconds[key] = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def stop(self, task_ids) -> int:
        """Stop the running tasks among ``task_ids`` (canceled): kill their program
        or executor process. Their completions still come, and free their cores.
        A task running in a worker thread (an extension's thread task) cannot be
        stopped: it runs to its end. Returns how many tasks were asked to stop."""
        with self._running_lock:
            entries = [self._running.get(task_id) for task_id in task_ids]
        stopped = 0
        for entry in entries:
            if entry is not None:
                entry[1].cancel()
                stopped += 1
        return stopped

    def _pool_name(self, kind):
        """How an executor process finds the function: by name, never by pickle."""
        name = self._pool_names.get(kind.symbol)
        if name is None:
            from .py_task import BUILTIN_FUNCTIONS, function_name
            builtin = {fn: n for n, fn in BUILTIN_FUNCTIONS.items()}
            name = builtin.get(kind.fn) or function_name(kind.fn)
            self._pool_names[kind.symbol] = name
        return name

    def _pool(self):
        if self._python_pool is None:
            from .py_pool import PythonPool
            self._python_pool = PythonPool(self.cpus, log.getEffectiveLevel())
        return self._python_pool

    @staticmethod
    def _call(fn, ctx):
        try:
            return fn(ctx), None
        except TaskError as error:
            return None, str(error)
        except Exception:
            return None, (f"Internal error in task type '{ctx.task_type}':\n"
                          f"{traceback.format_exc()}")

    def _run_in_thread(self, task, fn, ctx):
        self._post(task, *self._execute(task, fn, ctx))

    def _execute(self, task, fn, ctx):
        """Run a thread task; learn how long its kind runs (see ``_start_thread_batch``)."""
        if ctx.cancel.canceled:  # canceled while it waited for a thread
            return None, "Canceled"
        started = time.perf_counter()
        result, error = self._call(fn, ctx)
        if isinstance(result, Redirect):
            result, error = self._run_redirect(ctx, result)
        self._learn(task, time.perf_counter() - started)
        return result, error

    def _pool_done(self, task, ctx, future):
        # The stop hook refers to the future, whose callback refers to ctx: without
        # this, the task's inputs would live on until a garbage collection.
        ctx.cancel.on_cancel(None)
        seconds = getattr(future, "seconds", None)
        if seconds is not None:
            self._learn(task, seconds)
        try:
            result, error = future.result(), None
        except TaskError as exc:
            result, error = None, str(exc)
        except CancelledError:  # canceled while queued for an executor process
            result, error = None, "Canceled"
        except Exception as exc:  # the executor process died, or could not pickle
            result, error = None, f"Python executor failed: {exc!r}"
        if isinstance(result, Redirect):
            self._redirect(task, ctx, result)
            return
        self._post(task, result, error)

    def _redirect(self, task, ctx, redirect):
        if ctx.cancel is None:  # it ran inline: what it redirects to may run for long
            ctx.cancel = cancel = Cancellation()
            with self._running_lock:
                self._running[task.id] = (task, cancel)
        self.threads.submit(lambda: self._post(task, *self._run_redirect(ctx, redirect)))

    def _run_redirect(self, ctx, redirect: Redirect):
        """Run the task a Python function returned, in place of that function."""
        kind = self.registry.get(redirect.task_type)
        if kind is None:
            return None, f"Redirected to unknown task type '{redirect.task_type}'"
        new_ctx = TaskContext(ctx.task_id, redirect.task_type, redirect.config,
                              list(redirect.inputs), ctx.cpu_ids, ctx.work_dir, ctx.pin,
                              ctx.label, ctx.log)
        new_ctx.cancel = ctx.cancel  # a program it runs can be stopped too
        new_ctx.run_dirs = self.run_dirs
        result, error = self._call(kind.fn, new_ctx)
        if isinstance(result, Redirect):
            return None, "A redirected task may not redirect again"
        return result, error

    # ------------------------------------------------------------ completions

    def _post(self, task, result, error):
        self._post_many([(task, result, error)])

    def _post_many(self, done):
        """Hand ``[(task, result, error)]`` to the loop, with one wake-up."""
        for task, result, error in done:
            with self._running_lock:
                entry = self._running.get(task.id)
                if entry is not None and entry[0] is task:
                    del self._running[task.id]
            if error is None and task.checkpoint_path is not None:
                try:
                    error = write_checkpoint(task.checkpoint_path, result)
                except Exception:  # a completion that is never posted hangs the task for ever
                    error = (f"Writing checkpoint '{task.checkpoint_path}' failed:\n"
                             f"{traceback.format_exc()}")
                if error is not None:
                    result = None
            self.completions.append((task, result, error))
        if done:
            self._wake.wake()   # once per round of the loop (wake.py)

    def take_completions(self) -> list[tuple[WorkerTask, DataObject | None, str | None]]:
        self._wake.drain()   # before taking: what comes after wakes the loop again
        completions = self.completions
        taken = []
        while completions:
            taken.append(completions.popleft())
        return taken


def _bytes_to_copy(inputs) -> int:
    """Bytes of ``inputs`` an executor process would get only through a copy (all
    but the buffers of results already in the worker's shared-memory files)."""
    total = 0
    for obj in inputs:
        if isinstance(obj, PyObj):
            pickled = len(obj.pickled())
            total += pickled if pickled >= SHARED_FRAME_BYTES else 0
            total += sum(buffer.nbytes for buffer in obj.buffers()
                         if type(buffer.obj) is not mmap.mmap)
        elif obj.size >= SHARED_FRAME_BYTES and not isinstance(obj, File):
            total += obj.size  # a File travels as its path
    return total


def _batch_key(task):
    """Tasks that run the same code: a py_call's function object is its input 0, a
    run task's program is its first argument; other tasks of one type run the same."""
    if task.type == protocol.TASK_PY_CALL and task.input_ids:
        return task.type, task.input_ids[0]
    if task.type == protocol.TASK_RUN:
        return task.type, program_of(task.config)
    return task.type, None


def write_checkpoint(path: str, result):
    """Write a D-object's bytes to ``path`` atomically; return an error message or None."""
    raw = result.raw()
    if raw is None:
        return f"Data '{result.info()}' cannot be checkpointed"
    temporary = path + ".loom.tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(raw)
    except OSError as error:
        return f"Writing checkpoint '{path}' failed. Cannot create {temporary}:{error.strerror}"
    try:
        os.replace(temporary, path)
    except OSError as error:  # e.g. the path is a directory
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return f"Writing checkpoint '{path}' failed. Cannot replace it: {error.strerror}"
    return None
