"""The broker's DashboardFeed without sockets: what it records, when, and what a Snapshot holds.

The server's hooks (on_compute_sent, on_tasks_done, on_sends, worker joined/gone) are
called here the way BrokerServer calls them around the state's handlers.
"""

import msgpack
import pytest

from hyperloom import protocol
from hyperloom.broker import snapshot as snap
from hyperloom.broker.state import BrokerState

RUN = protocol.TASK_RUN


class Cluster:
    def __init__(self, feed=None):
        self.state = BrokerState()
        if feed is not None:
            self.state.feed = feed
        self.feed = self.state.feed
        self.client = self.state.on_client_hello(b"c", protocol.PROTOCOL_VERSION, 0.0)
        self.base = self.client.number << protocol.CLIENT_SHIFT
        self.workers = []

    def add_worker(self, cpus=1, now=0.0):
        n = len(self.workers)
        worker = self.state.on_worker_hello(b"w%d" % n, protocol.PROTOCOL_VERSION, cpus,
                                            f"tcp://w{n}:1", [RUN], f"host{n}", now)
        self.feed.on_worker_joined(worker, now)
        self.workers.append(worker)
        return worker

    def submit(self, labels, inputs=None):
        """One run task per label (local ids from the current count), all results."""
        start = len(self.state.tasks)
        table = sorted(set(labels))
        entries = [[self.base + start + i, 0, b"", list(inputs or []), 1, True,
                     table.index(label), None] for i, label in enumerate(labels)]
        self.state.on_submit(self.client, [RUN], table, entries, False, False)

    def schedule(self, now):
        """Place ready tasks and 'send' the ComputeTasks (as the server's flush does)."""
        self.state.schedule_round()
        out = self.state.outbox
        placed = {w: [e[0] for e in entries] for w, entries in out.compute.items()}
        if self.feed.active:
            for entries in out.compute.values():
                self.feed.on_compute_sent(entries, now)
        out.clear()
        return placed

    def report(self, worker, finished=(), failed=(), now=0.0):
        done = [[task_id, 7, 1] for task_id in finished]
        failures = [[task_id, message] for task_id, message in failed]
        if self.feed.active:
            self.feed.on_tasks_done(worker, self.state.tasks, done, failures, now)
        self.state.on_tasks_done(worker, done, failures, now)

    def snapshot(self, since=0, now=0.0):
        answer = self.feed.snapshot(self.state, since, now)
        # It must travel as a msgpack header field, as the server sends it.
        protocol.decode(protocol.encode(protocol.SNAPSHOT, 1, answer))
        return msgpack.unpackb(msgpack.packb(answer), raw=False)


def test_nothing_is_recorded_while_no_dashboard_asks():
    c = Cluster()
    w = c.add_worker()
    c.submit(["sleep:1", "sleep:2"])
    placed = c.schedule(now=1.0)
    c.report(w, finished=placed[w], now=2.0)
    assert not c.feed.active
    assert list(c.feed.events) == [] and c.feed.sent_at == {} and c.feed.groups == {}


def test_a_watched_task_is_an_event_with_its_worker_group_and_times():
    c = Cluster()
    w = c.add_worker(cpus=2)
    c.snapshot(now=0.5)
    c.submit(["sleep:1", "bad"])
    placed = c.schedule(now=1.0)
    ok_id, bad_id = sorted(placed[w])
    c.report(w, finished=[ok_id], failed=[(bad_id, "exit 3: no input")], now=2.5)
    answer = c.snapshot(now=3.0)
    tasks = [e for e in answer["events"] if e[1] == snap.TASK]
    assert tasks == [
        [tasks[0][0], "task", w.worker_id, c.client.number, "sleep", 1.0, 2.5, 1, True, 0],
        [tasks[1][0], "task", w.worker_id, c.client.number, "bad", 1.0, 2.5, 1, False, 1]]
    [failure] = answer["failures"]
    assert failure["message"] == "exit 3: no input" and failure["id"] == 1
    assert failure["label"] == "bad" and failure["worker"] == "tcp://w0:1"
    assert c.feed.sent_at == {}  # nothing kept once the tasks ended


def test_a_snapshot_holds_only_the_events_after_its_cursor():
    c = Cluster()
    w = c.add_worker()
    first = c.snapshot(now=0.0)
    c.submit(["a"])
    c.report(w, finished=c.schedule(now=1.0)[w], now=2.0)
    second = c.snapshot(since=first["seq"], now=2.1)
    assert [e[1] for e in second["events"]] == ["task"]
    third = c.snapshot(since=second["seq"], now=2.2)
    assert third["events"] == [] and third["seq"] == second["seq"]
    assert not third["missed_events"]


