"""Decisions that used to live in the broker's socket loop, now core policy on a fake clock."""

from hyperloom import protocol
from hyperloom.client import tasks

from .harness import Cluster


class RecordingRecorder:
    """A Recorder (hyperloom/broker/recorder.py) that keeps what it is told."""

    def __init__(self, directory):
        self.directory = directory
        self.events = []
        self.closed = False

    def worker_joined(self, worker_id, address, cpus):
        self.events.append(("worker", worker_id, address, cpus))

    def tasks_submitted(self, submitted):
        self.events.extend(("task", *entry) for entry in submitted)

    def sample(self, cpu_percent, mem_bytes):
        self.events.append(("sample", cpu_percent, mem_bytes))

    def close(self):
        self.closed = True


def test_set_trace_opens_a_recorder_and_tells_every_worker():
    opened = []

    def open_recorder(directory):
        opened.append(RecordingRecorder(directory))
        return opened[-1]
    cluster = Cluster(workers=2, open_recorder=open_recorder)
    cluster.client.send(protocol.encode(protocol.SET_TRACE, "/traces/run1"))
    cluster.run()
    [recorder] = opened
    assert recorder.directory == "/traces/run1"
    assert [w.trace_dir for w in cluster.workers] == ["/traces/run1"] * 2
    late = cluster.add_worker()
    cluster.run()
    assert late.trace_dir == "/traces/run1"
    ids = cluster.client.submit([tasks.merge((tasks.const("a"),))])
    cluster.run()
    assert [e[0] for e in recorder.events].count("worker") == 3
    assert {e[1] for e in recorder.events if e[0] == "task"} >= set(ids)
    cluster.broker.on_shutdown()
    assert recorder.closed
    cluster.flush()                      # every worker is told Shutdown, and leaves
    assert not cluster.live_workers() and not cluster.broker.workers


def test_set_trace_with_a_relative_path_or_an_unwritable_one_is_refused():
    def cannot_open(directory):
        raise OSError("read-only file system")
    cluster = Cluster(workers=1, open_recorder=cannot_open)
    cluster.expect_errors = True
    cluster.client.send(protocol.encode(protocol.SET_TRACE, "relative/dir"))
    cluster.client.send(protocol.encode(protocol.SET_TRACE, "/ro"))
    cluster.run()
    assert len(cluster.client.errors) == 2
    assert "must be an absolute path" in cluster.client.errors[0]
    assert "cannot write traces into /ro: read-only file system" in cluster.client.errors[1]
    assert not cluster.broker.tracing


def test_load_opens_existing_checkpoints_instead_of_computing_their_inputs(tmp_path):
    saved = tmp_path / "b.ckpt"
    saved.write_bytes(b"from the checkpoint")
    cluster = Cluster(workers=1, checkpoint_exists=lambda path: path == str(saved))
    a = tasks.const("computed a")
    b = tasks.merge((a,))
    b.checkpoint_path = str(saved)
    c = tasks.merge((tasks.const("computed c"),))
    c.checkpoint_path = str(tmp_path / "missing.ckpt")
    ids = cluster.client.submit([b, c], load=True)
    cluster.run()
    computed = [entry[1] for fields in cluster.messages_named("ComputeTasks")
                for entry in fields[0]]
    assert computed.count(protocol.TASK_OPEN) == 1 and protocol.TASK_CONST in computed
    assert len(computed) == 3   # open b, and c with its input; not a
    assert cluster.gather(ids) == [b"from the checkpoint", b"computed c"]


def test_progress_alone_goes_out_at_most_five_times_a_second():
    cluster = Cluster(workers=1, auto_run=False)
    worker = cluster.workers[0]
    ids = cluster.client.submit([tasks.merge([tasks.const(str(i)) for i in range(10)])])
    cluster.run()
    before = len(cluster.messages_named("TasksFinished"))
    for _ in range(10):             # ten tasks finish one by one, at the same instant
        worker.finish_running(1)
        cluster.run()
    progress = cluster.messages_named("TasksFinished")[before:]
    assert len(progress) == 1       # only the first: the rest within 0.2 s
    cluster.advance(0.25)
    worker.finish_running()
    cluster.run()
    assert cluster.client.progress == (11, 11) and ids[0] in cluster.client.finished


