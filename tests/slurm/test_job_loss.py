"""A batch system ending a job signals the worker and its programs together (no Slurm needed)."""

import os
import signal

import pytest

from hyperloom.client import tasks

from ..conftest import wait_until


@pytest.mark.allow_crash
def test_sigterm_to_worker_and_its_programs_is_a_worker_loss_not_a_task_failure(make_cluster):
    # scancel and preemption SIGTERM every process of the job step at once: the program a
    # task runs dies of SIGTERM too, which must not count as the task failing.
    cluster = make_cluster(workers=2, cpus=1)
    client = cluster.client()
    slow = [tasks.run(["sh", "-c", "sleep 3; echo done"]) for _ in range(2)]
    futures = client.submit(slow)
    wait_until(lambda: all(w["running"] for w in client.info()["workers"]), timeout=30,
               message="both workers to run a program")
    victim = cluster.workers[0]
    os.killpg(victim.pid, signal.SIGTERM)
    assert client.gather(futures) == [b"done\n", b"done\n"]
    assert client.get_stats()["n_workers"] == 1
    assert victim.wait(timeout=20) is not None
