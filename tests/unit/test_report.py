"""The HTML report from synthetic traces: the page, its summary, its tables and its CLIs."""

import json
import os
import re
import subprocess
import sys

import pytest

from hyperloom.report import main, page, stats
from hyperloom.report.demo import write_demo_trace
from hyperloom.report.figures import TIMELINE_RENDERER, timeline
from hyperloom.trace import TraceWriter, TracedTask, Trace, TracedWorker, Transfer, read_trace

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUMMARY_RE = re.compile(r'<script type="application/json" id="hyperloom-summary">(.*?)</script>',
                        re.S)


def summary_of(html: str) -> dict:
    (payload,) = SUMMARY_RE.findall(html)
    return json.loads(payload)


@pytest.fixture
def demo_dir(tmp_path):
    directory = tmp_path / "trace"
    write_demo_trace(str(directory), n_workers=2, cpus=4, n_tasks=50, seed=3, failed=(7,))
    return directory


@pytest.mark.parametrize("n_workers, cpus", [(0, 4), (2, 0)])
def test_a_demo_trace_without_workers_or_cpus_is_refused_by_name(tmp_path, n_workers, cpus):
    with pytest.raises(ValueError, match=f"{n_workers} workers of {cpus} cpus"):
        write_demo_trace(str(tmp_path / "trace"), n_workers=n_workers, cpus=cpus)
    assert not (tmp_path / "trace").exists()


