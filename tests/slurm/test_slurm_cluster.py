"""SlurmCluster on a real Slurm: tasks run inside jobs, job loss, adapt, nothing left queued."""

import json
import subprocess
import urllib.request

import pytest

from hyperloom import SlurmCluster
from hyperloom.client import tasks

from ..conftest import wait_until


def job_id_task(sleep=0.0):
    """A task whose result is the Slurm job it ran in ($SLURM_JOB_ID of its worker)."""
    return tasks.run(["sh", "-c", f"sleep {sleep}; echo $SLURM_JOB_ID"])


def queued(name):
    result = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                            text=True, timeout=30, check=True)
    return result.stdout.split()


def wait_for_workers(client, count, timeout=90):
    wait_until(lambda: client.get_stats()["n_workers"] >= count, timeout=timeout,
               interval=0.2, message=f"{count} workers from Slurm jobs to register")


def test_plan_runs_inside_slurm_jobs_and_close_empties_the_queue(slurm, tmp_path):
    logs = tmp_path / "logs"
    with SlurmCluster(jobs=2, cpus=1, walltime="00:10:00", log_directory=str(logs)) as cluster:
        assert cluster.job_name.startswith("hyperloom-")
        client = cluster.client()
        wait_for_workers(client, 2)
        jobs = cluster.jobs()
        assert sorted(job["job_id"] for job in jobs) == sorted(cluster.submitted)
        assert {job["name"] for job in jobs} == {cluster.job_name}
        assert {job["state"] for job in jobs} == {"RUNNING"}
        results = client.gather(client.submit([job_id_task(0.1) for _ in range(12)]))
        ran_in = {result.decode().strip() for result in results}
        assert ran_in and ran_in <= set(cluster.submitted), (ran_in, cluster.submitted)
        assert (logs / "broker.log").exists()
        assert (logs / f"{cluster.job_name}.json").exists()
        name = cluster.job_name
    assert queued(name) == []
    assert not (logs / f"{name}.json").exists(), "the broker removes its scheduler file"


@pytest.mark.allow_crash
def test_plan_survives_scancel_of_a_worker_job(slurm, tmp_path):
    with SlurmCluster(jobs=2, cpus=1, walltime="00:10:00",
                      log_directory=str(tmp_path / "logs")) as cluster:
        client = cluster.client()
        wait_for_workers(client, 2)
        parts = [job_id_task(0.3) for _ in range(24)]
        futures = client.submit([tasks.merge(parts, "\n")] + parts[:6])

        def some_finished():
            client.get_stats()   # processes the broker's events, which update the futures
            return sum(f.finished() for f in futures[1:]) >= 2
        wait_until(some_finished, timeout=60, message="some tasks to finish before the cancel")
        victim = cluster.submitted[0]
        subprocess.run(["scancel", victim], check=True, timeout=30)
        merged = client.gather_one(futures[0]).decode().split()
        assert len(merged) == 24
        assert set(merged) <= set(cluster.submitted) | {victim}
        survivor = [job for job in cluster.submitted if job != victim]
        assert survivor[0] in merged, "the other job's worker finished the plan"
        wait_until(lambda: victim not in queued(cluster.job_name), timeout=60,
                   message="the cancelled job to leave the queue")
        assert client.get_stats()["n_workers"] == 1
        name = cluster.job_name
    assert queued(name) == []


@pytest.mark.slow
def test_adapt_grows_with_the_backlog_and_releases_idle_jobs(slurm, tmp_path):
    with SlurmCluster(cpus=1, walltime="00:10:00", log_directory=str(tmp_path / "l")) as cluster:
        client = cluster.client()
        assert queued(cluster.job_name) == []
        cluster.adapt(minimum=0, maximum=3, interval=0.5, idle_timeout=3)
        futures = client.submit([job_id_task(0.5) for _ in range(24)])
        wait_until(lambda: len(queued(cluster.job_name)) == 3, timeout=30, interval=0.2,
                   message="adapt to submit 3 jobs for a backlog of 24 tasks")
        ran_in = {r.decode().strip() for r in client.gather(futures)}
        assert len(ran_in) >= 2, "the backlog was spread over several jobs"
        wait_until(lambda: queued(cluster.job_name) == [], timeout=60, interval=0.5,
                   message="adapt to release the idle jobs")
        # A new backlog brings a job back.
        future = client.submit_one(job_id_task())
        assert client.gather_one(future).decode().strip() in cluster.submitted
        name = cluster.job_name
    assert queued(name) == []


