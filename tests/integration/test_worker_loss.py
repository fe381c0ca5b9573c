"""Losing processes on real clusters: workers killed mid-task, a task that kills its
worker every time, a worker coming back, and the broker dying under a waiting client
and under its workers. Every test kills cluster processes on purpose (allow_crash)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from hyperloom.client import TaskFailed, tasks
from hyperloom.errors import ConnectionLost

from ..conftest import data_port, wait_until

pytestmark = pytest.mark.allow_crash


def children_named(process, name):
    try:
        return [c for c in psutil.Process(process.pid).children(recursive=True)
                if c.name() == name]
    except psutil.NoSuchProcess:
        return []


def running_sleep(cluster):
    """Workers (Popen) that have a ``sleep`` child right now."""
    return [w for w in cluster.workers if w.poll() is None and children_named(w, "sleep")]


def worker_info(client, process):
    """The broker's info() entry for the worker process ``process``."""
    port = data_port(process, client)
    for entry in client.info()["workers"]:
        if entry["address"].endswith(f":{port}"):
            return entry
    return None


def forget_work_dir(pid):
    """A worker killed with SIGKILL cannot remove its work directory: do it for it."""
    shutil.rmtree(os.path.join(tempfile.gettempdir(), f"worker-{socket.gethostname()}-{pid}"),
                  ignore_errors=True)


def kill(process):
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    forget_work_dir(process.pid)


def broker_log(cluster):
    with open(os.path.join(cluster.log_dir, "broker.log")) as f:
        return f.read()


# ------------------------------------------------------------------ lost workers

@pytest.mark.timeout(60)
def test_crash_running_worker(make_cluster):
    """The original's test: kill a worker running one of two 1 s tasks; gather just works."""
    cluster = make_cluster(workers=2, cpus=1)
    client = cluster.client()
    futures = client.submit([tasks.run("sleep 1"), tasks.run("sleep 1")])
    wait_until(lambda: len(running_sleep(cluster)) == 2, timeout=10,
               message="both workers to run a sleep")
    victim, survivor = cluster.workers
    started = time.monotonic()
    kill(victim)
    assert client.gather(futures) == [b"", b""]
    # the lost task ran again from the start on the survivor, after its own task
    assert time.monotonic() - started >= 1.0
    info = client.info()
    assert info["n_workers"] == 1
    assert info["workers"][0]["tasks_finished"] == 2
    assert survivor.poll() is None
    assert "lost (connection closed)" in broker_log(cluster)


@pytest.mark.timeout(60)
def test_intermediate_results_of_a_killed_worker_are_recomputed(make_cluster):
    """A tree whose level-1 results wait (held on workers) for a slow gate task; the
    worker holding the most of them is killed: they are recomputed from their consts."""
    cluster = make_cluster(workers=3, cpus=1)
    client = cluster.client()
    values = [f"<{i}>" for i in range(64)]
    consts = [tasks.const(v) for v in values]
    level1 = [tasks.merge((consts[2 * j], consts[2 * j + 1])) for j in range(32)]
    gate = tasks.run(("sh", "-c", "sleep 2; printf gate"))
    gated = [tasks.merge((m, gate), "|") for m in level1]
    layer = gated
    while len(layer) > 1:   # a binary tree of merges down to one result
        layer = [tasks.merge(layer[i:i + 2], "/") for i in range(0, len(layer), 2)]
    root = client.submit_one(layer[0])

    wait_until(lambda: running_sleep(cluster), timeout=10, message="the gate to start")
    gate_worker = running_sleep(cluster)[0]
    # level 1 is done and held while the gate sleeps: kill its biggest holder
    def level1_held():
        counts = client.info()["tasks"]
        return counts["finished"] == 32 and counts["assigned"] == 1   # + the gate
    wait_until(level1_held, timeout=10, message="level 1 to finish (consts released)")
    holders = [(worker_info(client, w)["bytes_held"], i, w)
               for i, w in enumerate(cluster.workers) if w is not gate_worker]
    held, _, victim = max(holders)
    assert held > 0, "no other worker holds intermediate results"
    kill(victim)
    expected = [values[2 * j] + values[2 * j + 1] + "|gate" for j in range(32)]
    while len(expected) > 1:
        expected = ["/".join(expected[i:i + 2]) for i in range(0, len(expected), 2)]
    assert root.gather() == expected[0].encode()
    log = broker_log(cluster)
    assert re.search(r"worker \d+ held \d+ needed objects; recomputing them", log), log[-2000:]
    assert client.get_stats()["n_tasks"] == 0


@pytest.mark.timeout(60)
def test_a_task_that_kills_its_worker_fails_after_three_losses(make_cluster):
    """Not a cluster-wide crash: the task fails with the '3 times' message and the
    fourth worker, the broker and the client go on."""
    cluster = make_cluster(workers=4, cpus=1)
    client = cluster.client()

    def kill_my_worker():
        # Python tasks run in an executor process (via the forkserver): find the worker.
        import os
        import signal

        import psutil
        process = psutil.Process()
        while "hyperloom.worker" not in " ".join(process.cmdline()):
            process = process.parent()
        os.kill(process.pid, signal.SIGKILL)

    killer = tasks.py_task()(kill_my_worker)
    future = client.submit_one(killer())
    with pytest.raises(TaskFailed, match="Worker lost while running this task 3 times"):
        future.gather()
    wait_until(lambda: sum(w.poll() is not None for w in cluster.workers) == 3, timeout=5,
               message="three workers to be dead")
    codes = [w.returncode for w in cluster.workers]
    for worker in cluster.workers:
        if worker.returncode is not None:
            forget_work_dir(worker.pid)
    assert codes.count(-signal.SIGKILL) == 3 and codes.count(None) == 1, codes
    assert client.get_stats()["n_workers"] == 1
    assert client.gather(client.submit([tasks.merge((tasks.const("still"), tasks.const("up")))])) \
        == [b"stillup"]


