"""Heartbeats, worker loss, stealing and dynamic expansion, deterministically in memory."""

import struct

from hyperloom import protocol
from hyperloom.broker import taskstate as ts
from hyperloom.client import tasks

from .harness import Cluster
from .test_random_restarts import _rejoin


def _chain(length):
    node = tasks.const("s")
    for i in range(length):
        node = tasks.merge((node, tasks.const(str(i))))
    return node


def test_a_silent_worker_is_lost_after_the_heartbeat_timeout_and_its_task_moves():
    cluster = Cluster(workers=2, cpus=1, heartbeat_timeout=5.0, auto_run=False)
    [task_id] = cluster.client.submit([tasks._make(protocol.TASK_CONST, config=b"v",
                                                   request=tasks.cpus(1))])
    cluster.run()
    [victim] = [w for w in cluster.workers if w.running]
    survivor = next(w for w in cluster.workers if w is not victim)
    victim.silent = True                     # hangs: no heartbeat, no report
    cluster.advance(5.0)
    assert victim.identity in cluster.broker.workers   # 5 s of silence is allowed
    cluster.advance(1.0)
    assert victim.identity not in cluster.broker.workers
    assert survivor.running                  # the task was given to the survivor
    survivor.finish_running()
    assert cluster.gather([task_id]) == [b"v"]


def test_workers_that_keep_sending_heartbeats_are_never_expired():
    cluster = Cluster(workers=2, heartbeat_timeout=2.0)
    cluster.advance(60.0, step=1.0)
    assert len(cluster.broker.workers) == 2


def test_data_lost_with_a_worker_is_recomputed_from_lineage():
    cluster = Cluster(workers=2, cpus=1)
    ids = cluster.client.submit([_chain(30)])
    cluster.run()
    assert ids[0] in cluster.client.finished
    [holder] = [w for w in cluster.workers if ids[0] in w.core.store]
    cluster.kill(holder)                     # the only copy of the result dies with it
    assert cluster.broker.tasks[ids[0]].state != ts.FINISHED
    cluster.run()
    survivor = cluster.live_workers()[0]
    assert ids[0] in survivor.core.store
    [value] = cluster.gather(ids)
    assert value == b"s" + b"".join(str(i).encode() for i in range(30))
    done, total = cluster.client.progress
    assert done == total


def test_a_worker_lost_mid_plan_leaves_the_results_right():
    cluster = Cluster(workers=3, cpus=1, auto_run=False)
    leaves = [tasks.const(str(i)) for i in range(9)]
    groups = [tasks.merge(leaves[i:i + 3]) for i in range(0, 9, 3)]
    ids = cluster.client.submit([tasks.merge(groups, "+")])
    cluster.run()
    for worker in cluster.workers:           # every worker runs one step's worth
        worker.finish_running()
    cluster.run()
    cluster.kill(cluster.workers[1])
    for _ in range(50):
        for worker in cluster.live_workers():
            worker.finish_running()
        cluster.run()
    assert cluster.gather(ids) == [b"012+345+678"]


def test_a_task_lost_with_three_workers_fails_with_a_clear_error():
    cluster = Cluster(workers=1, cpus=1, auto_run=False)
    [task_id] = cluster.client.submit([tasks._make(protocol.TASK_CONST, config=b"v",
                                                   request=tasks.cpus(1))])
    for _ in range(3):
        cluster.run()
        cluster.kill(cluster.live_workers()[0])
        cluster.add_worker(cpus=1, auto_run=False)
    cluster.run()
    [_, _, message] = cluster.client.failed[task_id]
    assert "Worker lost while running this task 3 times" in message


def test_an_idle_worker_steals_tasks_queued_on_a_busy_one():
    cluster = Cluster(workers=1, cpus=1, auto_run=False)
    busy = cluster.workers[0]
    ids = cluster.client.submit([tasks._make(protocol.TASK_CONST, config=b"%d" % i,
                                             request=tasks.cpus(1)) for i in range(3)])
    cluster.run()
    assert len(busy.core.tasks) == 3 and len(busy.running) == 1  # 1 runs, 2 queue
    idle = cluster.add_worker(cpus=1, auto_run=False)
    cluster.run()
    [asked] = cluster.messages_named("StealTasks", receiver=busy.identity)
    assert len(asked[0]) == 1                # one idle core: one task asked back
    assert idle.running and idle.running[0].id == asked[0][0]
    busy.finish_running()
    idle.finish_running()
    for _ in range(5):
        busy.finish_running()
        cluster.run()
    assert cluster.gather(ids) == [b"0", b"1", b"2"]


def test_dslice_expands_its_consumer_per_piece_once_the_length_is_known():
    cluster = Cluster(workers=2, cpus=1)
    array = tasks.array_make([tasks.const(str(i)) for i in range(20)])
    pieces = tasks.length(tasks.dslice(array))    # length of each piece
    [value] = cluster.compute([pieces])
    # 2 cores in all: pieces of round(20 / (2 * 4)) = 2 (or 3) elements, 20 in all
    lengths = [struct.unpack("<Q", item)[0] for item in value]
    assert sum(lengths) == 20 and len(lengths) == len(range(0, 20, round(20 / 8)))
    assert cluster.broker.tasks == {}