def test_worker_reads_its_walltime_from_the_job(slurm, tmp_path):
    logs = tmp_path / "logs"
    with SlurmCluster(jobs=1, cpus=1, walltime="00:02:00", log_directory=str(logs)) as cluster:
        client = cluster.client()
        wait_for_workers(client, 1)
        (job,) = cluster.submitted
        output = (logs / f"{cluster.job_name}-{job}.out").read_text()
    line = next(line for line in output.splitlines() if "retiring in" in line)
    seconds = float(line.rsplit("retiring in ", 1)[1].split()[0])
    # two minutes of walltime, retiring a fifth of it (24 s) early
    assert 80 <= seconds <= 96, line


@pytest.mark.slow
def test_adapt_replaces_a_job_whose_worker_retired_at_walltime(slurm, tmp_path):
    counter = tmp_path / "runs"
    with SlurmCluster(cpus=1, walltime="00:10:00", worker_args=("--lifetime", "4"),
                      log_directory=str(tmp_path / "logs")) as cluster:
        client = cluster.client()
        cluster.adapt(minimum=0, maximum=1, interval=0.5, idle_timeout=30)
        parts = [tasks.run(["sh", "-c", f"sleep 0.5; echo $SLURM_JOB_ID >> {counter}; "
                                        f"echo {i}"]) for i in range(16)]
        futures = client.submit([tasks.merge(parts, " ")])
        result = client.gather_one(futures[0]).decode().split()
        assert result == [str(i) for i in range(16)]
        jobs = counter.read_text().split()
        assert len(jobs) == 16, "each task ran once: the retired worker's data was copied"
        assert len(set(jobs)) >= 2, "a second job took over after the first one's walltime"
        name = cluster.job_name
    assert queued(name) == []


def test_broker_in_a_job_of_its_own(slurm, tmp_path):
    import json
    import os

    import psutil
    logs = tmp_path / "logs"
    with SlurmCluster(jobs=1, cpus=1, walltime="00:10:00", broker_job=True,
                      log_directory=str(logs)) as cluster:
        (broker_job,) = queued(cluster.broker_job_name)
        assert broker_job == cluster.broker_job_id
        broker_pid = json.load(open(cluster.scheduler_file))["pid"]
        ancestors = {p.pid for p in psutil.Process(broker_pid).parents()}
        assert os.getpid() not in ancestors, "the broker is Slurm's child, not ours"
        client = cluster.client()
        wait_for_workers(client, 1)
        results = client.gather(client.submit([job_id_task() for _ in range(4)]))
        assert {r.decode().strip() for r in results} == set(cluster.submitted)
        names = (cluster.job_name, cluster.broker_job_name)
    assert [queued(name) for name in names] == [[], []]


def _dashboard_data(url):
    with urllib.request.urlopen(url.rstrip("/") + "/data.json", timeout=10) as response:
        return json.loads(response.read())


def test_slurm_cluster_dashboard_shows_the_jobs_and_the_workers(slurm, tmp_path):
    with SlurmCluster(jobs=1, cpus=1, walltime="00:10:00", log_directory=str(tmp_path / "logs"),
                      dashboard=True) as cluster:
        assert cluster.dashboard_url.startswith("http://127.0.0.1:")
        client = cluster.client()
        wait_for_workers(client, 1)
        [job_id] = cluster.submitted
        wait_until(lambda: [job["id"] for job in _dashboard_data(cluster.dashboard_url)
                            ["slurm"]["jobs"]] == [job_id], timeout=60, interval=0.5,
                   message="the dashboard to list the cluster's job")
        wait_until(lambda: len(_dashboard_data(cluster.dashboard_url)["workers"]) == 1,
                   timeout=30, message="the dashboard to show the job's worker")
        url = cluster.dashboard_url
    with pytest.raises(OSError):   # closed with its cluster
        _dashboard_data(url)