@pytest.mark.timeout(60)
def test_a_new_worker_takes_over_the_work_of_a_lost_one(make_cluster):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    parts = [tasks.const(f"part{i};") for i in range(20)]
    slow = tasks.run(("sh", "-c", "sleep 1; printf slow"))
    futures = client.submit([tasks.merge(parts + [slow]), tasks.merge(parts[:5])])
    wait_until(lambda: running_sleep(cluster), timeout=10, message="the slow task to start")
    kill(cluster.workers[0])
    wait_until(lambda: client.get_stats()["n_workers"] == 0, timeout=10,
               message="the broker to notice the lost worker")
    counts = client.info()["tasks"]
    assert counts["finished"] + counts["assigned"] == 0, counts   # nothing runs, nothing held
    assert not any(f.finished() for f in futures[:1])
    newcomer = cluster.add_worker()
    wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=20,
               message="the new worker to register")
    expected = "".join(f"part{i};" for i in range(20)) + "slow"
    assert client.gather(futures) == [expected.encode(), b"part0;part1;part2;part3;part4;"]
    info = client.info()
    assert info["workers"][0]["tasks_finished"] >= 22   # all of it, on the newcomer
    assert newcomer.poll() is None


# ------------------------------------------------------------------ lost broker

def _in_function(thread, name):
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["wait", "gather"])
def test_a_waiting_client_gets_connection_lost_when_the_broker_dies(make_cluster, call):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    future = client.submit_one(tasks.run("sleep 30"))
    wait_until(lambda: running_sleep(cluster), timeout=10, message="the task to start")
    main = threading.current_thread()
    killed_at = []

    def kill_broker_while_waiting():
        # the main thread is blocked inside the client's event loop when the broker dies
        deadline = time.monotonic() + 10
        while not _in_function(main, "_process_events") and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at.append(time.monotonic())
        os.kill(cluster.broker_pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_broker_while_waiting)
    killer.start()
    try:
        with pytest.raises(ConnectionLost, match="connection to the broker .* was lost"):
            getattr(client, call)([future])
        raised_at = time.monotonic()
    finally:
        killer.join()
    assert cluster.broker.wait(5) == -signal.SIGKILL
    assert raised_at - killed_at[0] < 5.0, f"ConnectionLost took {raised_at - killed_at[0]:.1f} s"
    # and so does every later call, at once (a second wait used to wait forever)
    with pytest.raises(ConnectionLost, match="was lost"):
        client.wait([future])
    with pytest.raises(ConnectionLost, match="was lost"):
        client.submit_one(tasks.const("x"))


LOST_BROKER_LINE = (r"ERROR lost the broker at 127\.0\.0\.1:\d+: no connection for \d+ s;"
                    r" exiting")


@pytest.mark.timeout(60)
def test_idle_workers_exit_by_themselves_when_the_broker_dies(make_cluster):
    cluster = make_cluster(workers=2, cpus=1, worker_args=("--broker-timeout", "3"))
    client = cluster.client()
    assert client.gather([client.submit_one(tasks.const("x"))]) == [b"x"]
    killed = time.monotonic()
    os.kill(cluster.broker_pid, signal.SIGKILL)
    for worker in cluster.workers:
        code = worker.wait(3 + 7)   # the timeout, plus a heartbeat round and the exit
        assert code == 2, f"worker exited with {code}"
    took = time.monotonic() - killed
    assert 3 <= took < 10, took
    for i in range(2):
        with open(os.path.join(cluster.log_dir, f"worker-{i}.log")) as f:
            log = f.read()
        assert re.search(LOST_BROKER_LINE, log), log[-1500:]


@pytest.mark.timeout(60)
def test_a_busy_worker_exits_by_itself_when_the_broker_dies(make_cluster):
    cluster = make_cluster(workers=1, cpus=1, worker_args=("--broker-timeout", "2"))
    client = cluster.client()
    client.submit_one(tasks.run("sleep 10"))
    wait_until(lambda: running_sleep(cluster), timeout=10, message="the task to start")
    sleeper = children_named(cluster.workers[0], "sleep")[0]
    os.kill(cluster.broker_pid, signal.SIGKILL)
    worker = cluster.workers[0]
    try:
        code = worker.wait(2 + 4)
    except subprocess.TimeoutExpired:
        code = None
    with open(os.path.join(cluster.log_dir, "worker-0.log")) as f:
        assert re.search(LOST_BROKER_LINE, f.read())
    assert code == 2, "the worker did not exit within its --broker-timeout (+4 s)"
    wait_until(lambda: not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE,
               timeout=5, message="the task's process to end with its worker")