def test_dget_makes_one_task_per_element_and_its_readers_see_them_all():
    def plan():
        array = tasks.array_make([tasks.const(c) for c in "abcde"])
        return tasks.merge((tasks.dget(array), tasks.const("!")))
    cluster = Cluster(workers=2, cpus=1)
    # a reader of the expanded consumer reads all its copies in its place
    assert cluster.compute([tasks.merge((plan(),), "|")]) == [b"a!|b!|c!|d!|e!"]
    # a submitted consumer becomes an array of its copies
    assert cluster.compute([plan()]) == [[b"a!", b"b!", b"c!", b"d!", b"e!"]]
    assert len(cluster.messages_named("ComputeTasks")) >= 2


def test_dslice_of_an_empty_array_gives_an_empty_list():
    cluster = Cluster(workers=1)
    consumer = tasks.length(tasks.dslice(tasks.array_make([])))
    assert cluster.compute([consumer]) == [[]]


def test_a_dslice_read_twice_fails_with_a_message():
    cluster = Cluster(workers=1)
    dyn = tasks.dslice(tasks.array_make([tasks.const("a")]))
    ids = cluster.client.submit([tasks.merge((dyn, dyn))])
    cluster.run()
    [_, where, message] = cluster.client.failed[ids[0]]
    assert where == "broker" and "exactly one consumer" in message


def test_a_client_that_leaves_releases_everything():
    cluster = Cluster(workers=2, auto_run=False)
    cluster.client.submit([_chain(5), tasks.const("x")])
    cluster.run()
    cluster.broker.on_peer_disconnected(cluster.client.identity, cluster.now)
    cluster.check()
    assert cluster.broker.tasks == {}
    assert cluster.broker.outbox.cancel or cluster.broker.outbox.remove


def test_a_worker_that_says_goodbye_mid_plan_leaves_no_task_behind():
    cluster = Cluster(workers=2, cpus=1, auto_run=False)
    ids = cluster.client.submit([_chain(10), tasks.merge([tasks.const("x")] * 3)])
    cluster.run()
    leaving = next(w for w in cluster.workers if w.running)
    leaving.send(protocol.encode(protocol.GOODBYE))
    leaving.alive = False
    assert leaving.identity not in cluster.broker.workers
    survivor = cluster.live_workers()[0]
    survivor.auto_run = True
    survivor.finish_running()
    cluster.run()
    [gone] = survivor.peers_gone           # told to close its channel to the leaver
    assert gone == leaving.address
    chain = b"s" + b"".join(str(i).encode() for i in range(10))
    assert cluster.gather(ids) == [chain, b"xxx"]


def test_a_fetch_waiting_on_a_task_is_answered_when_it_finishes_even_after_a_loss():
    cluster = Cluster(workers=2, cpus=1, auto_run=False)
    [task_id] = cluster.client.submit([_chain(3)])
    request = cluster.client.fetch([task_id], release=True)   # parked: nothing ran yet
    cluster.run()
    cluster.kill(next(w for w in cluster.workers if w.running))
    for _ in range(10):
        for worker in cluster.live_workers():
            worker.finish_running()
        cluster.run()
    assert cluster.client.replies[request] == {task_id: (b"s012", None)}
    assert cluster.broker.tasks == {}


def test_releasing_a_result_being_fetched_answers_the_fetch_with_an_error():
    cluster = Cluster(workers=1, cpus=1, auto_run=False)
    [task_id] = cluster.client.submit([_chain(2)])
    request = cluster.client.fetch([task_id])
    cluster.client.release([task_id])
    cluster.run()
    [(value, error)] = cluster.client.replies[request].values()
    assert value is None and "was released while being fetched" in error
    assert cluster.broker.tasks == {}


def _core_const(value):
    return tasks._make(protocol.TASK_CONST, config=value, request=tasks.cpus(1))


def _times_run(cluster, task_id):
    """How often workers reported ``task_id`` finished."""
    return sum(1 for fields in cluster.messages_named("TasksDone")
               for entry in fields[0] if entry[0] == task_id)


