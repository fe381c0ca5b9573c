"""The user guide's basic examples, run on real loom-broker/loom-worker processes."""

import os
import socket
import tempfile

from loom.client import Client, tasks


def test_basic_usage_prints_hello_world(shared_cluster):
    task1 = tasks.const("Hello ")
    task2 = tasks.const("world!")
    task3 = tasks.merge((task1, task2))
    client = Client(shared_cluster.host, shared_cluster.port)
    result = client.submit_one(task3)
    assert result.gather() == b"Hello world!"
    client.close()


def test_submitting_more_tasks_at_once(client):
    task1 = tasks.const("Hello ")
    task2 = tasks.const(" ")
    task3 = tasks.const("world!")
    results = client.submit((task1, task2, task3))
    assert client.gather(results) == [b"Hello ", b" ", b"world!"]


def test_reusing_futures_as_inputs(client):
    task1 = tasks.const("abc")
    f1 = client.submit_one(task1)
    task2 = tasks.const("def")
    task_a = tasks.merge((f1, task2))
    f_a = client.submit_one(task_a)
    assert f_a.gather() == b"abcdef"
    # f1 was neither released nor gathered: it can still be fetched and reused
    assert f1.fetch() == b"abc"
    assert client.submit_one(tasks.merge((f1, f1))).gather() == b"abcabc"
    f1.release()


def _counting_task(path):
    """A task that appends a line to ``path`` each time it runs, then prints 'data'."""
    return tasks.run(("sh", "-c", f"echo run >> {path}; printf data"))


def _runs(path):
    with open(path) as f:
        return len(f.readlines())


def test_bad_pattern_computes_the_shared_task_twice(client, tmp_path):
    counter = tmp_path / "count"
    task1 = _counting_task(counter)
    task2 = tasks.run("cat", stdin=task1)
    f2 = client.submit_one(task2)
    task3 = tasks.run("cat", stdin=task1)
    f3 = client.submit_one(task3)
    assert client.gather((f2, f3)) == [b"data", b"data"]
    assert _runs(counter) == 2


def test_better_pattern_with_gradual_submit_computes_it_once(client, tmp_path):
    counter = tmp_path / "count"
    task1 = _counting_task(counter)
    f1 = client.submit_one(task1)
    f2 = client.submit_one(tasks.run("cat", stdin=f1))
    f3 = client.submit_one(tasks.run("cat", stdin=f1))
    assert client.gather((f2, f3)) == [b"data", b"data"]
    f1.release()
    assert _runs(counter) == 1


def test_better_pattern_in_one_submit_computes_it_once(client, tmp_path):
    counter = tmp_path / "count"
    task1 = _counting_task(counter)
    task2 = tasks.run("cat", stdin=task1)
    task3 = tasks.run("cat", stdin=task1)
    f2, f3 = client.submit((task2, task3))
    assert client.gather((f2, f3)) == [b"data", b"data"]
    assert _runs(counter) == 1


def test_everything_is_released_after_gather(client):
    futures = client.submit([tasks.merge((tasks.const("a"), tasks.const("b")))
                             for _ in range(50)])
    assert client.gather(futures) == [b"ab"] * 50
    stats = client.get_stats()
    assert stats["n_workers"] == 2
    assert stats["n_data_objects"] == 0
    assert stats["n_tasks"] == 0


def test_worker_directories_are_clean_after_gather(shared_cluster, client):
    f = client.submit_one(tasks.run("ls"))
    assert f.gather().split() == [b"+err", b"+out"]
    host = socket.gethostname()
    for process in shared_cluster.workers:
        work_dir = os.path.join(tempfile.gettempdir(), f"worker-{host}-{process.pid}")
        assert sorted(os.listdir(work_dir)) == ["data", "run"]
        # A worker keeps the run directories of clean runs for the next runs
        # (run_task.RunDirs): nothing of a task is left in them, but two empty files.
        for name in os.listdir(os.path.join(work_dir, "run")):
            spare = os.path.join(work_dir, "run", name)
            assert sorted(os.listdir(spare)) == ["+err", "+out"]
            assert all(os.path.getsize(os.path.join(spare, f)) == 0 for f in os.listdir(spare))
