"""Traces, the report from them, progress bars and loom-status, on real processes."""

import json
import os
import re
import subprocess
import sys

from hyperloom.client import tasks
from hyperloom.trace import read_trace

from ..conftest import loom_program

REPORT = loom_program("loom-report")
STATUS = loom_program("loom-status")


def labelled_plan(n=20):
    parts = []
    for i in range(n):
        task = tasks.run(("sh", "-c", f"printf {i}"))
        task.label = f"Compute: {i}"
        parts.append(task)
    merge = tasks.merge(parts, ",")
    merge.label = "End"
    return merge


def test_traces_record_tasks_workers_and_transfers(make_cluster, tmp_path):
    cluster = make_cluster(workers=2, cpus=1)
    client = cluster.client()
    trace_dir = tmp_path / "trace"
    client.set_trace(str(trace_dir))
    result = client.submit_one(labelled_plan()).gather()
    assert result == b",".join(str(i).encode() for i in range(20))
    client.close()
    cluster.stop()   # every process flushes and closes its trace file
    names = sorted(p.name for p in trace_dir.iterdir())
    assert names == ["broker.ltrace", "worker-1.ltrace", "worker-2.ltrace"]
    trace = read_trace(str(trace_dir))
    assert len(trace.workers) == 2
    finished = [t for t in trace.tasks if t.end is not None]
    assert len(finished) == 21
    groups = {t.group for t in finished}
    assert groups == {"Compute", "End"}
    for task in finished:
        assert task.worker in {1, 2} and task.start <= task.end
    # the merge consumed results from both workers: some bytes crossed between them
    assert trace.transfers and all(t.nbytes > 0 for t in trace.transfers)
    assert trace.bad_records == 0
    # A person can read the files as text: the broker's plan and each worker's runs.
    dump = subprocess.run([sys.executable, "-m", "hyperloom.trace", str(trace_dir)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    submitted = [line for line in dump.splitlines() if line.startswith("T ")]
    assert len(submitted) == 21 and any("'Compute: 3'" in line for line in submitted)
    assert sum(line.startswith(("S ", "X ")) for line in dump.splitlines()) == 21


def test_report_from_a_real_trace(make_cluster, tmp_path):
    cluster = make_cluster(workers=2, cpus=1)
    client = cluster.client()
    client.set_trace(str(tmp_path / "trace"))
    client.submit_one(labelled_plan(10)).gather()
    client.close()
    cluster.stop()
    output = tmp_path / "report.html"
    subprocess.run([*REPORT, str(tmp_path / "trace"), "-o", str(output)], check=True,
                   capture_output=True)
    html = output.read_text()
    summary = json.loads(re.search(r'id="hyperloom-summary">(.*?)</script>', html, re.S).group(1))
    assert summary["n_tasks"] == 11 and summary["n_workers"] == 2


def test_the_readme_example_traces_and_reports(tmp_path):
    # The README's newcomer commands: trace examples/hello.py, then make its report.
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    trace_dir = tmp_path / "hello-trace"
    ran = subprocess.run([sys.executable, os.path.join(root, "examples", "hello.py"),
                          "--trace", str(trace_dir)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "b'Hello world!'" in ran.stdout
    subprocess.run([*REPORT, str(trace_dir), "-o", str(tmp_path / "report.html")],
                   check=True, capture_output=True, timeout=120)
    html = (tmp_path / "report.html").read_text()
    summary = json.loads(re.search(r'id="hyperloom-summary">(.*?)</script>', html, re.S).group(1))
    # merge of two consts; const -> run; py_value -> two consts -> merge -> py_call
    assert summary["n_tasks"] == 10 and summary["n_workers"] == 2
    assert summary["n_failed"] == 0


def test_gather_with_progress_bar(client, capsys):
    futures = client.submit([tasks.merge((tasks.const("a"), tasks.const("b")))
                             for _ in range(200)])
    assert client.gather(futures, progress=True) == [b"ab"] * 200
    err = capsys.readouterr().err
    assert "hyperloom" in err and "600/600" in err


def test_loom_status_prints_workers_and_states(shared_cluster):
    result = subprocess.run([*STATUS, shared_cluster.host, str(shared_cluster.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 workers")
    assert lines[1].split()[:3] == ["id", "address", "cpus"]
    assert sum(1 for line in lines if "tcp://127.0.0.1:" in line) == 2
    assert lines[-1].startswith("tasks by state:")


def test_loom_status_without_a_broker_fails_clearly():
    result = subprocess.run([*STATUS, "127.0.0.1", "1", "--timeout", "1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "no answer from a broker" in result.stderr
