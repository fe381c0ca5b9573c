"""Resources and placement on real workers: cores never oversubscribed, stealing, fit."""

from hyperloom.client import tasks

from ..conftest import wait_until


def interval_task(cpus):
    task = tasks.run(("sh", "-c", "date +%s.%N; sleep 0.3; date +%s.%N"))
    task.resource_request = tasks.cpus(cpus)
    return task


def test_tasks_never_use_more_cores_than_the_worker_has(make_cluster):
    client = make_cluster(workers=1, cpus=3).client()
    futures = client.submit([interval_task(2) for _ in range(4)])
    intervals = sorted(tuple(map(float, r.split())) for r in client.gather(futures))
    for (_, end), (start, _) in zip(intervals, intervals[1:]):
        assert start >= end - 0.01, "two 2-core tasks overlapped on a 3-core worker"


def test_light_tasks_run_beyond_the_core_count(make_cluster):
    client = make_cluster(workers=1, cpus=1).client()
    busy = client.submit_one(tasks.run("sleep 1"))
    light = client.submit([tasks.const(str(i)) for i in range(50)])
    assert len(client.gather(light)) == 50
    assert busy.running()   # the light tasks did not wait for the core
    busy.release()


def test_task_no_worker_fits_waits_visibly_until_one_joins(make_cluster):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    big = tasks.run(("sh", "-c", "printf done"))
    big.resource_request = tasks.cpus(4)
    future = client.submit_one(big)
    unplaceable = wait_until(lambda: client.info()["unplaceable"], timeout=10,
                             message="the broker to report the task as unplaceable")
    assert "needs 4 cpus" in unplaceable[0]["reason"]
    assert future.running()
    cluster.add_worker(cpus=4)
    assert future.gather() == b"done"


def test_idle_worker_takes_queued_work_from_a_busy_one(make_cluster):
    cluster = make_cluster(workers=1, cpus=1)
    client = cluster.client()
    futures = client.submit([tasks.run("sleep 1") for _ in range(3)])
    wait_until(lambda: client.info()["workers"][0]["running"] == 3, timeout=10,
               message="all three tasks to be assigned to the only worker")
    cluster.add_worker(cpus=1)
    client.gather(futures)
    finished = sorted(w["tasks_finished"] for w in client.info()["workers"])
    assert finished[0] >= 1, f"the new worker ran nothing: {finished}"
