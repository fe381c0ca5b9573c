"""The scheduler file and --interface: peers find the broker through a file, not host:port."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from hyperloom import scheduler_file
from hyperloom.client import Client, tasks
from hyperloom.errors import LoomError

from ..conftest import wait_until

BROKER = [sys.executable, "-m", "hyperloom.broker"]
WORKER = [sys.executable, "-m", "hyperloom.worker"]
STATUS = [sys.executable, "-m", "hyperloom.status"]


# ------------------------------------------------------------ the file itself

def test_written_file_reads_back_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "sub" / "scheduler.json")
    info = scheduler_file.describe("10.1.2.3", 9010, curve=True)
    scheduler_file.write(path, info)
    assert scheduler_file.read(path, timeout=0) == info
    assert os.listdir(tmp_path / "sub") == ["scheduler.json"]
    assert json.load(open(path))["address"] == "tcp://10.1.2.3:9010"


def test_missing_file_times_out_naming_it(tmp_path):
    path = str(tmp_path / "nowhere.json")
    with pytest.raises(LoomError, match="nowhere.json did not appear within 0.3 s"):
        scheduler_file.read(path, timeout=0.3)


def test_garbage_and_other_versions_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("not json")
    with pytest.raises(LoomError, match="s.json is not a hyperloom scheduler file"):
        scheduler_file.read(str(path), timeout=0)
    values = scheduler_file.describe("h", 1, False).__dict__ | {"protocol_version": -7}
    path.write_text(json.dumps(values))
    with pytest.raises(LoomError, match="s.json names a broker speaking protocol version -7"):
        scheduler_file.read(str(path), timeout=0)


def test_file_of_a_dead_local_broker_is_stale(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    info = scheduler_file.describe("127.0.0.1", 9010, False).__dict__ | {"pid": int(dead)}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(info))
    with pytest.raises(LoomError, match=f"broker pid {dead} .* no longer running"):
        scheduler_file.read(str(path), timeout=0.2)


def test_remove_keeps_a_file_another_broker_wrote(tmp_path):
    path = str(tmp_path / "s.json")
    scheduler_file.write(path, scheduler_file.describe("h", 1, False))
    scheduler_file.remove(path, pid=os.getpid() + 1)
    assert os.path.exists(path)
    scheduler_file.remove(path)
    assert not os.path.exists(path)


def test_unknown_interface_is_named():
    with pytest.raises(LoomError, match="no network interface 'nosuch0'.*there are: .*lo"):
        scheduler_file.interface_address("nosuch0")
    assert scheduler_file.interface_address("lo") == "127.0.0.1"


# ------------------------------------------------------------ real processes

def _start_broker(processes, path, *extra):
    broker = processes(*BROKER, "--port", "0", "--scheduler-file", path, *extra,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    endpoint = broker.stdout.readline().decode().strip()
    assert endpoint.startswith("tcp://"), broker.stderr.read().decode()
    return broker, endpoint


def test_worker_client_and_status_find_the_broker_through_the_file(processes, tmp_path):
    path = str(tmp_path / "shared" / "scheduler.json")
    # The worker starts first and waits for the file, as a batch job may start first.
    worker = processes(*WORKER, "--cpus", "1", "--scheduler-file", path, "--exit-with-parent",
                       stderr=subprocess.DEVNULL)
    broker, endpoint = _start_broker(processes, path, "--interface", "lo")
    info = json.load(open(path))
    assert info["address"] == endpoint == f"tcp://127.0.0.1:{info['port']}"
    assert info["pid"] == broker.pid and info["curve"] is False
    with Client(scheduler_file=path) as client:
        wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=30,
                   message="the worker to register through the scheduler file")
        assert client.gather_one(client.submit_one(tasks.const(b"found"))) == b"found"
    status = subprocess.run([*STATUS, "--scheduler-file", path], capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0 and status.stdout.startswith("1 workers"), status.stderr
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(timeout=20) == 0
    assert not os.path.exists(path), "the broker leaves no scheduler file behind"
    assert worker.wait(timeout=20) is not None


def test_curve_broker_file_says_so_and_peers_without_the_key_are_told(processes, tmp_path):
    from hyperloom.security import generate_secret_file
    secret = str(tmp_path / "key")
    generate_secret_file(secret)
    path = str(tmp_path / "scheduler.json")
    _start_broker(processes, path, "--secret-file", secret)
    assert json.load(open(path))["curve"] is True
    with pytest.raises(LoomError, match="scheduler.json demands the cluster's secret file"):
        Client(scheduler_file=path, connect_timeout=5)
    result = subprocess.run([*WORKER, "--scheduler-file", path], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "give --secret-file" in result.stderr
    with Client(scheduler_file=path, secret_file=secret, connect_timeout=10) as client:
        assert client.get_stats()["n_workers"] == 0


def test_peers_waiting_for_a_missing_file_fail_naming_it(tmp_path):
    path = str(tmp_path / "never.json")
    result = subprocess.run([*WORKER, "--scheduler-file", path, "--scheduler-file-timeout",
                             "0.5"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "never.json did not appear within 0.5 s" in result.stderr
    result = subprocess.run([*STATUS, "--scheduler-file", path, "--timeout", "0.5"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "never.json did not appear" in result.stderr
    with pytest.raises(LoomError, match="never.json did not appear within 0.2 s"):
        Client(scheduler_file=path, connect_timeout=0.2)


def test_bad_interface_is_refused_by_broker_and_worker():
    for command in (BROKER, [*WORKER, "127.0.0.1", "9"]):
        result = subprocess.run([*command, "--interface", "nosuch0"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 2 and "no network interface 'nosuch0'" in result.stderr


def test_unreachable_broker_names_the_address_and_suggests_interface(tmp_path):
    # A bound but not listening socket: connections to its port are refused for as
    # long as the test holds it, and no other process can take the port meanwhile.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
        result = subprocess.run([*WORKER, "--broker-timeout", "1", "--cpus", "1",
                                 "127.0.0.1", str(port)], capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 2
    assert f"could not reach a broker at tcp://127.0.0.1:{port} (tried for" in result.stderr
    assert "--interface" in result.stderr


def test_broker_at_its_open_file_limit_refuses_more_peers_saying_why(processes, tmp_path):
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (60, 60))   # soft = hard: cannot raise
    path = str(tmp_path / "s.json")
    broker = processes(*BROKER, "--port", "0", "--scheduler-file", path,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=low_limit)
    assert broker.stdout.readline().startswith(b"tcp://")
    clients = []
    try:
        with pytest.raises(LoomError, match="the broker already has 12 peers, the most its "
                                            "open-file limit allows"):
            for _ in range(13):
                clients.append(Client(scheduler_file=path, connect_timeout=10))
        assert len(clients) == 12
        assert clients[-1].get_stats()["n_workers"] == 0, "the admitted ones still work"
    finally:
        for client in clients:
            client.close()
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(timeout=20) == 0
    assert b"room for about 12 peers, more are refused" in broker.stderr.read()


def test_broker_and_worker_raise_their_open_file_soft_limit(processes, tmp_path):
    import resource

    import psutil
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 100:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")

    def low_soft_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    path = str(tmp_path / "s.json")
    broker = processes(*BROKER, "--port", "0", "--scheduler-file", path,
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                       preexec_fn=low_soft_limit)
    assert broker.stdout.readline().startswith(b"tcp://")
    worker = processes(*WORKER, "--cpus", "1", "--scheduler-file", path,
                       stderr=subprocess.DEVNULL, preexec_fn=low_soft_limit)
    with Client(scheduler_file=path) as client:
        wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=30,
                   message="the worker to register")
    expected = hard if hard != resource.RLIM_INFINITY else 4096
    for process in (broker, worker):
        assert psutil.Process(process.pid).rlimit(psutil.RLIMIT_NOFILE)[0] == expected


def _other_interface():
    """A non-loopback interface with an IPv4 address: (name, address), or None."""
    import psutil
    for name, entries in sorted(psutil.net_if_addrs().items()):
        for entry in entries:
            if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                return name, entry.address
    return None


def test_worker_interface_sets_its_data_address(processes, tmp_path):
    other = _other_interface()
    if other is None:
        pytest.skip("no network interface besides loopback here")
    name, address = other
    path = str(tmp_path / "s.json")
    _start_broker(processes, path, "--host", "0.0.0.0")
    processes(*WORKER, "--cpus", "1", "--scheduler-file", path, "--interface", name,
              stderr=subprocess.DEVNULL)
    with Client(scheduler_file=path) as client:
        wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=30,
                   message="the worker to register")
        (worker,) = client.info()["workers"]
        assert worker["address"].startswith(f"tcp://{address}:"), (name, worker["address"])
        assert client.gather_one(client.submit_one(tasks.const(b"ok"))) == b"ok"
