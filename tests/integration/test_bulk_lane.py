"""The bulk lane between real workers: a big result crosses on it intact and a small one
on ZeroMQ; a holder lost between its offer and the fetch leaves no hang (the broker
recomputes, the receiver goes on); with a secret file there is no lane at all.

Placement is forced: the data is made while one worker runs, then a task type that only
a newcomer provides (``my/histogram``, ``--extension my_count``) needs it there."""

import os
import signal
import subprocess
import sys

import pytest

from hyperloom.client import tasks

from ..conftest import data_port, loom_program, wait_for_retirement, wait_until

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
from my_count import histogram  # noqa: E402

BIG = 40_000_000          # one 40 MB frame: above the lane's 32 MiB
SMALL = 1_000_000


@tasks.py_task(n_direct_args=1)
def pattern(n):
    """Every byte value in turn: a histogram shows each one n / 256 times."""
    return bytes(range(256)) * (n // 256)


def expected(n):
    return {bytes([b]): n // 256 for b in range(256)}


def worker_log(cluster, index):
    with open(os.path.join(cluster.log_dir, f"worker-{index}.log")) as f:
        return f.read()


@pytest.fixture
def extension_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.abspath(EXAMPLES) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))


def held_then_newcomer(make_cluster, **options):
    """A cluster whose first worker holds a small and a big pattern, and a second worker
    that alone runs my/histogram: ``(cluster, client, small, big, newcomer)``."""
    cluster = make_cluster(workers=1, cpus=1, log_level="debug", **options)
    client = cluster.client()
    small, big = client.submit([pattern(SMALL), pattern(BIG)])
    client.wait([small, big])
    newcomer = cluster.add_worker(extra_args=("--extension", "my_count"))
    cluster.wait_for_workers(2)
    return cluster, client, small, big, newcomer


def lane_lines(text):
    return [line for line in text.splitlines() if "bulk lane" in line]


@pytest.mark.timeout(120)
def test_a_big_result_crosses_on_the_bulk_lane_and_a_small_one_on_zeromq(make_cluster,
                                                                         extension_path):
    cluster, client, small, big, _ = held_then_newcomer(make_cluster)
    assert client.submit_one(histogram(small)).gather() == expected(SMALL)
    assert lane_lines(worker_log(cluster, 0)) == []    # 1 MB: over ZeroMQ
    assert client.submit_one(histogram(big)).gather() == expected(BIG)
    assert "offered 1 objects (40000000 bytes) to tcp://" in worker_log(cluster, 0)
    fetched = lane_lines(worker_log(cluster, 1))
    assert len(fetched) == 1 and "fetched 1 objects (40000000 bytes) from tcp://" in fetched[0]
    received = sum(w["bytes_received"] for w in client.info()["workers"])
    assert received >= BIG                              # the broker counts it as before


