"""Trace writer → reader round trips, clock alignment, label groups, robustness and cost."""

import io
import os
import time

import pytest

import msgpack

from hyperloom import trace as trace_module
from hyperloom.trace import writer as trace_writer
from hyperloom.trace import (TraceWriter, TracedTask, TracedWorker, Transfer, label_group,
                             read_trace)

WALL0 = 1_700_000_000 * 10**9


class FakeClock:
    """A monotonic clock the test moves by hand, and a wall clock offset from it."""

    def __init__(self, wall_offset_ns: int, monotonic_start_ns: int = 5_000_000_000):
        self.start_ns = monotonic_start_ns  # monotonic clocks start at an arbitrary value
        self.ns = monotonic_start_ns
        self.wall_offset_ns = wall_offset_ns

    def monotonic(self) -> int:
        return self.ns

    def wall(self) -> int:
        return WALL0 + self.wall_offset_ns + (self.ns - self.start_ns)

    def at(self, seconds: float) -> "FakeClock":
        self.ns = self.start_ns + round(seconds * 1e9)
        return self


def writer(directory, name, clock: FakeClock) -> TraceWriter:
    return TraceWriter(str(directory), name, clock.monotonic, clock.wall)


def write_three_files(tmp_path):
    """Broker starts at wall 0; worker 1 at wall +1 s; worker 2 at wall +2 s."""
    broker_clock, w1_clock, w2_clock = FakeClock(0), FakeClock(10**9), FakeClock(2 * 10**9)
    broker = writer(tmp_path, "broker", broker_clock)
    w1 = writer(tmp_path, "worker-1", w1_clock)
    w2 = writer(tmp_path, "worker-2", w2_clock)
    broker_clock.at(1.0)
    broker.worker_joined(1, "10.0.0.1:9100", 2)
    broker_clock.at(2.0)
    broker.worker_joined(2, "10.0.0.2:9100", 4)
    broker_clock.at(2.5)
    broker.tasks_submitted([(10, "loom/data/const", "Init", []),
                            (11, "loom/py/call", "Compute: 1", [10]),
                            (12, "loom/py/call", None, [10, 11])])
    w1_clock.at(1.6)                      # wall 2.6 s
    w1.task_started(10, [])
    w1_clock.at(1.7)
    w1.task_finished(10, 100)
    w1_clock.at(1.8)
    w1.data_sent(10, 100, "10.0.0.2:9100")
    w1.sample(50.0, 2**20)
    w2_clock.at(0.9)                      # wall 2.9 s
    w2.data_received(10, 100, "10.0.0.1:9100", 0.05)
    w2_clock.at(1.0)                      # wall 3.0 s
    w2.task_started(11, [1, 3])
    w2_clock.at(3.0)                      # wall 5.0 s
    w2.task_finished(11, 7, ok=False)
    for w in (broker, w1, w2):
        w.close()


def test_round_trip_merges_files_on_one_aligned_clock(tmp_path):
    write_three_files(tmp_path)
    trace = read_trace(tmp_path)
    # The earliest event is the broker's first W at wall 1.0 s: times are relative to it.
    assert trace.tasks == [
        TracedTask(10, "loom/data/const", "Init", 1, (), 1.6, pytest.approx(1.7), True, 100, ()),
        TracedTask(11, "loom/py/call", "Compute: 1", 2, (1, 3), 2.0, 4.0, False, 7, (10,)),
    ]
    assert trace.workers == [TracedWorker(1, "10.0.0.1:9100", 2),
                             TracedWorker(2, "10.0.0.2:9100", 4)]
    # Sent by worker 1 and received by worker 2: one transfer, with the receiver's duration.
    assert trace.transfers == [Transfer(10, 100, "worker-1", "worker-2", pytest.approx(1.8), 0.05)]
    assert [(s.worker, s.time, s.cpu_percent, s.mem_bytes) for s in trace.samples] == [
        (1, pytest.approx(1.8), 50.0, 2**20)]
    assert trace.n_submitted == 3
    assert trace.duration == pytest.approx(4.0)
    assert trace.bad_records == 0


