"""The worker's Executor with real executor processes: where Python tasks run, batches
of tiny ones, and what is left behind once a task is done."""

from __future__ import annotations

import gc
import os
import time
import weakref

import pytest

from hyperloom import protocol
from hyperloom.client import tasks
from hyperloom.data import Plain, PyObj
from hyperloom.worker.executor import Executor
from hyperloom.worker.py_task import execute_py_value
from hyperloom.worker.server import standard_registry
from hyperloom.worker.state import WorkerCore, WorkerTask
from hyperloom.worker.taskdef import TaskContext

TIMEOUT = 60


def completions(executor, count):
    taken, deadline = [], time.monotonic() + TIMEOUT
    while len(taken) < count and time.monotonic() < deadline:
        taken += executor.take_completions()
        time.sleep(0.001)
    assert len(taken) == count, taken
    return taken


def fn_object(task):
    fn_task = task.inputs[0]
    return execute_py_value(TaskContext(0, fn_task.task_type, fn_task.config, []))


@tasks.py_task()
def pid_and_size(a):
    return f"{os.getpid()} {a.size()}"


def test_a_done_python_task_leaves_nothing_that_holds_its_inputs(tmp_path):
    """No reference cycle keeps a finished task's inputs (a big array, say) alive
    until a garbage collection that may be far off: they go with the task."""
    np = pytest.importorskip("numpy")
    task = pid_and_size(tasks.const("x"))
    executor = Executor(standard_registry(), 1, str(tmp_path), False)
    gc.disable()
    try:
        array = np.zeros(125)
        alive = weakref.ref(array)
        data = PyObj(array)
        del array
        worker_task = WorkerTask(1, protocol.TASK_PY_CALL, task.config, [10, 11], 1, None)
        worker_task.cpu_ids = (0,)
        assert executor.start(worker_task, [fn_object(task), data]) is None
        (done, result, error), = completions(executor, 1)
        assert error is None and result.data.split()[1] == b"1000"
        del data, done, result
        assert alive() is None
    finally:
        gc.enable()
        executor.close()


def test_tiny_python_tasks_queued_for_one_core_run_as_one_batch(tmp_path):
    """Once a function is known to be tiny, the tasks queued behind a starting one
    go with it: all run in the same executor process and the core is freed once,
    by the last of them."""
    task = pid_and_size(tasks.const("x"))
    fn = fn_object(task)
    executor = Executor(standard_registry(), 1, str(tmp_path), False)
    core = WorkerCore(1)
    core.store.update({10: fn, 11: Plain(b"abc")})
    try:
        def submit(first_id, n):
            core.on_compute([[first_id + i, protocol.TASK_PY_CALL, task.config, [10, 11], 1,
                              None, False, None] for i in range(n)])
            started = core.take_startable()
            assert len(started) == 1  # one core
            executor.start(started[0], core.inputs_of(started[0]), core)
            return started[0]

        leader = submit(100, 1)  # the first one teaches the executor it is tiny
        core.on_task_done(*completions(executor, 1)[0])
        leader = submit(200, 5)
        assert leader.cpu_ids == () and not core.queued_cpu  # the four others went along
        done = completions(executor, 5)
        assert sorted(t.id for t, _, _ in done) == [200, 201, 202, 203, 204]
        assert len({r.data.split()[0] for _, r, _ in done}) == 1  # one process ran them
        for t, r, e in done:
            core.on_task_done(t, r, e)
        assert core.free_cpus == [0]
    finally:
        executor.close()
