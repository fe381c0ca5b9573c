"""A broker and two workers on three "hosts": network namespaces joined by veth links.

Each host is a namespace with one veth link to a bridge in a fourth namespace,
addresses 10.200.0.0/24 (broker .1, workers .2 and .3). The namespaces are
made by the test and deleted afterwards; no traffic leaves them. Worker-to-
worker data therefore crosses a real network path between distinct addresses.
The client runs as a subprocess in the broker's namespace and prints JSON.

Skipped where network namespaces cannot be made (not root, no iproute2, no
CAP_SYS_ADMIN in a container).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from ..conftest import wait_until

SUBNET = "10.200.0"
BROKER_IP = f"{SUBNET}.1"
WORKER_IPS = (f"{SUBNET}.2", f"{SUBNET}.3")
HEARTBEAT = "0.5"


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20,
                          check=check)


def _netns_available():
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"hl-probe-{uuid.uuid4().hex[:8]}"
    probe = _ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


class Hosts:
    """The namespaces, links and processes of one test; ``close()`` removes them all."""

    def __init__(self, log_dir):
        self.tag = uuid.uuid4().hex[:6]          # unique per test: runs may overlap
        self.log_dir = log_dir
        self.namespaces = []
        self.processes = []
        self.logs = []
        self.links = {}                          # host name -> veth name in its namespace

    def ns(self, host):
        return f"hl-{self.tag}-{host}"

    def run_in(self, host, *command, check=True):
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *command],
                              capture_output=True, text=True, timeout=30, check=check)

    def build(self):
        hub = self.ns("hub")
        _ip("netns", "add", hub)
        self.namespaces.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(
                (("broker", BROKER_IP), ("w1", WORKER_IPS[0]), ("w2", WORKER_IPS[1]))):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            inner, outer = f"hl{self.tag}i{index}", f"hl{self.tag}o{index}"   # <= 15 chars
            _ip("link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer,
                "netns", hub)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", hub, "link", "set", outer, "master", "br0")
            _ip("-n", hub, "link", "set", outer, "up")
            self.links[host] = inner

    def spawn(self, host, name, *args, stdout=None):
        # closed in close(), with the processes
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        self.logs.append(log)
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), sys.executable, *args],
            stdout=stdout, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(process)
        return process

    def start_broker(self):
        broker = self.spawn("broker", "broker", "-m", "hyperloom.broker", "--host", BROKER_IP,
                            "--port", "0", "--heartbeat", HEARTBEAT, "--log-level", "info",
                            stdout=subprocess.PIPE)
        line = broker.stdout.readline().decode().strip()
        match = re.fullmatch(rf"tcp://{re.escape(BROKER_IP)}:(\d+)", line)
        assert match, f"loom-broker printed {line!r}"
        return broker, int(match.group(1))

    def start_worker(self, host, address, port, work_dir):
        return self.spawn(host, f"worker-{host}", "-m", "hyperloom.worker", "--cpus", "1",
                          "--host", address, "--heartbeat", HEARTBEAT,
                          "--broker-timeout", "5", "--wdir", work_dir,
                          "--log-level", "info", BROKER_IP, str(port))

    def client(self, script, timeout=90):
        """Run a Python client script in the broker's namespace; its stdout as JSON."""
        result = self.run_in("broker", sys.executable, "-c", script, check=False)
        assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def close(self):
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            process.wait(10)
            if process.stdout:
                process.stdout.close()
        for log in self.logs:
            log.close()
        for ns in reversed(self.namespaces):   # deleting a namespace deletes its links
            _ip("netns", "del", ns, check=False)
        leftovers = [n for n in _ip("netns", "list").stdout.split() if self.tag in n]
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture
def hosts(tmp_path):
    why = _netns_available()
    if why:
        pytest.skip(why)
    hosts = Hosts(str(tmp_path))
    try:
        hosts.build()
        yield hosts
    finally:
        hosts.close()


def start_cluster(hosts, tmp_path):
    broker, port = hosts.start_broker()
    workers = [hosts.start_worker(host, address, port, str(tmp_path))
               for host, address in zip(("w1", "w2"), WORKER_IPS)]
    return broker, port, workers


CLIENT_PRELUDE = """
import json, time
from hyperloom.client import Client, tasks
client = Client({address!r}, {port})
deadline = time.monotonic() + 30
while client.get_stats()["n_workers"] < 2:
    assert time.monotonic() < deadline, "the workers did not register"
    time.sleep(0.05)
"""