def test_get_stats_is_answered_by_the_core():
    cluster = Cluster(workers=2, cpus=3)
    cluster.client.submit([tasks._make(protocol.TASK_CONST, request=tasks.cpus(4))])
    cluster.run()
    cluster.client.send(protocol.encode(protocol.GET_STATS, 9))
    cluster.run()
    stats = cluster.client.stats[9]
    assert stats["n_workers"] == 2 and [w["cpus"] for w in stats["workers"]] == [3, 3]
    [unplaceable] = stats["unplaceable"]
    assert "needs 4 cpus" in unplaceable["reason"]


def test_messages_not_expected_from_a_peer_are_refused_by_the_core():
    cluster = Cluster(workers=1)
    cluster.expect_errors = True
    worker = cluster.workers[0]
    worker.send(protocol.encode(protocol.SUBMIT, [], [], [], False, False, []))
    cluster.client.send(protocol.encode(protocol.TASKS_DONE, [], [], [], []))
    cluster.to_broker(b"stranger", protocol.encode(protocol.FETCH, 1, [], False, False))
    cluster.ever.add(b"stranger")
    cluster.run()
    assert worker.errors == ["Submit is not expected from a worker"]
    assert cluster.client.errors == ["TasksDone is not expected from a client"]
    [(_, _, _, fields)] = [m for m in cluster.transcript if m[1] == b"stranger"]
    assert fields == ["Fetch before HelloClient/HelloWorker", True]


def test_overbooking_follows_a_fast_workers_rate_on_the_tick():
    cluster = Cluster(workers=1, cpus=1)
    worker = cluster.workers[0]
    cluster.client.submit([tasks._make(protocol.TASK_CONST, request=tasks.cpus(1))
                           for _ in range(400)])
    cluster.run()
    cluster.advance(1.0)            # 400 core tasks in ~1 s: ~8 may queue per core
    record = cluster.broker.workers[worker.identity]
    assert record.overbooking == 8


def test_a_retiring_worker_hands_over_its_work_and_data_and_nothing_is_recomputed():
    cluster = Cluster(workers=2, cpus=1, auto_run=False)
    old, new = cluster.workers
    ids = cluster.client.submit([tasks._make(protocol.TASK_CONST, config=b"%d" % i,
                                             request=tasks.cpus(1)) for i in range(6)])
    cluster.run()
    old.finish_running()                 # one result held only by the old worker
    cluster.run()
    old.send(protocol.encode(protocol.RETIRING))
    cluster.run()                        # its queued tasks are asked back and given back
    assert cluster.messages_named("StealTasks", receiver=old.identity)
    for _ in range(10):
        for worker in cluster.live_workers():
            worker.finish_running()
        cluster.run()
    assert not old.alive                 # told Shutdown after its copies, said Goodbye
    to_old = [name for sender, receiver, name, _ in cluster.transcript
              if receiver == old.identity]
    assert to_old[-1] == "Shutdown" and "SendData" in to_old
    assert cluster.gather(ids) == [b"%d" % i for i in range(6)]
    finished = [entry[0] for fields in cluster.messages_named("TasksDone")
                for entry in fields[0]]
    assert sorted(finished) == sorted(ids)   # each finished once: nothing recomputed


def test_a_dashboard_snapshot_is_answered_from_the_core():
    cluster = Cluster(workers=2, cpus=1)
    cluster.compute([tasks.merge([tasks.const("a"), tasks.const("b")])])
    cluster.client.send(protocol.encode(protocol.GET_SNAPSHOT, 4, 0))
    cluster.run()
    snapshot = cluster.client.stats[4]
    assert len(snapshot["workers"]) == 2
    assert snapshot["clients"][0]["done"] == snapshot["clients"][0]["total"] == 3


def test_a_task_whose_input_is_held_by_a_retiring_worker_is_placed_elsewhere():
    """The scheduler weighed the input's holders for locality, a retiring one among them,
    which it does not place on: the broker crashed (KeyError in the scheduler)."""
    cluster = Cluster(workers=1, cpus=1)
    holder = cluster.workers[0]
    source = tasks.const("a")
    wide = tasks._make(protocol.TASK_MERGE, [source], request=tasks.cpus(2))
    source_id, wide_id = cluster.client.submit([source, wide])
    cluster.run()                        # the source runs; nobody can run wide yet
    assert source_id in holder.core.store
    holder.send(protocol.encode(protocol.RETIRING))
    big = cluster.add_worker(cpus=2)     # wide is placed while the holder retires
    cluster.run()
    assert cluster.gather([source_id, wide_id]) == [b"a", b"a"]
    assert not holder.alive and wide_id in big.computed
