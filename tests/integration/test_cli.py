"""loom-broker and loom-worker as a user starts them."""

import configparser
import os
import signal
import subprocess
import sys

import pytest

from hyperloom.client import Client, tasks

from ..conftest import PROGRAM_MODULES, loom_program, port_to_bind_later, wait_until

BROKER = loom_program("loom-broker")
WORKER = loom_program("loom-worker")


def test_every_program_starts_without_loom_on_path(tmp_path):
    # A venv that was never activated: PATH holds no loom-* program, yet the tests
    # (and a user of this interpreter) start each one, as a script or with python -m.
    config = configparser.ConfigParser()
    config.read(os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg"))
    scripts = config["options.entry_points"]["console_scripts"].split()
    assert set(scripts[::3]) == set(PROGRAM_MODULES)
    bare = {**os.environ, "PATH": "/usr/bin:/bin"}
    for name, module in PROGRAM_MODULES.items():
        for command in (loom_program(name), [sys.executable, "-m", module]):
            assert os.path.isabs(command[0])
            result = subprocess.run([*command, "--help"], capture_output=True, text=True,
                                    env=bare, cwd=tmp_path, timeout=60)
            assert result.returncode == 0, f"{command}: {result.stderr}"
            assert result.stdout.startswith(f"usage: {name}"), result.stdout


def test_help_lists_every_option():
    broker_help = subprocess.run([*BROKER, "--help"], capture_output=True, text=True)
    assert broker_help.returncode == 0
    for option in ("--host", "--port", "--log-level", "--heartbeat"):
        assert option in broker_help.stdout
    worker_help = subprocess.run([*WORKER, "--help"], capture_output=True, text=True)
    assert worker_help.returncode == 0
    for option in ("--cpus", "--wdir", "--nopin", "--host", "--log-level", "--extension",
                   "BROKER_HOST", "BROKER_PORT"):
        assert option in worker_help.stdout


def test_invalid_arguments_are_refused():
    result = subprocess.run([*WORKER, "--cpus", "-1", "localhost", "9010"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid number of cpus" in result.stderr
    result = subprocess.run([*BROKER, "--port", "70000"], capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid port number" in result.stderr
    result = subprocess.run([*BROKER, "--port", "0"], capture_output=True, text=True,
                            env={**os.environ, "HYPERLOOM_GC_THRESHOLDS": "lots"}, timeout=30)
    assert result.returncode != 0 and "HYPERLOOM_GC_THRESHOLDS" in result.stderr


@pytest.mark.parametrize("cores", ["0,x", "0,1", "-1"])
def test_cores_must_name_one_core_per_cpu(cores):
    result = subprocess.run([*WORKER, "--cpus", "1", "--cores", cores, "localhost", "9010"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--cores must" in result.stderr


def test_broker_prints_its_endpoint_first(processes):
    broker = processes(*BROKER, "--port", "0", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    line = broker.stdout.readline().decode().strip()
    assert line.startswith("tcp://127.0.0.1:") and int(line.rsplit(":", 1)[1]) > 0


def test_a_broker_on_a_taken_port_says_so_in_one_line(processes):
    first = processes(*BROKER, "--port", "0", stdout=subprocess.PIPE)
    port = first.stdout.readline().decode().strip().rsplit(":", 1)[1]
    second = subprocess.run([*BROKER, "--port", port], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"loom-broker: cannot listen on tcp://127.0.0.1:{port}: Address already in use "
        f"(another broker there? choose --port)")
    assert first.poll() is None   # the first broker serves on


def start_worker_then_broker(processes, wdir, log_dir, attempts=5):
    """A worker told a port no broker listens on yet, then the broker on that port:
    ``(worker, port)``. The port is chosen before the broker binds it (it cannot be 0):
    if the broker finds it taken, both go and the scenario starts again on another."""
    for attempt in range(attempts):
        port = port_to_bind_later()
        worker_log = log_dir / f"worker-{attempt}.log"
        with open(worker_log, "wb") as log:
            worker = processes(*WORKER, "--cpus", "1", "--wdir", str(wdir), "--log-level",
                               "info", "127.0.0.1", str(port), stderr=log)
        # its loop runs, its Hello queued, before any broker exists
        wait_until(lambda log=worker_log, process=worker: b"worker started" in log.read_bytes()
                   or process.poll() is not None, timeout=30, message="the worker to start")
        assert worker.poll() is None, worker_log.read_text()
        broker_log = log_dir / f"broker-{attempt}.log"
        with open(broker_log, "wb") as log:
            broker = processes(*BROKER, "--port", str(port), stdout=subprocess.PIPE,
                               stderr=log)
        if broker.stdout.readline().startswith(b"tcp://"):
            return worker, port
        assert broker.wait(10) != 0
        assert "Address already in use" in broker_log.read_text(), broker_log.read_text()
        os.killpg(worker.pid, signal.SIGTERM)   # (it removes its work directory)
        assert worker.wait(10) == 0             # and again, on another port
    pytest.fail(f"{attempts} ports in a row were taken before the broker bound them")


def test_worker_started_before_the_broker_retries_and_joins(processes, tmp_path):
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    worker, port = start_worker_then_broker(processes, wdir, tmp_path)
    client = Client("127.0.0.1", port)
    wait_until(lambda: client.get_stats()["n_workers"] == 1, timeout=15, message="worker to join")
    assert client.submit_one(tasks.const("late")).gather() == b"late"
    work_dirs = os.listdir(wdir)
    assert len(work_dirs) == 1 and work_dirs[0].startswith("worker-")
    # SIGTERM stops the worker cleanly and removes its work directory
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(10) == 0
    assert os.listdir(wdir) == []
    wait_until(lambda: client.get_stats()["n_workers"] == 0, timeout=10,
               message="the broker to notice the worker left")
    client.close()


def test_worker_joining_mid_plan_gets_work(processes, tmp_path):
    broker = processes(*BROKER, "--port", "0", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    port = int(broker.stdout.readline().decode().strip().rsplit(":", 1)[1])
    client = Client("127.0.0.1", port)
    # no worker yet: the plan waits, ready
    futures = client.submit([tasks.run(("sh", "-c", "echo $$")) for _ in range(4)])
    wait_until(lambda: client.info()["tasks"]["ready"] == 4, timeout=10,
               message="the plan to be taken in")
    assert all(f.running() for f in futures)
    processes(*WORKER, "--cpus", "1", "--wdir", str(tmp_path), "--nopin",
              "127.0.0.1", str(port), stderr=subprocess.DEVNULL)
    assert len(client.gather(futures)) == 4
    client.close()


def test_broker_exits_cleanly_on_sigterm(processes):
    broker = processes(*BROKER, "--port", "0", stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    broker.stdout.readline()
    os.killpg(broker.pid, signal.SIGTERM)
    assert broker.wait(10) == 0


def test_terminate_stops_broker_and_workers(make_cluster):
    cluster = make_cluster(workers=2)
    client = cluster.client()
    client.terminate()
    assert cluster.broker.wait(10) == 0
    for worker in cluster.workers:
        assert worker.wait(10) == 0


def test_the_embedded_cluster_of_a_killed_client_exits(processes, tmp_path):
    # A script using Client() (no address) is SIGKILLed: it cannot stop its cluster, so the
    # broker and workers notice their parent is gone and shut down by themselves.
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from hyperloom.client import Client, tasks\n"
        "client = Client()\n"
        "assert client.submit_one(tasks.const(b'x')).gather() == b'x'\n"
        "cluster = client._cluster\n"
        "print(cluster.broker.pid, *[w.pid for w in cluster.workers], flush=True)\n"
        "time.sleep(600)\n")
    owner = processes(sys.executable, str(script), stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in owner.stdout.readline().split()]
    assert len(pids) == 3, "the script did not start a broker and two workers"
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)

    def all_gone():
        # They were the owner's children; once it has died they are reaped by init (or by
        # this test's subreaper-less session), so a zombie counts as gone too.
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    if stat.read().split(") ", 1)[1][0] != "Z":
                        alive.append(pid)
            except FileNotFoundError:
                pass
        return not alive
    try:
        wait_until(all_gone, timeout=20, message="the orphaned broker and workers to exit")
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
