"""CURVE: with --secret-file only holders of the cluster key get in; by default loopback only."""

import subprocess

import pytest

from hyperloom.client import Client, LoomError, tasks

from ..conftest import loom_program

KEYGEN = loom_program("loom-keygen")
BROKER = loom_program("loom-broker")
WORKER = loom_program("loom-worker")


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "cluster.secret"
    subprocess.run([*KEYGEN, str(path)], check=True, capture_output=True)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return str(path)


def test_cluster_with_a_secret_runs_plans_across_workers(make_cluster, secret):
    cluster = make_cluster(workers=2, cpus=1, secret_file=secret)
    client = cluster.client()
    # two 1-core producers land on different workers; the merge moves data between them
    a = tasks.run(("sh", "-c", "printf a"))
    b = tasks.run(("sh", "-c", "printf b"))
    assert client.submit_one(tasks.merge((a, b))).gather() == b"ab"
    assert sum(w["bytes_received"] for w in client.info()["workers"]) > 0


def test_client_without_the_key_is_refused_and_logged(make_cluster, secret, tmp_path):
    cluster = make_cluster(workers=1, cpus=1, secret_file=secret)
    with pytest.raises(LoomError, match="refused the connection"):
        Client(cluster.host, cluster.port, connect_timeout=10)
    other = tmp_path / "other.secret"
    subprocess.run([*KEYGEN, str(other)], check=True, capture_output=True)
    with pytest.raises(LoomError, match="refused the connection"):
        Client(cluster.host, cluster.port, connect_timeout=10, secret_file=str(other))
    client = cluster.client()
    assert client.get_stats()["n_workers"] == 1  # nobody else got in
    cluster_log = open(f"{cluster.log_dir}/broker.log").read()
    assert "refused a connection" in cluster_log


def test_worker_without_the_key_never_joins(make_cluster, secret):
    cluster = make_cluster(workers=1, cpus=1, secret_file=secret)
    intruder = subprocess.Popen(
        [*WORKER, "--cpus", "1", "--broker-timeout", "2", cluster.host, str(cluster.port)],
        stderr=subprocess.PIPE)
    try:
        assert intruder.wait(20) != 0
    finally:
        intruder.kill()
        intruder.wait()
        intruder.stderr.close()
    assert cluster.client().get_stats()["n_workers"] == 1


def test_broker_listens_on_loopback_by_default():
    help_text = subprocess.run([*BROKER, "--help"], capture_output=True, text=True).stdout
    assert "default: loopback only" in help_text
    process = subprocess.Popen([*BROKER, "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    try:
        assert process.stdout.readline().decode().startswith("tcp://127.0.0.1:")
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