def test_files_with_the_same_wall_start_but_other_monotonic_origins_align(tmp_path):
    # Two processes whose monotonic clocks differ by hours still agree through the wall clock.
    a, b = FakeClock(0), FakeClock(0, monotonic_start_ns=3600 * 10**9)
    wa, wb = writer(tmp_path, "worker-1", a), writer(tmp_path, "worker-2", b)
    a.at(1.0)
    wa.task_started(1, [0])
    b.at(2.0)
    wb.task_started(2, [0])
    wa.close(), wb.close()
    starts = {t.task_id: t.start for t in read_trace(tmp_path).tasks}
    assert starts == {1: 0.0, 2: 1.0}


def test_label_groups_follow_the_guide_example():
    labels = ["Init", "Init", "Compute: 1", "Compute: 2", "End"]
    assert [label_group(label) for label in labels] == ["Init", "Init", "Compute", "Compute", "End"]
    assert len({label_group(label) for label in labels}) == 3
    assert label_group(" a b : c : d") == "a b"
    assert label_group(":x") == ""


def test_unlabelled_tasks_are_grouped_by_task_type():
    task = TracedTask(1, "loom/data/merge", None, 1, (), 0.0, 1.0, True)
    assert task.group == "loom/data/merge"
    assert TracedTask(1, None, None, 1, (), 0.0, 1.0, True).group == "unknown"
    assert TracedTask(1, "t", "Compute: 3", 1, (), 0.0, 1.0, True).group == "Compute"


def test_labels_and_addresses_with_odd_characters_survive(tmp_path):
    clock = FakeClock(0)
    broker = writer(tmp_path, "broker", clock)
    odd = "Compute: x y\nz \\s\u2028end"
    broker.tasks_submitted([(1, "my type", odd, [5, 6])])
    broker.worker_joined(3, "host name:1", 1)
    broker.close()
    w = writer(tmp_path, "worker-3", clock)
    w.task_started(1, [0])
    w.task_finished(1, 1)
    w.close()
    trace = read_trace(tmp_path)
    (task,) = trace.tasks
    assert (task.task_type, task.label, task.inputs) == ("my type", odd, (5, 6))
    assert task.group == "Compute"
    assert trace.workers == [TracedWorker(3, "host name:1", 1)]


def test_a_block_cut_by_a_crash_and_a_finish_without_start_are_skipped(tmp_path):
    clock = FakeClock(0)
    w = writer(tmp_path, "worker-1", clock)
    w.task_started(1, [0])
    w.task_finished(99, 1)   # never started (e.g. before tracing began): cannot be placed
    w.task_started(2, [1])
    w.close()
    future_block = msgpack.packb(["Z", 1, [1, 2], []])      # a kind from a newer writer
    malformed = msgpack.packb(["F", 2, [1, 2, 3, 4], []])   # 4 integers, F needs 4 per event
    cut = msgpack.packb(["F", 1, [10**15, 7, 2, 1], []])[:-3]  # the writer died mid-write
    with open(tmp_path / "worker-1.ltrace", "ab") as file:
        file.write(future_block + malformed + cut)
    trace = read_trace(tmp_path)
    assert [(t.task_id, t.end, t.ok) for t in trace.tasks] == [(1, None, False), (2, None, False)]
    assert trace.bad_records == 3
    # A worker the broker never announced gets lanes for the cores it used.
    assert trace.workers == [TracedWorker(1, None, 2)]


def test_a_worker_using_more_cores_than_announced_gets_a_lane_for_each(tmp_path):
    clock = FakeClock(0)
    broker = writer(tmp_path, "broker", clock)
    broker.worker_joined(1, "a:1", 2)
    broker.close()
    w = writer(tmp_path, "worker-1", clock)
    w.task_started(1, [5])
    w.close()
    assert read_trace(tmp_path).workers == [TracedWorker(1, "a:1", 6)]


