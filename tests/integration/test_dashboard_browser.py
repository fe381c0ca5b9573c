"""The live dashboard in a real headless Chromium, against a real cluster running a plan.

The plan's tasks wait on gate files the test creates, so "while the plan runs" is a
state the test controls, not a race. Skipped when no Chromium is on PATH.
"""

import html
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from hyperloom import security
from hyperloom.client import tasks
from hyperloom.dashboard import start_dashboard
from hyperloom.errors import TaskFailed
from tests.conftest import wait_until
from tests.integration.test_report_browser import find_chromium, run_chromium

pytestmark = pytest.mark.timeout(240)

FAILURE = "no such input: 42"


class Rows(HTMLParser):
    """Every <tr> of the page: its attributes and its cells' text by class; and <li> failures."""

    def __init__(self):
        super().__init__()
        self.rows, self.failures, self.clients = [], [], {}
        self._row = self._cell = self._li = self._span = None
        self._client = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = (attrs, {})
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = attrs.get("class", "")
            self._row[1][self._cell] = ""
        elif tag == "li" and attrs.get("class") == "failure":
            self._li = [attrs, ""]
            self.failures.append(self._li)
        elif tag == "div" and attrs.get("class") == "client":
            self._client = self.clients.setdefault(int(attrs["data-client"]), {})
        elif tag == "span" and self._client is not None and attrs.get("class") in ("done", "total"):
            self._span = attrs["class"]

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None
        elif tag == "li":
            self._li = None
        elif tag == "span":
            self._span = None
        elif tag == "table":
            self._client = None

    def handle_data(self, data):
        if self._cell is not None and self._row is not None:
            self._row[1][self._cell] += data
        if self._li is not None:
            self._li[1] += data
        if self._span is not None:
            self._client[self._span] = int(data)

    def where(self, **wanted):
        return [cells for attrs, cells in self.rows
                if all(attrs.get(f"data-{k}") == str(v) for k, v in wanted.items())]


def load_page(url, tmp_path):
    """The page after its script polled a few times: (rows, the page's own check)."""
    dom = run_chromium(url, tmp_path, "--dump-dom", budget_ms=3000)
    parsed = Rows()
    parsed.feed(dom)
    start = dom.index('id="dashboard-check"')
    check = json.loads(html.unescape(dom[dom.index(">", start) + 1:dom.index("</pre>", start)]))
    return parsed, check


def page_data(url):
    base, _, query = url.partition("?")
    with urllib.request.urlopen(base.rstrip("/") + "/data.json" + (f"?{query}" if query else ""),
                                timeout=10) as response:
        return json.loads(response.read())


def dashboard_done(url, client_number):
    progress = {p["client"]: p for p in page_data(url).get("progress", [])}
    return progress.get(client_number, {}).get("done", -1)


def gated(gate, label):
    """A light task (no core) that runs until ``gate`` exists."""
    task = tasks.run(["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"], request=None)
    task.label = label
    return task


def plan(tmp_path):
    quick = []
    for i in range(6):
        task = tasks.run("sleep 0.05")
        task.label = f"quick:{i}"
        quick.append(task)
    bad = tasks.run(["sh", "-c", f"echo '{FAILURE}' >&2; exit 3"])
    bad.label = "broken"
    return quick, [gated(tmp_path / "gate-a", f"gated:{i}") for i in range(2)], \
        [gated(tmp_path / "gate-b", "late")], bad


@pytest.fixture
def chromium():
    return find_chromium()


def test_the_page_follows_a_running_plan_and_matches_client_info(make_cluster, tmp_path,
                                                                 chromium):
    cluster = make_cluster(workers=2, cpus=2, dashboard=True)
    url = cluster.dashboard_url
    assert url.startswith("http://127.0.0.1:")
    client = cluster.client()
    quick, first, last, bad = plan(tmp_path)
    futures = client.submit(quick + first + last + [bad])
    n_total = 10

    # Running: the quick tasks and the broken one are done, the gated ones wait.
    wait_until(lambda: dashboard_done(url, client.number) >= 7, timeout=60,
               message="the dashboard to see the quick tasks done")
    rows, check = load_page(url, tmp_path)
    assert check["status"] == "rendered" and check["errors"] == [], check
    page = rows.clients[client.number]
    assert page["total"] == n_total and 7 <= page["done"] < n_total
    [quick_row] = rows.where(client=client.number, group="quick")
    assert (quick_row["finished"], quick_row["total"]) == ("6", "6")
    [broken_row] = rows.where(client=client.number, group="broken")
    assert broken_row["failed"] == "1"
    assert any(FAILURE in text for _, text in rows.failures), rows.failures
    assert check["stream_rows"] >= 7   # the finished tasks are bars in the task stream

    # Still running, further on: progress moved.
    (tmp_path / "gate-a").touch()
    wait_until(lambda: dashboard_done(url, client.number) >= 9, timeout=60,
               message="the dashboard to see the first gated tasks done")
    rows, check = load_page(url, tmp_path)
    assert rows.clients[client.number]["done"] > page["done"]
    assert rows.clients[client.number]["done"] < n_total

    # Finished: every number on the page is what client.info() says.
    (tmp_path / "gate-b").touch()
    client.wait(futures[:-1])
    with pytest.raises(TaskFailed, match="status 3"):
        client.wait(futures[-1:])
    # A worker that joins and leaves stays on the page, marked as gone.
    extra = cluster.add_worker()
    wait_until(lambda: len(page_data(url)["workers"]) == 3, timeout=30,
               message="the dashboard to list the third worker")
    extra.send_signal(signal.SIGTERM)
    assert extra.wait(10) == 0
    wait_until(lambda: [w["state"] for w in page_data(url)["workers"]].count("left") == 1,
               timeout=30, message="the dashboard to show the worker that left")
    # Every worker reports its CPU and memory (every 2 s).
    wait_until(lambda: all(w.get("memory") for w in page_data(url)["workers"]
                           if w["state"] == "running"), timeout=30,
               message="the workers' memory on the page")
    info = client.info()
    wait_until(lambda: page_data(url)["tasks"] == info["tasks"], timeout=30,
               message="the dashboard to catch up")
    rows, check = load_page(url, tmp_path)
    assert client.info() == info  # nothing moved meanwhile
    assert rows.clients[client.number] == {"done": client.progress[0],
                                           "total": client.progress[1]}
    for name, count in info["tasks"].items():
        [row] = rows.where(state=name)
        assert row["count"] == str(count), name
    assert len(info["workers"]) == 2
    [left] = rows.where(state="left")
    assert left["state"].startswith("left (said goodbye)")
    for worker in info["workers"]:
        [row] = rows.where(worker=worker["id"])
        assert row["address"] == worker["address"] and row["host"] == worker["hostname"]
        assert row["finished"] == str(worker["tasks_finished"])
        assert row["running"] == str(worker["running"])
        assert row["cores"] == f"{min(worker['cpus_used'], worker['cpus'])} / {worker['cpus']}"
        assert row["memory"].endswith("MiB") and row["cpu"].endswith("%")
    assert check["errors"] == []