def tcp_rows():
    """The kernel's rows of every TCP connection, split into fields (/proc/net/tcp*)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        yield from (row.split() for row in rows)


def port_of(address):
    """The port of an address as /proc/net/tcp writes it (``0100007F:1F90``)."""
    return int(address.rsplit(":", 1)[1], 16)


def receive_queue(port):
    """Bytes waiting unread in the kernel on the established connections to ``port``."""
    return sum(int(fields[4].split(":")[1], 16) for fields in tcp_rows()
               if port_of(fields[1]) == port and fields[3] == "01")


def lane_state(cluster, port):
    """What a failed wait for the offer needs: the TCP rows of ``port`` (either end) and
    both logs."""
    rows = [" ".join(fields) for fields in tcp_rows()
            if port in (port_of(fields[1]), port_of(fields[2]))]
    return ("rows of port %d:\n%s\nholder:\n%s\nreceiver:\n%s" % (
        port, "\n".join(rows), worker_log(cluster, 0)[-4000:], worker_log(cluster, 1)[-2000:]))


@pytest.mark.allow_crash
@pytest.mark.timeout(120)
def test_a_holder_lost_between_offer_and_fetch(make_cluster, extension_path):
    """The receiver is stopped while the holder offers, the holder is killed once the
    offer sits in the receiver's socket, then the receiver goes on: its fetch is refused,
    it logs that and stays healthy, and the broker recomputes the data, as for any data
    lost with its worker."""
    cluster, client, small, big, receiver = held_then_newcomer(
        make_cluster, broker_args=("--heartbeat-misses", "60"))
    assert client.submit_one(histogram(small)).gather() == expected(SMALL)  # channel open
    holder = cluster.workers[0]
    port = data_port(receiver, client)
    os.kill(receiver.pid, signal.SIGSTOP)
    try:
        future = client.submit_one(histogram(big))
        wait_until(lambda: "offered 1 objects" in worker_log(cluster, 0), timeout=20,
                   message="the holder to offer the big object")
        wait_until(lambda: receive_queue(port) > 0, timeout=10,
                   message="the offer to reach the receiver's socket",
                   details=lambda: lane_state(cluster, port))
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=20,
                   message="the broker to count the holder lost")
    finally:
        os.kill(receiver.pid, signal.SIGCONT)
    assert future.gather() == expected(BIG)
    log = worker_log(cluster, 1)
    assert "bulk lane: fetching 1 objects (40000000 bytes) from tcp://" in log, log[-3000:]
    assert receiver.poll() is None
    assert client.submit_one(histogram(small)).gather() == expected(SMALL)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "cluster.secret"
    subprocess.run([*loom_program("loom-keygen"), str(path)], check=True,
                   capture_output=True)
    return str(path)


@pytest.mark.timeout(120)
def test_with_a_secret_file_there_is_no_lane(make_cluster, extension_path, secret):
    """The lane is plain TCP: with CURVE every byte stays on the encrypted channels."""
    cluster, client, _, big, newcomer = held_then_newcomer(make_cluster, secret_file=secret)
    assert client.submit_one(histogram(big)).gather() == expected(BIG)
    assert lane_lines(worker_log(cluster, 0)) == lane_lines(worker_log(cluster, 1)) == []
    assert sum(w["bytes_received"] for w in client.info()["workers"]) >= BIG
    assert data_port(newcomer, client)   # one listening port the broker knows (no lane)


@pytest.mark.timeout(120)
def test_a_retiring_worker_hands_its_big_data_over_the_lane(make_cluster, tmp_path):
    """Retiring, a worker copies what only it holds to the others and exits; its offers
    must be fetched before it goes (it waits for them as ZeroMQ lingers), or the copies
    the broker counts delivered would be lost and recomputed."""
    counter = tmp_path / "runs"
    cluster = make_cluster(workers=1, cpus=1, log_level="debug")
    client = cluster.client()
    retiring = cluster.add_worker(extra_args=("--lifetime", "3"))
    cluster.wait_for_workers(2)
    big = [tasks.run(["sh", "-c", f"echo {i} >> {counter}; head -c {BIG} /dev/zero"])
           for i in range(4)]
    futures = client.submit(big)
    wait_for_retirement(client, retiring, futures)
    sizes = client.gather(client.submit([tasks.size(f) for f in futures]))
    assert [int.from_bytes(size, "little") for size in sizes] == [BIG] * 4
    assert len(counter.read_text().splitlines()) == 4, "no result was recomputed"
    assert "on the bulk lane" in worker_log(cluster, 0)


class PeakRss:
    """The highest RSS of a process, sampled every 2 ms on a thread while in the block."""

    def __init__(self, pid):
        import psutil
        import threading
        self.process, self.stop = psutil.Process(pid), threading.Event()
        self.peak = self.before = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.timeout(120)
def test_a_client_reads_a_big_result_from_its_workers_lane_not_through_the_broker(
        make_cluster):
    cluster = make_cluster(workers=1, cpus=1, log_level="debug")
    client = cluster.client()
    big = client.submit_one(pattern(BIG))
    client.wait([big])
    with PeakRss(cluster.broker_pid) as broker:
        value = big.gather()
    assert value == bytes(range(256)) * (BIG // 256)
    assert "to a client on the bulk lane" in worker_log(cluster, 0)
    # relayed, the value would pass through the broker's memory (+40 MB)
    assert broker.peak - broker.before < BIG // 2, broker.peak - broker.before
    assert client.info()["n_data_objects"] == 0       # gathered: released all the same


@pytest.mark.timeout(120)
def test_a_client_that_cannot_reach_a_lane_gets_big_results_through_the_broker(
        make_cluster, monkeypatch, caplog):
    """A client outside the workers' network: its first read fails, it asks again
    without the lane, and from then on big values come through the broker."""
    from hyperloom import lane

    def unreachable(address, token, sizes):
        raise lane.Unreachable(f"cannot connect to {address}: filtered (test)")
    monkeypatch.setattr(lane, "fetch_frames", unreachable)
    cluster = make_cluster(workers=1, cpus=1, log_level="debug")
    client = cluster.client()
    first, second = client.submit([pattern(BIG), pattern(BIG + 256)])
    client.wait([first, second])
    with caplog.at_level("WARNING", logger="hyperloom.client"):
        assert first.gather() == bytes(range(256)) * (BIG // 256)
    assert "results come through the broker from now on" in caplog.text
    offers = worker_log(cluster, 0).count("to a client on the bulk lane")
    assert second.gather() == bytes(range(256)) * (BIG // 256 + 1)
    assert worker_log(cluster, 0).count("to a client on the bulk lane") == offers == 1
    assert client.info()["n_data_objects"] == 0


@pytest.mark.timeout(120)
def test_a_lane_read_refused_once_asks_again_and_keeps_the_lane(make_cluster, monkeypatch):
    """Refused at once is a holder that died meanwhile (or a closed port), not a
    client outside the network: that value comes through the broker, later ones
    still over the lane."""
    from hyperloom import lane
    real_fetch, calls = lane.fetch_frames, []

    def refused_once(address, token, sizes):
        calls.append(address)
        if len(calls) == 1:
            error = lane.Unreachable(f"cannot connect to {address}: refused (test)")
            error.refused = True
            raise error
        return real_fetch(address, token, sizes)
    monkeypatch.setattr(lane, "fetch_frames", refused_once)
    cluster = make_cluster(workers=1, cpus=1, log_level="debug")
    client = cluster.client()
    first, second = client.submit([pattern(BIG), pattern(BIG + 256)])
    client.wait([first, second])
    assert first.gather() == bytes(range(256)) * (BIG // 256)
    assert second.gather() == bytes(range(256)) * (BIG // 256 + 1)
    assert len(calls) == 2                     # the second value came over the lane
    assert client.info()["n_data_objects"] == 0
