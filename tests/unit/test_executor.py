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


def _start_py_tasks(executor, core, task, first_id, n):
    """Queue n ``task``s (inputs 10 and 11) for the one core; start what can start."""
    core.on_compute([[first_id + i, protocol.TASK_PY_CALL, task.config, [10, 11], 1,
                      None, False, None] for i in range(n)])
    started = core.take_startable()
    assert len(started) == 1  # one core
    executor.start(started[0], core.inputs_of(started[0]), core)
    return started[0]


def test_tiny_python_tasks_queued_for_one_core_run_as_one_batch(tmp_path, monkeypatch):
    """Once a function is known to be tiny, the tasks queued behind a starting one
    go with it: all run in the same executor process and the core is freed once,
    by the last of them. (Any first run counts as tiny here: on a loaded machine the
    first one took over BATCH_TASK_SECONDS, 2 ms, about one run in 60.)"""
    task = pid_and_size(tasks.const("x"))
    executor, core = _run_batch_setup(tmp_path, monkeypatch)
    core.store.update({10: fn_object(task), 11: Plain(b"abc")})
    try:
        _start_py_tasks(executor, core, task, 100, 1)  # teaches it is tiny
        core.on_task_done(*completions(executor, 1)[0])
        leader = _start_py_tasks(executor, core, task, 200, 5)
        assert leader.cpu_ids == () and not core.queued_cpu  # the four others went along
        done = completions(executor, 5)
        assert sorted(t.id for t, _, _ in done) == [200, 201, 202, 203, 204]
        assert len({r.data.split()[0] for _, r, _ in done}) == 1  # one process ran them
        for t, r, e in done:
            core.on_task_done(t, r, e)
        assert core.free_cpus == [0]
    finally:
        executor.close()


def test_python_tasks_of_a_kind_seen_slow_run_one_at_a_time(tmp_path, monkeypatch):
    """A function whose run took BATCH_TASK_SECONDS or more is not batched: the tasks
    queued behind it wait for the core, each its own start."""
    task = pid_and_size(tasks.const("x"))
    executor, core = _run_batch_setup(tmp_path, monkeypatch, batch_seconds=0.0)
    core.store.update({10: fn_object(task), 11: Plain(b"abc")})
    try:
        _start_py_tasks(executor, core, task, 100, 1)  # teaches it is slow
        core.on_task_done(*completions(executor, 1)[0])
        leader = _start_py_tasks(executor, core, task, 200, 3)
        assert leader.cpu_ids == (0,) and len(core.queued_cpu) == 2
        [(finished, _, _)] = completions(executor, 1)
        assert finished.id == leader.id
    finally:
        executor.close()


def _run_batch_setup(tmp_path, monkeypatch, batch_seconds=3600.0):
    """An executor that counts every kind seen once as tiny, or with batch_seconds=0
    none (the tests must not depend on how fast this machine runs a task), and a
    one-core WorkerCore."""
    from hyperloom.worker import executor as executor_module
    monkeypatch.setattr(executor_module, "BATCH_TASK_SECONDS", batch_seconds)
    return Executor(standard_registry(), 1, str(tmp_path), False), WorkerCore(1)


def _start_queued(executor, core, entries):
    """Queue ``entries`` (run tasks) for the one core and start what can start."""
    core.on_compute([[task_id, protocol.TASK_RUN, task.config, [], 1, None, False, None]
                     for task_id, task in entries])
    started = core.take_startable()
    assert len(started) == 1  # one core
    executor.start(started[0], [], core)
    return started[0]


def test_tiny_programs_queued_for_one_core_run_as_one_batch_in_order(tmp_path, monkeypatch):
    """Once a program is known to be tiny, the run tasks queued behind a starting one
    run after it, one at a time on its core, which the last of them frees."""
    executor, core = _run_batch_setup(tmp_path, monkeypatch)
    log = tmp_path / "log"
    try:
        _start_queued(executor, core, [(1, tasks.run(("sh", "-c", "true")))])
        core.on_task_done(*completions(executor, 1)[0])  # it learns that sh is tiny
        entries = [(100 + i, tasks.run(("sh", "-c", f"echo {i} >> {log}; echo {i}")))
                   for i in range(6)]
        leader = _start_queued(executor, core, entries)
        assert leader.cpu_ids == () and not core.queued_cpu  # the five others went along
        done = completions(executor, 6)
        assert sorted((t.id, e, r.data) for t, r, e in done) == \
            [(100 + i, None, b"%d\n" % i) for i in range(6)]
        assert log.read_text().split() == [str(i) for i in range(6)]  # one after the other
        for t, r, e in done:
            core.on_task_done(t, r, e)
        assert core.free_cpus == [0]
    finally:
        executor.close()


def test_a_program_canceled_while_its_batch_runs_never_starts(tmp_path, monkeypatch):
    executor, core = _run_batch_setup(tmp_path, monkeypatch)
    go, log = tmp_path / "go", tmp_path / "log"
    try:
        _start_queued(executor, core, [(1, tasks.run(("sh", "-c", "true")))])
        core.on_task_done(*completions(executor, 1)[0])
        waits = tasks.run(("sh", "-c", f"until [ -e {go} ]; do sleep 0.01; done"))
        _start_queued(executor, core, [
            (10, waits), (11, tasks.run(("sh", "-c", f"echo 11 >> {log}"))),
            (12, tasks.run(("sh", "-c", f"echo 12 >> {log}")))])
        core.on_cancel([11])
        assert executor.stop([11]) == 1
        go.write_bytes(b"")
        done = {t.id: e for t, _, e in completions(executor, 3)}
        assert done == {10: None, 11: "Canceled", 12: None}
        assert log.read_text() == "12\n"
    finally:
        executor.close()