def test_a_queued_task_sent_back_to_wait_by_a_loss_is_placed_once_when_ready_again():
    """Its queue entry stayed behind when the loss sent it back to WAITING; once its
    input was computed again a second entry joined it, and a worker with room for
    both got it twice in one round: the broker crashed (assigned -> assigned)."""
    cluster = Cluster(workers=2, cpus=1, auto_run=False)
    blocker_ids = cluster.client.submit([_core_const(b"%d" % i) for i in range(12)])
    cluster.run()                            # 6 placed (overbooking 3), 6 queued
    source = tasks.const("a")
    consumer = tasks._make(protocol.TASK_MERGE, [source], request=tasks.cpus(1))
    source_id, consumer_id = cluster.client.submit([source, consumer])
    cluster.run()
    [holder] = [w for w in cluster.workers if any(t.id == source_id for t in w.running)]
    holder.finish_running()
    cluster.run()
    assert cluster.broker.tasks[consumer_id].state == ts.READY   # queued behind blockers
    cluster.kill(holder)                     # the only copy of its input is lost
    cluster.run()
    assert cluster.broker.tasks[consumer_id].state == ts.WAITING
    [survivor] = cluster.live_workers()
    survivor.finish_running()                # computes the input again
    cluster.run()
    assert cluster.broker.tasks[consumer_id].state == ts.READY
    cluster.add_worker(cpus=8)               # room for the whole queue in one round
    survivor.auto_run = True
    survivor.finish_running()
    cluster.run()
    assert _times_run(cluster, consumer_id) == 1
    assert cluster.gather([source_id, consumer_id]) == [b"a", b"a"]
    assert cluster.gather(blocker_ids) == [b"%d" % i for i in range(12)]


def test_an_unplaceable_task_sent_back_to_wait_by_a_loss_is_placed_once():
    cluster = Cluster(workers=2, cpus=1)
    source = tasks.const("a")
    wide = tasks._make(protocol.TASK_MERGE, [source], request=tasks.cpus(4))
    source_id, wide_id = cluster.client.submit([source, wide])
    cluster.run()
    assert [n.id for n in cluster.broker.unplaceable] == [wide_id]   # 1-cpu workers only
    [holder] = [w for w in cluster.workers if source_id in w.core.store]
    cluster.kill(holder)
    cluster.run()                            # the input is computed again elsewhere
    assert cluster.broker.tasks[source_id].state == ts.FINISHED
    assert cluster.broker.stats()["unplaceable"] == [
        {"id": wide_id, "n_cpus": 4, "type": "loom/data/merge",
         "reason": "needs 4 cpus; no connected worker has that many (largest: 1)"}]
    cluster.add_worker(cpus=4)
    cluster.run()
    assert _times_run(cluster, wide_id) == 1
    assert cluster.gather([wide_id]) == [b"a"]


def _record_of(cluster, sim):
    """The broker's record of a simulated worker."""
    return cluster.broker.workers[sim.identity]


def test_data_needed_again_before_its_removal_went_out_is_not_removed():
    """A released input, its RemoveData held back (lifecycle.REMOVE_DELAY), is needed
    again by the recomputation of a lost result and computed on the same worker: the
    held removal went out after that order and deleted the new copy."""
    cluster = Cluster(workers=1, cpus=1, auto_run=False)
    small = cluster.workers[0]
    source = tasks.const("a")
    wide = tasks._make(protocol.TASK_MERGE, [source], request=tasks.cpus(2))
    [wide_id] = cluster.client.submit([wide])        # the source is not a result
    cluster.run()
    small.finish_running()                           # the source, on the 1-cpu worker
    cluster.run()
    big = cluster.add_worker(cpus=2, auto_run=False)
    cluster.run()                                    # wide on big, the source copied there
    [source_id] = [i for i in cluster.broker.tasks if i != wide_id]
    big.finish_running(report=False)
    big.report()                                     # wide is done: the source is released
    # its removal from small waits (sent REMOVE_DELAY later, after this round's orders)
    assert source_id in cluster.broker.outbox.remove[_record_of(cluster, small)]
    cluster.kill(big)                                # and wide dies with big, at once
    cluster.step()                                   # the source is computed on small again
    small.finish_running()
    cluster.run()
    assert source_id in small.computed
    again = cluster.add_worker(cpus=2)
    small.auto_run = True
    cluster.run()
    assert wide_id in again.computed
    assert cluster.gather([wide_id]) == [b"a"]


def test_a_finished_report_crossing_its_cancel_keeps_the_copy_a_consumer_may_read():
    """A worker cut off from the broker re-attaches with a result the broker had started
    to compute again elsewhere: that run is canceled, but it finished first and its
    report crossed the cancel. The broker used to delete that copy (RemoveData), while
    a task placed there could already be queued on it: the worker crashed with a
    KeyError starting it (tests/integration/test_network_cut.py, under load). A copy
    of a finished task's data is kept as one more holder."""
    cluster = Cluster(workers=2, cpus=1, auto_run=False)
    [x_id] = cluster.client.submit([tasks.const("x")])
    cluster.run()
    [holder] = [w for w in cluster.workers if w.running]
    [other] = [w for w in cluster.workers if w is not holder]
    holder.finish_running()
    cluster.run()
    cluster.kill(holder)                       # its connection drops: x computed again...
    cluster.run()
    assert [t.id for t in other.running] == [x_id]
    _rejoin(cluster, holder)                   # ...and it is back with x: that run is canceled
    other.finish_running()                     # but it finished, and reports so, first
    cluster.run()
    assert not [ids for ids, in cluster.messages_named("RemoveData", receiver=other.identity)
                if x_id in ids]
    assert x_id in other.core.store
    assert other.identity in [w.identity for w in cluster.broker.tasks[x_id].holders]
    assert cluster.gather([x_id]) == [b"x"]
