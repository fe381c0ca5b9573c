"""The dashboard's page data without sockets, its squeue reading and its command line."""

import json
import os
import stat
import sys

import pytest

from hyperloom.dashboard import cli, slurm
from hyperloom.dashboard.model import EARLIER, DashboardModel


def worker(worker_id, cpus=2, **extra):
    row = {"id": worker_id, "address": f"tcp://w{worker_id}:1", "hostname": "h", "cpus": cpus,
           "cpus_used": 0, "running": 0, "bytes_held": 0, "bytes_received": 0,
           "bytes_sent": 0, "tasks_finished": 0, "cpu_percent": None, "memory": None}
    row.update(extra)
    return row


def snapshot(now, events=(), workers=(), clients=(), departed=(), seq=None, **extra):
    answer = {"now": now, "seq": seq if seq is not None else len(events),
              "missed_events": False, "events": list(events), "workers": list(workers),
              "departed": list(departed), "unplaceable": [], "failures": [],
              "clients": list(clients),
              "tasks": {"waiting": 1, "ready": 2, "assigned": 3, "finished": 4, "failed": 0,
                        "canceled": 0}}
    answer.update(extra)
    return answer


def task(seq, worker_id, sent, done, group="g", ok=True, n_cpus=1, local_id=0):
    return [seq, "task", worker_id, 1, group, sent, done, n_cpus, ok, local_id]


def test_progress_groups_per_client_and_counts_tasks_from_before_the_dashboard():
    model = DashboardModel("b:1")
    model.on_connected(client_number=9)
    model.on_snapshot(snapshot(10.0, clients=[
        {"number": 1, "done": 7, "total": 12, "groups": [["io", 5, 3, 1, 0], ["cpu", 4, 1, 0, 0]]},
        {"number": 2, "done": 0, "total": 0, "groups": []},     # nothing submitted: not shown
        {"number": 9, "done": 0, "total": 0, "groups": []},     # the dashboard itself
    ]), wall_now=100.0)
    [client] = model.page_data()["progress"]
    assert (client["client"], client["done"], client["total"]) == (1, 7, 12)
    rows = {g["name"]: (g["finished"], g["failed"], g["total"]) for g in client["groups"]}
    assert rows == {"cpu": (1, 0, 4), "io": (3, 1, 5), EARLIER: (2, 0, 3)}


def test_tasks_fill_a_workers_cores_one_lane_each_without_overlap():
    model = DashboardModel("b:1")
    events = [task(1, 1, 0.0, 1.0), task(2, 1, 0.0, 1.5), task(3, 1, 0.0, 2.0),
              task(4, 1, 0.0, 2.5, ok=False, local_id=4)]
    model.on_snapshot(snapshot(3.0, events, workers=[worker(1, cpus=2)]), wall_now=50.0)
    data = model.page_data()
    stream = data["stream"]
    by_lane = {}
    for left, right, lane in zip(stream["left"], stream["right"], stream["lane"]):
        by_lane.setdefault(lane, []).append((left, right))
    assert sorted(by_lane) == ["w1.0", "w1.1"]
    for bars in by_lane.values():
        bars.sort()
        assert all(a[1] <= b[0] for a, b in zip(bars, bars[1:])), bars
    # The third task waited for a core: it starts when the first one ended, not when sent.
    assert sorted(zip(stream["right"], stream["left"]))[2] == (-1.0, -2.0)
    assert data["stream_failed"] == {"x": [-0.5], "lane": [stream["lane"][3]]}
    assert data["lanes"] == ["w1.1", "w1.0"]  # bottom to top


def test_a_new_connection_starts_the_stream_and_workers_over():
    # A restarted broker's clock, event numbers and worker ids mean nothing to the old ones.
    model = DashboardModel("b:1")
    model.on_connected(1)
    model.on_snapshot(snapshot(500.0, [task(1, 1, 490.0, 499.0)], workers=[worker(1)]), 1.0)
    model.on_connected(1)
    assert model.seq == 0
    model.on_snapshot(snapshot(2.0, [task(1, 7, 0.5, 1.5)], workers=[worker(7)]), 2.0)
    data = model.page_data()
    assert data["stream"]["right"] == [-0.5] and [w["id"] for w in data["workers"]] == [7]


def test_the_stream_keeps_the_last_minute():
    model = DashboardModel("b:1")
    model.on_snapshot(snapshot(10.0, [task(1, 1, 0.0, 5.0)], workers=[worker(1)]), 1.0)
    model.on_snapshot(snapshot(100.0, [task(2, 1, 95.0, 99.0)], workers=[worker(1)], seq=2), 2.0)
    assert model.page_data()["stream"]["right"] == [-1.0]


