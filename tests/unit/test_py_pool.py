"""The Python executor pool: results, failures and logs through child processes, at once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

import pytest

from hyperloom import protocol
from hyperloom.client import tasks
from hyperloom.data import Array, File, Plain, PyObj
from hyperloom.worker.py_child import FunctionCache, _run_batch
from hyperloom.worker.py_pool import PythonPool, PythonPoolError, _job_message
from hyperloom.worker.py_task import execute_py_value, function_name
from hyperloom.worker.taskdef import Redirect, TaskContext, TaskError

TIMEOUT = 60


@pytest.fixture(scope="module")
def pool():
    with PythonPool(2) as shared:
        yield shared


def py_call_ctx(task, *inputs, log=None) -> TaskContext:
    """The context of a py_call task, its function already made by py_value."""
    fn_task = task.inputs[0]
    fn_obj = execute_py_value(TaskContext(0, fn_task.task_type, fn_task.config, []))
    ctx = TaskContext((1 << protocol.CLIENT_SHIFT) + 4,  # local id 4 of client 1
                      task.task_type, task.config, [fn_obj, *inputs])
    if log is not None:
        ctx.log = log
    return ctx


def through(pool, task, *inputs, log=None):
    return pool.submit("py_call", py_call_ctx(task, *inputs, log=log)).result(TIMEOUT)


def failure_of(pool, task, *inputs) -> str:
    with pytest.raises(TaskError) as info:
        through(pool, task, *inputs)
    return str(info.value)


# ---------------------------------------------------------------- results

def test_hello(pool):
    @tasks.py_task()
    def hello(a):
        return b"Hello " + a.read()

    result = through(pool, hello(tasks.const("world")), Plain(b"world"))
    assert isinstance(result, Plain) and result.data == b"Hello world"


def test_py_value_in_the_pool(pool):
    task = tasks.py_value({"A": (1, 2)})
    context = TaskContext(1, task.task_type, task.config, [])
    result = pool.submit("py_value", context).result(TIMEOUT)
    assert isinstance(result, PyObj) and result.obj == {"A": (1, 2)}


def test_wrapped_objects_arrays_and_inputs_come_back(pool):
    @tasks.py_task(context=True, n_direct_args=1)
    def f(ctx, n, a, b):
        return [ctx.wrap({"n": n}), [a, "s"], b.unwrap()[::-1]]

    result = through(pool, f(5, tasks.const("a"), tasks.const("b")),
                     Plain(b"in"), PyObj("olleh"))
    assert isinstance(result, Array)
    wrapped, inner, text = result.items
    assert isinstance(wrapped, PyObj) and wrapped.obj == {"n": 5}
    assert inner.to_python() == [b"in", b"s"] and text.data == b"hello"


def test_redirect_through_the_pool(pool):
    @tasks.py_task()
    def f(a):
        return tasks.run("/bin/cat X", [(a, "X")])

    result = through(pool, f(tasks.const("x")), Plain(b"data"))
    assert isinstance(result, Redirect) and result.task_type == protocol.TASK_RUN
    assert [obj.data for obj in result.inputs] == [b"data"]
    assert protocol.decode_run_config(result.config) == (["/bin/cat", "X"], ["X"], ["+out"])


def test_large_inputs_and_outputs(pool):
    @tasks.py_task()
    def reverse(a, b):
        return [a.read()[::-1], b.read()]

    big = os.urandom(3 * 1024 * 1024)
    result = through(pool, reverse(tasks.const("a"), tasks.const("b")), Plain(big), Plain(b"s"))
    assert result.to_python() == [big[::-1], b"s"]


def test_arrays_cross_in_shared_memory_and_a_kept_result_is_not_copied_again():
    """Big frames go to and from the children as files in the pool's shared-memory
    directory: a result is mapped in the worker (read-only, no copy) and its file
    kept while the result lives; passed to a task again, the child maps that same
    file; the file goes when the result is dropped."""
    import gc

    np = pytest.importorskip("numpy")

    @tasks.py_task(context=True)
    def make(ctx):
        return ctx.wrap(np.arange(1_000_000, dtype="f8"))

    @tasks.py_task()
    def where(a):
        array = a.unwrap()
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        base = base.obj if isinstance(base, memoryview) else base
        return f"{type(base).__name__} {array.flags.writeable} {array.sum():.0f}"

    with PythonPool(1) as one:
        shm_dir = one._shared.dir
        assert not os.path.exists(shm_dir)  # made on first use only
        made = one.submit("py_call", py_call_ctx(make())).result(TIMEOUT)
        assert isinstance(made.buffers()[0].obj, __import__("mmap").mmap)
        assert not made.obj.flags.writeable
        assert len(os.listdir(shm_dir)) == 1  # kept while the result lives
        answer = through(one, where(tasks.const("a")), made)
        assert answer.data == b"mmap False 499999500000"  # mapped in the child too
        assert len(os.listdir(shm_dir)) == 1
        # It went as a reference to the kept file (not owned: not a fresh copy).
        import pickle
        from hyperloom.worker.py_wire import pack
        (path, nbytes, owned), = pickle.loads(pack("x", made.buffers(), one._shared)[0])[1]
        assert (path, nbytes, owned) == (os.path.join(shm_dir, os.listdir(shm_dir)[0]),
                                         8_000_000, False)
        # A frame the worker got from elsewhere is copied once, and its file removed.
        fresh = PyObj(np.arange(1_000_000, dtype="f8"))
        assert through(one, where(tasks.const("a")), fresh).data == b"mmap False 499999500000"
        assert len(os.listdir(shm_dir)) == 1
        del made
        gc.collect()
        assert os.listdir(shm_dir) == []
    assert not os.path.exists(shm_dir)


def test_file_input(pool, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"from disk")

    @tasks.py_task()
    def f(a):
        return a.read().upper()

    assert through(pool, f(tasks.const("x")), File(str(path))).data == b"FROM DISK"


def test_logs_go_to_the_task_logger(pool, caplog):
    @tasks.py_task(context=True)
    def f(ctx):
        ctx.log_debug("dropped: below the pool's level")
        ctx.log_warn("careful")
        return b""

    log = logging.getLogger("test.py_pool")
    with caplog.at_level(logging.DEBUG, logger="test.py_pool"):
        through(pool, f(), log=log)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("test.py_pool", logging.WARNING, "PyTask id=4: careful")]


# ---------------------------------------------------------------- failures

def test_exception_in_the_pool(pool):
    @tasks.py_task()
    def f():
        return 1 / 0

    message = failure_of(pool, f())
    assert message.startswith("Python exception:\nTraceback (most recent call last):\n")
    assert message.endswith("ZeroDivisionError: division by zero\n")


def test_first_argument_not_pyobj(pool):
    task = tasks.py_call(tasks.const("x"))
    ctx = TaskContext(1, task.task_type, task.config, [Plain(b"x")])
    with pytest.raises(TaskError, match="^The first argument is not PyObj$"):
        pool.submit("py_call", ctx).result(TIMEOUT)


def test_result_that_cannot_be_pickled(pool):
    @tasks.py_task(context=True)
    def f(ctx):
        import threading
        return ctx.wrap(threading.Lock())

    assert failure_of(pool, f()).startswith("The result cannot leave the Python executor process")


def failing_extension(ctx: TaskContext):
    raise ValueError("a bug in the extension")


def upper_extension(ctx: TaskContext):
    return Plain(bytes(ctx.inputs[0].raw()).upper())


def test_extension_functions(pool):
    ctx = TaskContext(1, "my/upper", b"", [Plain(b"ext")])
    assert pool.submit(function_name(upper_extension), ctx).result(TIMEOUT).data == b"EXT"
    with pytest.raises(RuntimeError, match="ValueError: a bug in the extension"):
        pool.submit(function_name(failing_extension), ctx).result(TIMEOUT)


def test_a_dying_child_fails_its_task_and_is_replaced():
    @tasks.py_task()
    def die():
        os._exit(3)

    @tasks.py_task()
    def pid():
        return str(os.getpid())

    with PythonPool(1) as one:
        before = through(one, pid())
        assert failure_of(one, die()) == "Python executor process died (exit code 3)"
        after = through(one, pid())
    assert before != after


@pytest.mark.parametrize("forkserver_first", [False, True])
def test_a_child_killed_with_the_workers_process_group_is_not_replaced(forkserver_first):
    """A stopping worker's group gets SIGTERM: its children die with it and the pool is
    closed at once. Replacing a child first asked the resource tracker, gone with the
    group, and Python warned of it on about half of the cluster stops. With the
    forkserver gone first, the child's exit code reads 255, not -SIGTERM."""
    from multiprocessing import forkserver
    pool = PythonPool(1)
    started = []
    start_child = pool._start_child
    pool._start_child = lambda: started.append(1) or start_child()
    [child] = pool._children
    if forkserver_first:   # (the next pool starts a new one)
        os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
    os.kill(child.process.pid, signal.SIGTERM)
    time.sleep(0.05)                     # the worker's own SIGTERM closes the pool
    pool.close()
    assert started == []
    assert child.process.exitcode == (255 if forkserver_first else -signal.SIGTERM)


