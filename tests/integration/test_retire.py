"""Walltime: a worker with --lifetime retires; its work and data move, nothing is recomputed."""

import pytest

from hyperloom.client import tasks
from hyperloom.cluster.walltime import lifetime_from_end

from ..conftest import wait_for_retirement, wait_until


def counted(counter, i, sleep):
    """A task that appends "i worker-pid" to ``counter`` each time it runs; returns i."""
    return tasks.run(["sh", "-c", f"sleep {sleep}; echo {i} $PPID >> {counter}; echo {i}"])


def runs(counter):
    return [line.split() for line in counter.read_text().splitlines()]


def test_retiring_worker_hands_back_tasks_and_data_without_recomputation(make_cluster,
                                                                           tmp_path):
    counter = tmp_path / "runs"
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    retiring = cluster.add_worker(extra_args=("--lifetime", "3"))
    cluster.wait_for_workers(2)
    # 24 tasks of 0.5 s on two one-core workers: about 6 s, so the retirement at 3 s falls
    # in the middle, with tasks queued on the retiring worker and results held there.
    parts = [counted(counter, i, 0.5) for i in range(24)]
    futures = client.submit([tasks.merge(parts, " ")] + parts[:4])
    wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=30,
               message="the worker with a 3 s lifetime to retire")
    assert retiring.wait(timeout=30) == 0
    assert client.gather_one(futures[0]).decode().split() == [str(i) for i in range(24)]
    assert [f.decode().strip() for f in client.gather(futures[1:])] == ["0", "1", "2", "3"]
    ran = runs(counter)
    assert sorted(int(i) for i, _ in ran) == list(range(24)), "each task ran exactly once"
    by_worker = {pid for _, pid in ran}
    assert str(retiring.pid) in by_worker and len(by_worker) == 2, "both workers ran tasks"


def test_retiring_worker_copies_data_only_it_holds(make_cluster, tmp_path):
    counter = tmp_path / "runs"
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    retiring = cluster.add_worker(extra_args=("--lifetime", "3"))
    cluster.wait_for_workers(2)
    futures = client.submit([counted(counter, i, 0.05) for i in range(8)])
    held = wait_for_retirement(client, retiring, futures)
    (survivor,) = client.info()["workers"]
    assert survivor["bytes_held"] == sum(held.values()), "it holds the retired one's data"
    assert [f.decode() for f in client.gather(futures)] == [f"{i}\n" for i in range(8)]
    assert len(runs(counter)) == 8, "no result was recomputed"


def test_tasks_that_read_data_of_a_retiring_worker_run_elsewhere(make_cluster):
    """Chains whose next step becomes ready while the worker holding its input
    retires: the broker crashed (its scheduler weighed that holder for locality)."""
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    retiring = cluster.add_worker(extra_args=("--lifetime", "2"))
    cluster.wait_for_workers(2)
    chains = []
    for i in range(6):
        task = tasks.const(f"{i}:")
        for _ in range(8):
            task = tasks.run(["sh", "-c", "sleep 0.1; cat; printf x"], stdin=task)
        chains.append(task)
    futures = client.submit(chains)
    assert [f.decode() for f in client.gather(futures)] == [f"{i}:xxxxxxxx" for i in range(6)]
    assert retiring.wait(timeout=30) == 0
    assert client.get_stats()["n_workers"] == 1


@pytest.mark.parametrize("end, left", [("2026-01-01T12:30:00", 1680.0),
                                       ("2026-01-01T12:00:10", 8.0),
                                       ("N/A", None), ("Unknown", None),
                                       ("2026-01-01T11:00:00", None)])
def test_lifetime_from_the_slurm_end_time(end, left):
    import datetime
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    assert lifetime_from_end(end, now) == left