def test_a_worker_that_left_or_was_lost_stays_on_the_page_as_such():
    model = DashboardModel("b:1")
    model.on_snapshot(snapshot(1.0, workers=[worker(1), worker(2), worker(3)]), 1.0)
    gone = [dict(worker(1), state="left", why="said goodbye", at=1.5),
            dict(worker(2), state="lost", why="no heartbeat for 5.0 s", at=1.6)]
    model.on_snapshot(snapshot(2.0, workers=[worker(3)], departed=gone), 2.0)
    states = {w["id"]: w["state"] for w in model.page_data()["workers"]}
    assert states == {1: "left", 2: "lost", 3: "running"}


def test_history_records_task_counts_by_state_over_time():
    model = DashboardModel("b:1")
    for i in range(3):
        model.on_snapshot(snapshot(float(i), clients=[
            {"number": 1, "done": i, "total": 5, "groups": [["g", 5, i, 0, 0]]}], seq=i),
            wall_now=10.0 + i)
    history = model.page_data()["history"]
    assert history["t"] == [-2.0, -1.0, 0.0]
    assert history["finished"] == [0, 1, 2] and history["running"] == [3, 3, 3]


def test_page_data_is_json():
    model = DashboardModel("b:1", slurm_job_name="loom")
    assert json.loads(json.dumps(model.page_data()))["status"] == "connecting"
    model.on_snapshot(snapshot(1.0, [task(1, 1, None, 1.0)], workers=[worker(1)]), 1.0)
    assert json.loads(json.dumps(model.page_data()))["stream"]["lane"] == ["w1.0"]


def test_unplaceable_tasks_are_shown_by_client_and_local_id():
    # A task id is global: the client's number above CLIENT_SHIFT bits, its own id below.
    model = DashboardModel("b:1")
    entry = {"id": (3 << 40) | 7, "type": "loom/py/call", "reason": "needs 8 cpus"}
    model.on_snapshot(snapshot(1.0, unplaceable=[entry]), wall_now=1.0)
    assert model.page_data()["unplaceable"] == [
        {"id": 7, "client": 3, "type": "loom/py/call", "reason": "needs 8 cpus"}]


# ---------------------------------------------------------------- squeue

SQUEUE_OUTPUT = "1234 RUNNING loom-workers node[01-02]\n1235 PENDING loom-workers \n"


@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    """An squeue on PATH that records its arguments and prints what the test says."""
    def install(output="", code=0):
        script = tmp_path / "squeue"
        script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n"
                          f"printf '%s' '{output}'\nexit {code}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
        return tmp_path / "args"
    return install


def test_squeue_jobs_and_states_are_read(fake_squeue):
    args = fake_squeue(SQUEUE_OUTPUT)
    jobs, error = slurm.query_jobs("loom-workers")
    assert error is None
    assert args.read_text().split() == ["-h", "-n", "loom-workers", "-o", "%i", "%T", "%j", "%N"]
    assert jobs == [
        {"id": "1234", "state": "RUNNING", "name": "loom-workers", "nodes": "node[01-02]"},
        {"id": "1235", "state": "PENDING", "name": "loom-workers", "nodes": ""}]


def test_a_failing_squeue_is_reported_not_raised(fake_squeue):
    fake_squeue("slurm_load_jobs error: Unable to contact slurm controller", code=1)
    jobs, error = slurm.query_jobs("x")
    assert jobs == [] and "exit 1" in error


def test_no_squeue_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "squeue is not installed" in slurm.query_jobs("x")[1]


def test_slurm_jobs_reach_the_page_data():
    model = DashboardModel("b:1", slurm_job_name="loom-workers")
    model.on_slurm(slurm.parse_squeue(SQUEUE_OUTPUT), None, 5.0)
    assert [j["state"] for j in model.page_data()["slurm"]["jobs"]] == ["RUNNING", "PENDING"]


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("content, address", [
    ({"host": "node7", "port": 9010}, ("node7", 9010)),
    ({"address": "tcp://10.0.0.5:4321"}, ("10.0.0.5", 4321)),
])
def test_scheduler_file_gives_the_broker_address(tmp_path, content, address):
    path = tmp_path / "scheduler.json"
    path.write_text(json.dumps(content))
    args = cli.parse_args(["--scheduler-file", str(path)])
    assert (args.broker_host, args.broker_port) == address


@pytest.mark.parametrize("content, problem", [
    ("not json", "is not JSON"),
    (json.dumps({"address": "node:1"}), "neither"),
    (json.dumps({"host": "h", "port": "x"}), "not a number"),
])
def test_a_bad_scheduler_file_is_named(tmp_path, capsys, content, problem):
    path = tmp_path / "scheduler.json"
    path.write_text(content)
    with pytest.raises(SystemExit):
        cli.parse_args(["--scheduler-file", str(path)])
    assert problem in capsys.readouterr().err


def test_the_broker_address_is_required(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args([])
    assert "BROKER_HOST and BROKER_PORT are required" in capsys.readouterr().err


def test_without_bokeh_the_dashboard_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bokeh", None)  # import bokeh now raises ImportError
    assert cli.main(["127.0.0.1", "9010"]) == 2
    assert "pip install 'hyperloom[dashboard]'" in capsys.readouterr().err