def test_closing_reloading_or_killing_the_dashboard_leaves_the_plan_alone(make_cluster,
                                                                          tmp_path, chromium):
    cluster = make_cluster(workers=1, cpus=2)
    client = cluster.client()
    dashboard = start_dashboard(cluster.host, cluster.port, stderr=open(tmp_path / "d.log", "wb"))
    try:
        futures = client.submit([gated(tmp_path / "gate", f"g:{i}") for i in range(3)])
        for _ in range(2):  # open, close, open again (a reload)
            _, check = load_page(dashboard.url, tmp_path)
            assert check["status"] == "rendered" and check["errors"] == []
        assert client.info()["n_clients"] == 2  # this one and the dashboard
        dashboard.process.send_signal(signal.SIGKILL)
        dashboard.process.wait(10)
    finally:
        dashboard.stop()
    (tmp_path / "gate").touch()
    client.wait(futures)
    assert [f.gather() for f in futures] == [b""] * 3
    assert cluster.broker.poll() is None
    wait_until(lambda: client.info()["n_clients"] == 1, timeout=20,
               message="the killed dashboard's connection to be dropped")


def test_with_a_secret_file_the_page_needs_the_printed_token(make_cluster, tmp_path):
    secret = str(tmp_path / "cluster.key")
    security.generate_secret_file(secret)
    cluster = make_cluster(workers=1, cpus=1, secret_file=secret)
    dashboard = start_dashboard(cluster.host, cluster.port, secret_file=secret,
                                stderr=open(tmp_path / "d.log", "wb"))
    try:
        base, _, query = dashboard.url.partition("?")
        assert query.startswith("token=") and len(query) > 20
        for path in ("", "data.json", "?token=wrong"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + path, timeout=10)
            assert refused.value.code == 403
            if not path.startswith("data"):  # the page asks for the token
                assert b"Token (printed by loom-dashboard" in refused.value.read()
        with urllib.request.urlopen(dashboard.url, timeout=10) as page:
            assert b"hyperloom dashboard" in page.read()
        wait_until(lambda: page_data(dashboard.url)["status"] == "connected", timeout=30,
                   message="the dashboard to reach the CURVE broker")
        assert [w["id"] for w in page_data(dashboard.url)["workers"]] == [1]
    finally:
        dashboard.stop()


def test_loom_dashboard_prints_its_url_first_and_listens_on_loopback(tmp_path):
    squeue = tmp_path / "squeue"  # a fake Slurm: the page shows what squeue says
    squeue.write_text("#!/bin/sh\necho '77 RUNNING loom-w node3'\n")
    squeue.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen([sys.executable, "-m", "hyperloom.dashboard", "127.0.0.1", "1",
                                "--port", "0", "--slurm-job-name", "loom-w",
                                "--connect-timeout", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=env)
    try:
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        # No broker at port 1: the page says so instead of failing.
        wait_until(lambda: "broker unreachable" in page_data(url)["status"], timeout=30,
                   message="the dashboard to report the missing broker")
        assert page_data(url)["slurm"]["jobs"] == [
            {"id": "77", "state": "RUNNING", "name": "loom-w", "nodes": "node3"}]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(10) == 0
        process.stdout.close()


def test_client_dashboard_true_starts_one_with_its_cluster_and_stops_it():
    from hyperloom.client import Client
    with Client(dashboard=True) as client:
        url = client.dashboard_url
        process = client._cluster.dashboard.process
        wait_until(lambda: len(page_data(url).get("workers", [])) == client.info()["n_workers"],
                   timeout=30, message="the dashboard to list the workers")
    assert process.wait(10) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