def test_transfers_seen_by_one_end_only_are_kept(tmp_path):
    clock = FakeClock(0)
    w = writer(tmp_path, "worker-1", clock)
    clock.at(1.0)
    w.data_sent(5, 10, "client")
    clock.at(2.0)
    w.data_received(6, 20, "10.9.9.9:1", 0.5)
    clock.at(3.0)
    w.data_received(7, 30, "10.9.9.9:1")  # how long it took is not known
    w.close()
    transfers = read_trace(tmp_path).transfers
    # Times are relative to the first event (the send at 1.0 s); a receive-only transfer is
    # dated when it began, the receive time less its duration.
    assert transfers == [Transfer(5, 10, "worker-1", "client", 0.0, None),
                         Transfer(6, 20, "10.9.9.9:1", "worker-1", 0.5, 0.5),
                         Transfer(7, 30, "10.9.9.9:1", "worker-1", 2.0, None)]


def test_reading_refuses_what_is_not_a_trace(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path)
    (tmp_path / "x.ltrace").write_text("hello\n")
    with pytest.raises(ValueError, match="bad header"):
        read_trace(tmp_path)
    (tmp_path / "x.ltrace").write_text("H 1 0 x\n")  # the text format of early versions
    with pytest.raises(ValueError, match="bad header"):
        read_trace(tmp_path)
    (tmp_path / "x.ltrace").write_bytes(msgpack.packb(
        {"format": "hyperloom-trace", "version": 999, "name": "x", "clock_ns": 0, "wall_ns": 0}))
    with pytest.raises(ValueError, match="version 999"):
        read_trace(tmp_path)
    (tmp_path / "x.ltrace").write_bytes(b"")
    with pytest.raises(ValueError, match="bad header"):
        read_trace(tmp_path)


def test_a_task_run_twice_in_one_block_pairs_each_start_with_its_finish(tmp_path):
    # Starts and finishes of one flush go into separate blocks: pairing is by time, not order.
    clock = FakeClock(0)
    w = writer(tmp_path, "worker-1", clock)
    for start, end, ok in [(1.0, 2.0, False), (3.0, 5.0, True)]:
        clock.at(start)
        w.task_started(4, [0])
        clock.at(end)
        w.task_finished(4, 10, ok)
    w.close()
    runs = [(t.start, t.end, t.ok) for t in read_trace(tmp_path).tasks]
    assert runs == [(0.0, 1.0, False), (2.0, 4.0, True)]


def test_many_events_span_several_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_writer, "BLOCK_INTS", 7)
    clock = FakeClock(0)
    broker = writer(tmp_path, "broker", clock)
    broker.tasks_submitted((i, "t", f"L{i % 3}", [i - 1] if i else []) for i in range(100))
    broker.close()
    w = writer(tmp_path, "worker-1", clock)
    for i in range(100):
        clock.at(i)
        begin = w.now()
        clock.at(i + 0.5)
        w.tasks_ran([begin, i, w.now(), i, True, ()])
    w.close()
    # the small block size took effect: each file holds many blocks of its events
    assert len(trace_module.read_file(tmp_path / "broker.ltrace").blocks) > 10
    assert len(trace_module.read_file(tmp_path / "worker-1.ltrace").blocks) > 10
    trace = read_trace(tmp_path)
    assert trace.n_submitted == 100 and trace.bad_records == 0
    assert [(t.task_id, t.size, t.label, t.inputs) for t in trace.tasks] == [
        (i, i, f"L{i % 3}", (i - 1,) if i else ()) for i in range(100)]
    assert all(t.end - t.start == pytest.approx(0.5) for t in trace.tasks)