def test_a_child_killed_with_sigterm_alone_is_replaced():
    @tasks.py_task()
    def pid():
        return str(os.getpid())

    with PythonPool(1) as one:
        before = through(one, pid()).data
        os.kill(int(before), signal.SIGTERM)
        after = through(one, pid()).data   # after SIGTERM_GRACE: a replacement runs it
    assert before != after


def test_a_child_says_it_runs_nothing_before_its_last_answer(tmp_path):
    """Once the worker has read a batch's last answer it may send the child the next
    batch: a child killed before it then wrote -1 blamed that batch's first task, which
    never started, for its death (the test above failed 18 runs in 100 under load)."""
    @tasks.py_task()
    def tiny():
        return b"x"

    current = multiprocessing.get_context("spawn").RawValue("q", -1)
    running_at_each_send = []

    class Pipe:
        def send_bytes(self, part):
            running_at_each_send.append(current.value)

    fields, frames = _job_message("py_call", py_call_ctx(tiny()))
    jobs = [(fields, len(frames))] * 3
    _run_batch(Pipe(), threading.Lock(), jobs, frames * 3, logging.getLogger("test"),
               FunctionCache(), current, str(tmp_path))
    assert running_at_each_send and running_at_each_send[-1] == -1


@tasks.py_task(n_direct_args=1)
def wait_for_file(path):
    """Blocks its child until the test creates ``path``: no timing assumptions."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return b"done"


def test_queued_task_can_be_cancelled(tmp_path):
    gate = str(tmp_path / "gate")
    with PythonPool(1) as one:
        running = one.submit("py_call", py_call_ctx(wait_for_file(gate)))
        queued = one.submit("py_call", py_call_ctx(wait_for_file(gate)))
        last = one.submit("py_call", py_call_ctx(wait_for_file(gate)))
        assert queued.cancel()
        open(gate, "w").close()
        assert running.result(TIMEOUT).data == b"done" and last.result(TIMEOUT).data == b"done"
        assert queued.cancelled()


def test_close_fails_unfinished_tasks():
    @tasks.py_task(n_direct_args=1)
    def nap(seconds):
        time.sleep(seconds)
        return b"slept"

    one = PythonPool(1)
    running = one.submit("py_call", py_call_ctx(nap(5)))
    queued = one.submit("py_call", py_call_ctx(nap(0)))
    started = time.monotonic()
    one.close(timeout=0.2)
    assert time.monotonic() - started < 4
    for future in (running, queued):
        with pytest.raises(TaskError, match="pool was closed"):
            future.result(0)
    with pytest.raises(PythonPoolError):
        one.submit("py_call", py_call_ctx(nap(0)))


def test_child_reuses_an_unpickled_function_and_evicts_the_oldest():
    from hyperloom.data import encode
    from hyperloom.worker.py_child import FunctionCache

    def inputs_of(fn):
        frames = []
        metas = [encode(PyObj(fn), frames)[0], encode(Plain(b"x"), frames)[0]]
        return metas, [bytes(frame) for frame in frames]

    cache = FunctionCache(capacity=2)
    first = cache.decode_inputs("py_call", *inputs_of(len))
    assert cache.decode_inputs("py_call", *inputs_of(len))[0] is first[0]
    assert first[1].data == b"x"
    cache.decode_inputs("py_call", *inputs_of(abs))
    cache.decode_inputs("py_call", *inputs_of(min))  # evicts len, the least recent
    assert cache.decode_inputs("py_call", *inputs_of(len))[0] is not first[0]
    assert cache.decode_inputs("py_value", *inputs_of(len))[0].obj is len


# ---------------------------------------------------------------- parallelism

def spin(n):
    """Pure-Python CPU work that holds the GIL throughout."""
    total = 0
    for i in range(n):
        total += i * i
    return total % 1000


def busy(n, a):
    """spin(n); returns its result and the CPU seconds it took."""
    started = time.process_time()
    return f"{spin(n)} {time.process_time() - started}"


def iterations_for(seconds: float) -> int:
    n = 200_000
    started = time.perf_counter()
    busy(n, None)
    return int(n * seconds / (time.perf_counter() - started))


def timed_busy(n, a):
    """busy(), reporting which process ran it and when (CLOCK_MONOTONIC is system-wide)."""
    started = time.monotonic()
    return f"{spin(n)} {os.getpid()} {started} {time.monotonic()}"


def test_pool_runs_python_tasks_at_the_same_time_in_separate_processes():
    # Two executor processes, each running a GIL-holding loop: their runs overlap in time,
    # so one interpreter's GIL does not serialise them. (Whether they also get two cores
    # at once is the machine's business; CPU/wall ratios made this test flaky under load.)
    n = iterations_for(0.3)
    task = tasks.py_call(tasks.py_value(timed_busy), (tasks.const("x"),), direct_args=(n,))
    contexts = [py_call_ctx(task, Plain(b"x")) for _ in range(4)]
    expected = busy(n, None).split()[0]
    with PythonPool(2) as two:
        two.submit("py_call", contexts[0]).result(TIMEOUT)  # children are up
        futures = [two.submit("py_call", ctx) for ctx in contexts]
        runs = [future.result(TIMEOUT).data.decode().split() for future in futures]
    assert [total for total, *_ in runs] == [expected] * 4
    spans = [(int(pid), float(start), float(end)) for _, pid, start, end in runs]
    assert len({pid for pid, _, _ in spans}) == 2, spans
    overlapping = [(a, b) for a in spans for b in spans
                   if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, f"the two executors never ran at the same time: {spans}"


@tasks.py_task(n_direct_args=1)
def sleep_in_child_and_grandchild(pid_file):
    """Starts a subprocess, records both pids, then sleeps for a minute."""
    import subprocess
    grandchild = subprocess.Popen(["sleep", "60"])
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(60)
    return b"slept"


def test_cancelling_a_running_task_kills_its_process_and_what_it_started(tmp_path):
    from tests.conftest import process_gone, wait_until
    pid_file = str(tmp_path / "pids")
    with PythonPool(1) as one:
        future = one.submit("py_call", py_call_ctx(sleep_in_child_and_grandchild(pid_file)))
        wait_until(lambda: os.path.exists(pid_file), timeout=TIMEOUT, message="the task to start")
        child, grandchild = map(int, open(pid_file).read().split())
        one.cancel(future)
        with pytest.raises(TaskError, match="Python executor process died"):
            future.result(TIMEOUT)
        wait_until(lambda: process_gone(child) and process_gone(grandchild), timeout=10,
                   message="the executor process and its subprocess to die")
        # a replacement process runs the next task
        assert through(one, tasks.py_task()(lambda: str(os.getpid()))()).data \
            != str(child).encode()


def test_cancelling_a_finished_task_does_not_kill_the_next_one(tmp_path):
    gate = str(tmp_path / "gate")
    with PythonPool(1) as one:
        done = one.submit("py_call", py_call_ctx(tasks.py_task()(lambda: "first")()))
        assert done.result(TIMEOUT).data == b"first"
        following = one.submit("py_call", py_call_ctx(wait_for_file(gate)))
        one.cancel(done)  # too late: a no-op, whatever the child runs now
        open(gate, "w").close()
        assert following.result(TIMEOUT).data == b"done"


# ---------------------------------------------------------------- batches

def test_a_death_in_a_batch_fails_that_task_only_and_the_rest_runs_again():
    @tasks.py_task()
    def die():
        os._exit(3)

    @tasks.py_task(n_direct_args=1)
    def name(text):
        return text

    with PythonPool(1) as one:
        futures = one.submit_batch([("py_call", py_call_ctx(name("a"))),
                                    ("py_call", py_call_ctx(die())),
                                    ("py_call", py_call_ctx(name("c")))])
        assert futures[0].result(TIMEOUT).data == b"a"
        with pytest.raises(TaskError, match=r"process died \(exit code 3\)"):
            futures[1].result(TIMEOUT)
        assert futures[2].result(TIMEOUT).data == b"c"  # on the replacement
        assert all(future.seconds >= 0 for future in (futures[0], futures[2]))


def test_cancelling_a_task_waiting_in_a_batch_reruns_the_one_that_was_running(tmp_path):
    """Its child is killed (the only way to be sure it never starts); the task the
    child was running then is not lost: it runs again on the replacement."""
    gate, ran = str(tmp_path / "gate"), str(tmp_path / "ran")

    @tasks.py_task(n_direct_args=2)
    def note_and_wait(path, gate_path):
        with open(path, "a") as f:
            f.write("x")
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(gate_path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return b"done"

    from tests.conftest import wait_until
    with PythonPool(1) as one:
        running, waiting = one.submit_batch([
            ("py_call", py_call_ctx(note_and_wait(ran, gate))),
            ("py_call", py_call_ctx(wait_for_file(gate)))])
        # Its "x", not the file: killed between creating the file and writing it, the
        # first run left it empty, and "xx" never came (once in about 60 runs under load).
        wait_until(lambda: os.path.exists(ran) and open(ran).read() == "x", timeout=TIMEOUT,
                   message="the first to start")
        one.cancel(waiting)
        with pytest.raises(TaskError, match="process died"):
            waiting.result(TIMEOUT)
        wait_until(lambda: open(ran).read() == "xx", timeout=TIMEOUT,
                   message="the first task to start again on the replacement")
        open(gate, "w").close()
        assert running.result(TIMEOUT).data == b"done"


def test_shared_memory_directories_of_dead_pools_are_removed(tmp_path):
    from hyperloom.worker.py_wire import DIR_PREFIX, SharedFiles
    import subprocess
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f"{DIR_PREFIX}{gone.pid}-abcd").mkdir()
    (tmp_path / f"{DIR_PREFIX}{os.getpid()}-abcd").mkdir()
    (tmp_path / "someone-else").mkdir()
    SharedFiles(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"{DIR_PREFIX}{os.getpid()}-abcd", "someone-else"]

