"""Canceling running tasks on real clusters: a released or orphaned task that is already
running is stopped (its program's process group, or the executor process of a Python
task), its run directory removed, and its cores run the next task at once.

Each test holds the worker's only free cores with tasks that would run for a minute;
the old code let them run to their end, so the next task waited for that minute and
the test's timeout failed it."""

import os

import psutil
import pytest

from hyperloom.client import tasks

from ..conftest import process_gone, wait_until


def programs_named(worker, name):
    return [p for p in psutil.Process(worker.pid).children(recursive=True) if p.name() == name]


def running_program(cluster):
    """``(pid, run directory)`` of the one ``sleep`` program the worker runs."""
    worker = cluster.workers[0]
    sleeps = wait_until(lambda: programs_named(worker, "sleep"), timeout=20,
                        message="the program to start")
    assert len(sleeps) == 1, sleeps
    run_dir = sleeps[0].cwd()
    assert os.path.basename(os.path.dirname(run_dir)) == "run", run_dir
    return sleeps[0].pid, run_dir


def assert_stopped(pid, run_dir):
    wait_until(lambda: process_gone(pid), timeout=10, message="the program to be killed")
    wait_until(lambda: not os.path.exists(run_dir), timeout=10,
               message="the run directory to be removed")


@pytest.mark.timeout(40)
def test_releasing_a_running_program_kills_it_and_frees_its_core(make_cluster):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    future = client.submit_one(tasks.run(("sh", "-c", "sleep 60; printf late")))
    pid, run_dir = running_program(cluster)
    client.release([future])
    assert_stopped(pid, run_dir)
    # the shell that ran the program went with its process group
    assert not programs_named(cluster.workers[0], "sh")
    assert client.submit_one(tasks.run("printf next")).gather() == b"next"
    assert client.get_stats()["n_tasks"] == 0


@pytest.mark.timeout(40)
def test_a_client_that_leaves_stops_its_running_program(make_cluster):
    cluster = make_cluster(workers=1, cpus=1)
    leaving = cluster.client()
    leaving.submit_one(tasks.run("sleep 60"))
    pid, run_dir = running_program(cluster)
    leaving.close()
    assert_stopped(pid, run_dir)
    other = cluster.client()
    assert other.submit_one(tasks.run("printf next")).gather() == b"next"


@tasks.py_task(n_direct_args=1)
def record_pid_and_sleep(pid_file):
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    import time
    time.sleep(60)
    return b"late"


@tasks.py_task()
def executor_pid():
    return str(os.getpid())


@pytest.mark.timeout(60)
def test_releasing_running_python_tasks_stops_their_executor_processes(make_cluster,
                                                                        tmp_path):
    """A 2-core worker runs Python tasks in executor processes: each canceled one is
    killed and replaced, and the cores take new Python tasks at once."""
    cluster = make_cluster(workers=1, cpus=2)
    client = cluster.client()
    pid_files = [str(tmp_path / f"pid-{i}") for i in range(2)]
    futures = client.submit([record_pid_and_sleep(path) for path in pid_files])
    wait_until(lambda: all(os.path.exists(path) for path in pid_files), timeout=30,
               message="both Python tasks to start")
    pids = [int(open(path).read()) for path in pid_files]
    executors = {p.pid for p in psutil.Process(cluster.workers[0].pid).children(recursive=True)}
    assert set(pids) <= executors, (pids, executors)  # they run in the worker's executors
    client.release(futures)
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=10,
               message="the executor processes running them to be killed")
    results = client.gather(client.submit([executor_pid(), executor_pid()]))
    assert not {int(r) for r in results} & set(pids)  # replacements ran them


@pytest.mark.timeout(60)
def test_releasing_a_running_python_task_stops_it_on_a_one_core_worker(make_cluster, tmp_path):
    """A 1-core worker runs Python tasks in an executor process too (they ran in a
    worker thread, which nothing could stop): the canceled task is killed and the
    core takes the next Python task at once."""
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    pid_file = str(tmp_path / "pid")
    future = client.submit_one(record_pid_and_sleep(pid_file))
    wait_until(lambda: os.path.exists(pid_file), timeout=30, message="the Python task to start")
    pid = int(open(pid_file).read())
    assert pid != cluster.workers[0].pid  # not in the worker's own process
    client.release([future])
    wait_until(lambda: process_gone(pid), timeout=10, message="its executor process to be killed")
    assert int(client.submit_one(executor_pid()).gather()) != pid