def test_malformed_blocks_are_counted_and_skipped(tmp_path):
    clock = FakeClock(0)
    w = writer(tmp_path, "worker-1", clock)
    w.tasks_ran([w.now(), 1, w.now(), 5, True, (0,)])
    w.close()
    bad = [["X", 1, [1, 2, 3, 4, 1, 2], [0]],        # cpu count 2, one cpu id given
           ["X", 1, [1, 2, 3, 4, 1, -1], []],        # negative count
           ["D", 1, [1, 2, 3, 99], []],              # no string 99 defined
           ["$", 2, [], ["only one"]],               # count does not match
           ["T", 1, [1, "x", 0, -1, 0], []],         # a string where an integer belongs
           "not a block"]
    with open(tmp_path / "worker-1.ltrace", "ab") as file:
        for block in bad:
            file.write(msgpack.packb(block))
    trace = read_trace(tmp_path)
    assert [t.task_id for t in trace.tasks] == [1]
    assert trace.bad_records == len(bad)


def test_dump_prints_events_as_text(tmp_path):
    clock = FakeClock(0)
    w = writer(tmp_path, "worker-2", clock)
    clock.at(0.25)
    w.task_started(9, [0, 1])
    clock.at(1.0)
    w.data_sent(9, 123, "10.0.0.1:9")
    w.close()
    out = io.StringIO()
    trace_module.dump(tmp_path, out)
    lines = out.getvalue().splitlines()
    assert "worker-2" in lines[0]
    assert lines[1:] == ["S 250000 9 (0, 1)", "D 1000000 9 123 '10.0.0.1:9'"]


def test_writer_buffers_events_and_leaves_the_header_on_disk(tmp_path):
    w = TraceWriter(str(tmp_path / "new" / "dir"), "worker-1")
    header_size = os.path.getsize(w.path)
    assert header_size > 0
    for i in range(1000):
        w.task_started(i, [0])
        w.task_finished(i, 8)
    assert os.path.getsize(w.path) == header_size  # no write(2) per event
    w.flush()
    assert os.path.getsize(w.path) > header_size
    w.close()
    w.close()  # closing twice is harmless
    assert len(read_trace(tmp_path / "new" / "dir").tasks) == 1000


def test_per_event_cost_is_small(tmp_path, capsys):
    # CPU time of this process, best of three: the figure is for the code, not for a busy CI.
    # The events a plan of tiny tasks writes: its submit (T) and one X per task.
    n = 100_000
    best = float("inf")
    for attempt in range(3):
        broker = TraceWriter(str(tmp_path), f"broker-{attempt}")
        w = TraceWriter(str(tmp_path), f"worker-{attempt}")
        started = time.process_time()
        broker.tasks_submitted((i, "loom/data/merge", None, [i - 1, i - 2]) for i in range(n))
        now = w.now
        for batch in range(0, n, 1000):  # the worker records each step's inline runs at once
            runs = []
            for i in range(batch, batch + 1000):
                runs += (now(), i, now(), 100, True, ())
            w.tasks_ran(runs)
        broker.close()
        w.close()
        best = min(best, (time.process_time() - started) / n)
    with capsys.disabled():
        print(f"\ntrace cost: {best * 1e6:.2f} µs CPU per task (one T and one X event, "
              f"{n} tasks, write and close included)")
    assert best < 5e-6


def test_one_event_task_records_read_like_start_and_finish(tmp_path):
    ticks = iter(range(0, 10_000_000, 1000))
    writer = TraceWriter(str(tmp_path), "worker-1", clock=lambda: next(ticks) * 1000,
                         wall_clock=lambda: 1_700_000_000_000_000_000)
    first = writer.now()
    second = writer.now()
    writer.tasks_ran([first, 7, second, 42, True, (0, 2), second, 8, writer.now(), 0, False, ()])
    writer.close()
    seven, eight = read_trace(str(tmp_path)).tasks
    assert (seven.task_id, seven.worker, seven.cpu_ids, seven.size, seven.ok) == \
        (7, 1, (0, 2), 42, True)
    assert (eight.task_id, eight.cpu_ids, eight.size, eight.ok) == (8, (), 0, False)
    assert seven.end == pytest.approx(seven.start + 1e-3) == eight.start
    assert eight.end == pytest.approx(eight.start + 1e-3)