def test_counters_by_label_group_include_tasks_held_when_watching_started():
    c = Cluster()
    w = c.add_worker(cpus=4)
    c.submit(["io:read", "io:write", "compute"])
    placed = c.schedule(now=0.0)[w]
    c.report(w, finished=placed[:1], now=0.5)  # finished before any dashboard asked
    c.snapshot(now=1.0)                       # watching starts: the held tasks are counted
    c.submit(["io:read again"])
    [new] = c.schedule(now=1.0)[w]
    c.report(w, finished=placed[1:2], failed=[(new, "boom")], now=2.0)
    [entry] = c.snapshot(now=3.0)["clients"]
    groups = {name: counts for name, *counts in entry["groups"]}
    # [total, finished, failed, canceled]; a failed task fails its label group only
    assert sum(g[0] for g in groups.values()) == entry["total"] == 4
    assert entry["done"] == c.client.n_done == sum(sum(g[1:]) for g in groups.values())
    assert groups["io"][0] == 3 and groups["compute"][0] == 1
    assert groups["io"][1] + groups["compute"][1] == 2
    assert groups["io"][2] + groups["compute"][2] == 1


def test_recording_stops_once_no_dashboard_asked_for_a_while():
    c = Cluster()
    w = c.add_worker()
    c.snapshot(now=0.0)
    c.feed.tick(snap.WATCH_SECONDS - 1)
    assert c.feed.active
    c.feed.tick(snap.WATCH_SECONDS + 1)
    assert not c.feed.active and c.feed.groups == {}
    seq = c.feed.seq
    c.submit(["a"])
    c.report(w, finished=c.schedule(now=10.0)[w], now=11.0)
    assert c.feed.seq == seq


def test_the_event_ring_is_bounded_and_a_late_dashboard_is_told_it_missed_events():
    c = Cluster(snap.DashboardFeed(capacity=3))
    c.snapshot(now=0.0)
    w = c.add_worker(cpus=8)          # the "joined" event: the cursor is past 0
    first = c.snapshot(now=0.0)
    c.submit([f"t:{i}" for i in range(6)])
    c.report(w, finished=c.schedule(now=1.0)[w], now=2.0)
    late = c.snapshot(since=first["seq"], now=3.0)
    assert len(late["events"]) == 3 and late["missed_events"]
    assert [e[9] for e in late["events"]] == [3, 4, 5]  # the newest


def test_departed_workers_are_kept_as_left_or_lost_even_without_a_dashboard():
    c = Cluster()
    w1, w2 = c.add_worker(), c.add_worker()
    for worker, left in ((w1, True), (w2, False)):
        c.state.on_worker_lost(worker)
        c.feed.on_worker_gone(worker, left, "said goodbye" if left else "no heartbeat", 5.0)
    answer = c.snapshot(now=6.0)
    assert [(d["id"], d["state"]) for d in answer["departed"]] == [(1, "left"), (2, "lost")]
    assert answer["workers"] == []


def test_transfers_name_both_workers_and_the_bytes():
    c = Cluster()
    w1, w2 = c.add_worker(), c.add_worker()
    c.snapshot(now=0.0)
    c.submit(["a"])
    c.report(w1, finished=c.schedule(now=0.0)[w1], now=1.0)
    c.feed.on_sends(w1, {w2.address: [c.base]}, c.state.tasks, 1.5)
    [transfer] = [e for e in c.snapshot(now=2.0)["events"] if e[1] == snap.TRANSFER]
    assert transfer[2:] == [w1.worker_id, w2.worker_id, 1, 7, 1.5]


def test_workers_carry_their_reported_cpu_and_memory():
    c = Cluster()
    w = c.add_worker(cpus=4)
    c.feed.on_usage(w, 42, 123456)
    [row] = c.snapshot(now=1.0)["workers"]
    assert (row["cpus"], row["cpu_percent"], row["memory"]) == (4, 42, 123456)


def test_label_groups_past_the_limit_are_counted_together():
    c = Cluster()
    c.add_worker()
    c.snapshot(now=0.0)
    c.submit([f"group{i}" for i in range(snap.MAX_GROUPS + 5)])
    [entry] = c.snapshot(now=1.0)["clients"]
    groups = {name: counts for name, *counts in entry["groups"]}
    assert len(groups) == snap.MAX_GROUPS + 1
    assert groups[snap.OTHER_GROUPS][0] == 5


@pytest.mark.parametrize("label, group", [("io: read", "io"), (None, "run")])
def test_a_group_is_the_label_before_its_first_colon_or_the_task_type(label, group):
    c = Cluster()
    w = c.add_worker()
    c.snapshot(now=0.0)
    table = [label] if label else []
    c.state.on_submit(c.client, [RUN], table, [[c.base, 0, b"", [], 1, True,
                                                0 if label else -1, None]], False, False)
    c.report(w, finished=c.schedule(now=0.0)[w], now=1.0)
    [event] = c.snapshot(now=1.0)["events"][-1:]
    assert event[4] == group


def test_a_malformed_report_does_not_break_the_feed_before_the_state_sees_it():
    # Fuzzed TasksDone entries with unhashable ids reached tasks.get() and raised, so the
    # state's own handler (which answers them with Errors) never ran.
    from hyperloom.broker.snapshot import DashboardFeed

    class Worker:
        worker_id = 1

    feed = DashboardFeed()
    feed.on_tasks_done(Worker(), {}, [[[1, 2], 3, 4], [{"a": 1}], "x", []], [[{}, "m"]], 0.0)
    assert len(feed.events) == 0