@pytest.mark.timeout(120)
def test_workers_on_two_hosts_exchange_data_over_the_network(hosts, tmp_path):
    broker, port, workers = start_cluster(hosts, tmp_path)
    script = CLIENT_PRELUDE.format(address=BROKER_IP, port=port) + textwrap.dedent("""
        # two producers need a core each on 1-cpu workers: one runs on each host,
        # so the merge needs data from the other host
        size = 200_000
        a = tasks.run(("sh", "-c", f"sleep 0.5; head -c {size} /dev/zero | tr '\\\\0' a"))
        b = tasks.run(("sh", "-c", f"sleep 0.5; head -c {size} /dev/zero | tr '\\\\0' b"))
        result = client.submit_one(tasks.merge((a, b))).gather()
        info = client.info()
        print(json.dumps({"ok": result == b"a" * size + b"b" * size, "length": len(result),
                          "workers": info["workers"]}))
    """)
    out = hosts.client(script)
    assert out["ok"], out["length"]
    by_address = {w["address"].rsplit(":", 1)[0]: w for w in out["workers"]}
    assert set(by_address) == {f"tcp://{ip}" for ip in WORKER_IPS}, out["workers"]
    sent = sum(w["bytes_sent"] for w in out["workers"])
    received = sum(w["bytes_received"] for w in out["workers"])
    assert sent >= 200_000 and received >= 200_000, out["workers"]
    receiver = max(out["workers"], key=lambda w: w["bytes_received"])
    sender = max(out["workers"], key=lambda w: w["bytes_sent"])
    assert receiver is not sender
    # the bytes went over a TCP connection between the two hosts' addresses: the
    # receiver's data socket has an established connection from the sender's address
    receiver_ip, receiver_port = receiver["address"][len("tcp://"):].rsplit(":", 1)
    sender_ip = sender["address"][len("tcp://"):].rsplit(":", 1)[0]
    host = "w1" if receiver_ip == WORKER_IPS[0] else "w2"
    connections = hosts.run_in(host, "ss", "-Htn", "state", "established").stdout
    assert re.search(rf"{re.escape(receiver_ip)}:{receiver_port}\s+{re.escape(sender_ip)}:\d+",
                     connections), connections
    assert broker.poll() is None and all(w.poll() is None for w in workers)


@pytest.mark.timeout(120)
def test_plan_completes_when_a_workers_link_is_cut_mid_plan(hosts, tmp_path):
    broker, port, workers = start_cluster(hosts, tmp_path)
    marker = tmp_path / "started"
    script = CLIENT_PRELUDE.format(address=BROKER_IP, port=port) + textwrap.dedent(f"""
        parts = [tasks.run(("sh", "-c", f"echo $PPID >> {str(marker)!r}; sleep 1; printf p{{i}}"))
                 for i in range(8)]
        futures = client.submit([tasks.merge(parts[:4]), tasks.merge(parts[4:]),
                                 tasks.merge(parts)])
        results = client.gather(futures)
        info = client.info()
        print(json.dumps({{"results": [r.decode() for r in results],
                          "workers": [w["address"] for w in info["workers"]]}}))
    """)
    client = subprocess.Popen(["ip", "netns", "exec", hosts.ns("broker"), sys.executable,
                               "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    hosts.processes.append(client)
    try:
        # each task notes its worker's pid ($PPID): once both hosts run one, cut w2's link
        wait_until(lambda: marker.exists() and len(set(marker.read_text().split())) == 2,
                   timeout=30, message="tasks to start on both hosts")
        hosts.run_in("w2", "ip", "link", "set", hosts.links["w2"], "down")
        stdout, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
    assert client.returncode == 0, stderr
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["results"] == ["p0p1p2p3", "p4p5p6p7", "p0p1p2p3p4p5p6p7"]
    assert [a.rsplit(":", 1)[0] for a in out["workers"]] == [f"tcp://{WORKER_IPS[0]}"]
    with open(os.path.join(hosts.log_dir, "broker.log")) as f:
        log = f.read()
    assert re.search(r"worker \d+ lost \((no heartbeat|connection closed)", log), log[-2000:]
    assert broker.poll() is None and workers[0].poll() is None