def test_report_is_written_self_contained_with_the_right_counts(demo_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main([str(demo_dir), "-o", str(out)]) == 0
    assert "50 tasks on 2 workers" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    # Nothing fetched from elsewhere: no script, style sheet or image from a URL.
    assert not re.search(r"""<(script|link|img)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//""",
                         html, re.I)
    assert "Bokeh.embed.embed_items" in html and len(html) > 500_000  # BokehJS itself is inlined
    summary = summary_of(html)
    assert (summary["n_tasks"], summary["n_workers"], summary["n_failed"]) == (50, 2, 1)
    assert (summary["n_submitted"], summary["n_lanes"]) == (50, 10)
    assert summary["groups"] == ["Init", "Compute", "Aggregate", "loom/data/merge"]
    trace = read_trace(demo_dir)
    assert summary["n_transfers"] == len(trace.transfers) > 0
    assert summary["bytes_transferred"] == sum(t.nbytes for t in trace.transfers)


def test_timeline_source_has_one_row_per_task_execution(demo_dir):
    trace = read_trace(demo_dir)
    plot = timeline(trace, {g: "#000000" for g in stats.groups(trace)})
    renderer = plot.select_one({"name": TIMELINE_RENDERER})
    data = renderer.data_source.data
    assert sorted(data["task_id"]) == sorted(t.task_id for t in trace.tasks)
    assert all(len(column) == 50 for column in data.values())
    assert data["status"].count("failed") == 1


def test_split_and_failed_tasks_get_extra_blocks_but_one_timeline_glyph():
    trace = make_trace()
    plot = timeline(trace, {"G": "#111111", "b": "#222222"})
    rows = {r.name: r.data_source.data for r in plot.renderers if r.name}
    assert list(rows[TIMELINE_RENDERER]["task_id"]) == [1, 2, 3]
    # Task 2 holds cores 1 and 3 of worker 1 (lanes 2 and 4): its second block is drawn apart.
    assert list(rows[TIMELINE_RENDERER]["bottom"]) == [0.6, 1.6, 4.6]
    assert (list(rows["timeline-more"]["task_id"]), list(rows["timeline-more"]["bottom"])) == (
        [2], [3.6])
    # Failed and unfinished tasks are outlined over every block they occupy.
    assert sorted(rows["timeline-failed"]["task_id"]) == [2, 2, 3]
    assert [item.label.value for item in plot.legend[0].items] == ["G", "b"]


def test_default_output_is_output_html_in_the_current_directory(demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([str(demo_dir)]) == 0
    assert summary_of((tmp_path / "output.html").read_text(encoding="utf-8"))["n_tasks"] == 50


@pytest.mark.parametrize("module", ["hyperloom.report", "loom.lore"])
def test_python_dash_m_entry_points(module, demo_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", module, str(demo_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert summary_of((tmp_path / "output.html").read_text(encoding="utf-8"))["n_workers"] == 2


def test_a_missing_trace_directory_is_a_clean_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")]) == 1
    assert "no .ltrace files" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_hostile_labels_cannot_break_out_of_the_page(tmp_path):
    clock = iter(range(0, 10**12, 10**6))
    broker = TraceWriter(str(tmp_path), "broker", lambda: next(clock), lambda: 0)
    evil = "</script><script>alert(1)</script>"
    broker.tasks_submitted([(1, "t", evil, [])])
    broker.close()
    worker = TraceWriter(str(tmp_path), "worker-1", lambda: next(clock), lambda: 0)
    worker.task_started(1, [0])
    worker.task_finished(1, 1)
    worker.close()
    html = page.build_html(read_trace(tmp_path), "t <b>")
    assert "<script>alert(1)" not in html
    assert summary_of(html)["groups"] == [evil]
    assert "t &lt;b&gt;" in html


def make_trace() -> Trace:
    tasks = [TracedTask(1, "a", "G: 1", 1, (0,), 0.0, 1.0, True),
             TracedTask(2, "a", "G: 2", 1, (1, 3), 0.5, 3.5, False),
             TracedTask(3, "b", None, 2, (), 1.0, None, False)]
    transfers = [Transfer(1, 100, "worker-1", "worker-2", 1.0),
                 Transfer(2, 50, "worker-1", "worker-2", 2.0),
                 Transfer(3, 500, "worker-2", "worker-1", 1.5)]
    return Trace(tasks=tasks, workers=[TracedWorker(1, "x:1", 4), TracedWorker(2, "x:2", 1)],
                 transfers=transfers, duration=5.0)


def test_duration_tables_by_group_and_by_type():
    trace = make_trace()
    by_group = stats.duration_table(trace, lambda t: t.group)
    # The unfinished task runs to the end of the trace (5.0 - 1.0 = 4 s).
    assert [(r.name, r.count, r.failed, r.total, r.mean, r.longest) for r in by_group] == [
        ("G", 2, 1, 4.0, 2.0, 3.0), ("b", 1, 1, 4.0, 4.0, 4.0)]
    by_type = stats.duration_table(trace, stats.task_type_key)
    assert [(r.name, r.count) for r in by_type] == [("a", 2), ("b", 1)]


def test_lanes_and_spans_keep_non_adjacent_cores_apart():
    trace = make_trace()
    lanes = stats.lanes(trace)
    assert [lane.name for lane in lanes] == ["w1 light", "w1 cpu 0", "w1 cpu 1", "w1 cpu 2",
                                             "w1 cpu 3", "w2 light", "w2 cpu 0"]
    index = {lane: i for i, lane in enumerate(lanes)}
    assert [stats.task_spans(t, index) for t in trace.tasks] == [[(1, 1)], [(2, 2), (4, 4)],
                                                               [(5, 5)]]


def test_transfer_totals_and_cumulative_series():
    trace = make_trace()
    rows = stats.transfer_table(trace.transfers)
    assert [(r.source, r.target, r.count, r.nbytes) for r in rows] == [
        ("worker-2", "worker-1", 1, 500), ("worker-1", "worker-2", 2, 150)]
    series = stats.cumulative_transfers(trace.transfers, top=1)
    assert series == {"worker-2 → worker-1": ([0.0, 1.5], [0, 500]),
                      "other": ([0.0, 1.0, 2.0], [0, 100, 150])}


def test_summary_counts_failed_and_unfinished_apart():
    facts = stats.summary(make_trace())
    assert (facts["n_tasks"], facts["n_failed"], facts["n_unfinished"]) == (3, 1, 1)
    assert (facts["n_lanes"], facts["bytes_transferred"], facts["groups"]) == (7, 650, ["G", "b"])


def test_human_bytes():
    assert [stats.human_bytes(n) for n in (0, 1023, 1024, 3 * 2**20, 5 * 2**30)] == [
        "0 B", "1023 B", "1.0 KiB", "3.0 MiB", "5.0 GiB"]
