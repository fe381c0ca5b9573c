"""Real plans of built-in tasks, run by the broker core and worker cores in memory."""

import struct

import pytest

from hyperloom import protocol
from hyperloom.client import tasks

from .harness import Cluster, UnexpectedMessage


def test_a_plan_of_every_inline_builtin_computes_real_values(cluster):
    a, b = tasks.const("hello "), tasks.const("world")
    merged = tasks.merge((a, b))
    array = tasks.array_make((a, b, merged))
    values = cluster.compute([
        merged, tasks.size(merged), tasks.length(array), tasks.get(array, 2),
        tasks.slice(array, 0, 2), tasks.merge((tasks.get(array, 1), a), "|"),
    ])
    assert values[0] == b"hello world"
    assert struct.unpack("<Q", values[1]) == (11,)   # size and length are u64 (as the original)
    assert struct.unpack("<Q", values[2]) == (3,)
    assert values[3] == b"hello world"
    assert values[4] == [b"hello ", b"world"]
    assert values[5] == b"world|hello "
    assert cluster.broker.tasks == {}  # fetched with release: nothing is held
    assert cluster.client.progress == (10, 10)


def test_work_spreads_over_both_workers_and_data_moves_worker_to_worker(cluster):
    parts = [tasks.const(str(i)) for i in range(20)]
    [joined] = cluster.compute([tasks.merge(parts, ",")])
    assert joined == ",".join(str(i) for i in range(20)).encode()
    computed = [len(w.computed) for w in cluster.workers]
    assert all(computed), computed
    assert cluster.messages_named("SendData")  # the merge read inputs from the other worker


def test_a_big_result_is_fetched_through_upload_and_relayed(cluster):
    big = tasks.const("x" * (protocol.INLINE_RESULT_BYTES + 1))
    [value] = cluster.compute([big])
    assert value == b"x" * (protocol.INLINE_RESULT_BYTES + 1)
    assert len(cluster.messages_named("Upload")) == 1
    assert len(cluster.messages_named("Uploaded")) == 1


def test_a_failed_task_fails_its_consumers_and_nothing_else(cluster):
    bad = tasks.get(tasks.const("not an array"), 3)
    ok = tasks.const("fine")
    ids = cluster.client.submit([tasks.merge((bad, ok)), ok])
    cluster.run()
    assert ids[1] in cluster.client.finished
    failed_id, _, message = cluster.client.failed[ids[0]]
    assert failed_id != ids[0] and "get" in message.lower()
    cluster.client.release(ids)
    cluster.run()
    assert cluster.broker.tasks == {}


def test_a_long_chain_runs_and_leaves_nothing_behind(cluster):
    node = tasks.const("0")
    for i in range(1, 300):
        node = tasks.merge((node, tasks.const(str(i % 10))))
    [value] = cluster.compute([node])
    assert len(value) == 300
    assert all(not w.core.store for w in cluster.workers)  # everything was removed


def test_the_same_plan_gives_the_same_transcript_every_time():
    def transcript():
        cluster = Cluster(workers=3, cpus=2)
        leaves = [tasks.const(str(i)) for i in range(12)]
        cluster.compute([tasks.merge(leaves[i:i + 3]) for i in range(0, 12, 3)])
        return cluster.transcript
    assert transcript() == transcript()


def test_an_error_to_a_worker_fails_the_test(cluster):
    # The recording transport: a worker reporting a task it never got is answered with
    # an Error, which no worker expects.
    worker = cluster.workers[0]
    with pytest.raises(UnexpectedMessage, match="never assigned"):
        worker.send(protocol.encode(protocol.TASKS_DONE, [[12345, 1, 0]], [], [], []))
        cluster.run()


def test_a_refused_plan_names_every_result(cluster):
    cluster.client.submit([tasks.const("a"), tasks.merge((tasks.const("b"),))])
    ids = cluster.client.submit([tasks._make("no/such/type")])
    cluster.run()
    [(refused_ids, message)] = cluster.client.refused
    assert refused_ids == ids and "unknown task type 'no/such/type'" in message
