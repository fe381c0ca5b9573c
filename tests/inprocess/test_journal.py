"""The journal, deterministically in memory: a core writes it, a fresh core replays it.

A plan runs part way on a broker core with a journal; its records go through
the file format (hyperloom/broker/journal.py) and are replayed into a fresh
core, which must agree with the first on every task (running tasks become
ready again); compaction must replay to the same state; workers and the
client re-attach to the restored core and the plan completes without
computing again what a worker still holds.
"""

import os
import struct

import pytest

from hyperloom import protocol
from hyperloom.broker import journal as jn
from hyperloom.broker import taskstate as ts
from hyperloom.broker.sessions import ACCEPTED_DELAY
from hyperloom.broker.state import BrokerState
from hyperloom.client import tasks
from hyperloom.client.future import Future
from hyperloom.worker.state import WorkerCore

from .harness import Cluster, SimClient, SimWorker


def _tree(width=16):
    """Consts merged pairwise up to one root; every level's first node is a result too."""
    level = [tasks.const(b"%d," % i) for i in range(width)]
    results = []
    while len(level) > 1:
        level = [tasks.merge((level[i], level[i + 1])) for i in range(0, len(level), 2)]
        results.append(level[0])
    return results


def _expected(width=16):
    return b"".join(b"%d," % i for i in range(width))


def _half_run(rounds=3):
    """A journaled cluster whose plan ran ``rounds`` task rounds and no more."""
    cluster = Cluster(workers=2, cpus=1, auto_run=False,
                      broker=BrokerState(journal=jn.JournalRecorder()))
    ids = cluster.client.submit(_tree())
    cluster.run()
    for _ in range(rounds):
        for worker in cluster.workers:
            worker.finish_running()
        cluster.run()
    return cluster, ids


def _through_file(tmp_path, data, name="journal"):
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as file:
        file.write(jn.header_bytes() + data)
    return path


def _restored(path):
    core = BrokerState(journal=jn.JournalRecorder())
    contents = jn.read_journal(path)
    assert contents.problem is None
    assert core.replay(contents.records) == 0
    core.check_invariants()
    return core


def _assert_same(original, restored):
    assert set(restored.tasks) == set(original.tasks)
    for task_id, node in original.tasks.items():
        again = restored.tasks[task_id]
        expected = ts.READY if node.state == ts.ASSIGNED else node.state
        assert again.state == expected, (node, again)
        assert again.refs == node.refs and again.is_result == node.is_result
        if node.state == ts.WAITING:
            assert again.remaining == node.remaining
        if node.state == ts.FINISHED:
            assert again.holders[0].worker_id in {w.worker_id for w in node.holders}
            assert (again.size, again.length) == (node.size, node.length)
    for number, client in restored.sessions.items():
        [before] = [c for c in original.clients.values() if c.number == number]
        assert (client.n_done, client.n_total) == (before.n_done, before.n_total)
        assert client.results == before.results
    assert restored.next_worker_id == original.next_worker_id
    assert restored.next_client_number == original.next_client_number


def test_replay_rebuilds_the_dag_and_running_tasks_are_ready_again(tmp_path):
    cluster, ids = _half_run()
    cluster.client.release(ids[:1])          # a released result stays released
    cluster.run()
    original = cluster.broker
    counts = original.state_counts
    assert counts[ts.FINISHED] and counts[ts.ASSIGNED] and counts[ts.WAITING]
    restored = _restored(_through_file(tmp_path, original.journal.take()))
    _assert_same(original, restored)
    assert ids[0] not in restored.tasks
    # it waits for the workers whose data it expects, and only for those
    holders = {n.holders[0].worker_id for n in restored.tasks.values() if n.holders}
    assert restored.restoring and set(restored.detached_workers) == holders != set()


def test_compaction_replays_to_the_same_state_and_is_smaller(tmp_path):
    cluster, ids = _half_run(rounds=4)
    cluster.client.release(ids[:2])
    cluster.run()
    full = cluster.broker.journal.take()
    restored = _restored(_through_file(tmp_path, full))
    compacted = os.path.join(tmp_path, "compacted")
    size = jn.write_journal(compacted, restored.compact_records())
    again = _restored(compacted)
    _assert_same(cluster.broker, again)
    assert size <= len(full) + jn.HEADER.size


def test_a_torn_tail_is_dropped_and_the_rest_replays(tmp_path):
    cluster, _ = _half_run()
    data = cluster.broker.journal.take()
    path = _through_file(tmp_path, data[:-5])           # the last record is cut
    contents = jn.read_journal(path)
    assert "cut off" in contents.problem and contents.dropped_bytes > 0
    core = BrokerState(journal=jn.JournalRecorder())
    core.replay(contents.records)
    core.check_invariants()
    corrupt = bytearray(jn.header_bytes() + data)
    corrupt[-3] ^= 0xFF                                  # a flipped bit in the last record
    path = _through_file(tmp_path, b"", name="corrupt")
    with open(path, "wb") as file:
        file.write(corrupt)
    contents = jn.read_journal(path)
    assert "checksum" in contents.problem
    assert len(contents.records) == len(jn.read_journal(_through_file(tmp_path, data,
                                                                      "whole")).records) - 1


def test_a_journal_of_another_version_is_refused(tmp_path):
    path = os.path.join(tmp_path, "old")
    with open(path, "wb") as file:
        file.write(jn.HEADER.pack(jn.MAGIC, jn.JOURNAL_VERSION + 1, protocol.PROTOCOL_VERSION))
    with pytest.raises(jn.JournalError, match="another hyperloom"):
        jn.read_journal(path)
    with open(path, "wb") as file:
        file.write(b"something else entirely")
    with pytest.raises(jn.JournalError, match="not a hyperloom journal"):
        jn.read_journal(path)


def _rejoin(cluster, old: SimWorker) -> SimWorker:
    """``old``'s process re-attaches to the restored broker with the data it holds."""
    worker = SimWorker(cluster, len(cluster.workers), old.cpus, None, auto_run=True)
    worker.identity = b"rejoined-%d" % old.core.worker_id
    worker.address = old.address
    worker.core = WorkerCore(old.cpus)
    worker.core.store = dict(old.core.store)     # its queued tasks are dropped, data kept
    cluster.workers.append(worker)
    held = [[i, obj.size, obj.length] for i, obj in sorted(worker.core.store.items())]
    worker.send(protocol.encode(protocol.REJOIN_WORKER, protocol.PROTOCOL_VERSION, old.cpus,
                                worker.address, worker.task_types, "sim-host",
                                old.core.worker_id, held, []))
    cluster.step()   # the broker's round after the message, then its sends
    return worker


def test_workers_and_the_client_reattach_and_nothing_held_is_computed_again(tmp_path):
    cluster, ids = _half_run()
    original = cluster.broker
    finished_before = {i for i, n in original.tasks.items() if n.state == ts.FINISHED}
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, original.journal.take()))
    again = Cluster(workers=0, broker=restored)
    for old in cluster.workers:
        _rejoin(again, old)
    assert restored.workers and not restored.detached_workers
    client = again.resume_client((number, token), ids)
    again.run()
    assert set(ids) <= client.finished
    values = again.gather(ids)
    assert values[-1] == _expected()
    computed = set().union(*(w.computed for w in again.workers))
    assert not computed & finished_before
    assert restored.stats()["journal"]["recomputed"] == 0


def test_a_worker_that_does_not_come_back_is_recomputed_after_the_timeout(tmp_path):
    cluster, ids = _half_run()
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    restored.reattach_timeout = 5.0
    again = Cluster(workers=0, broker=restored)
    dead = next(w for w in cluster.workers if w.core.worker_id in restored.detached_workers)
    for old in cluster.workers:
        if old is not dead:                      # it died while the broker was down
            _rejoin(again, old)
    again.run()
    assert restored.restoring                    # still waiting for the second
    again.advance(6.0)
    assert not restored.restoring and not restored.detached_workers
    again.resume_client((number, token), ids)
    again.run()
    assert again.gather(ids)[-1] == _expected()
    assert restored.stats()["journal"]["recomputed"] > 0   # what the dead worker held


def test_an_unknown_session_is_refused_clearly(tmp_path):
    restored = BrokerState(journal=jn.JournalRecorder())
    cluster = Cluster(workers=1, broker=restored)
    cluster.expect_errors = True
    stranger = SimClient(cluster, b"stranger")
    cluster.ever.add(b"stranger")
    cluster.client = stranger
    stranger.send(protocol.encode(protocol.RESUME_CLIENT, protocol.PROTOCOL_VERSION, 7,
                                  b"x" * 16, [], -1))
    cluster.flush()
    assert stranger.errors and "session 7 is not known to this broker" in stranger.errors[0]


def test_releases_and_finishes_batched_in_one_round_replay_to_the_same_state(tmp_path):
    """Finished and released ids of one round are written as two records (finished
    first): a result released while pending, which then finishes because a consumer
    still needs it, and results gathered (released) as they finish, replay alike."""
    cluster, ids = _half_run(rounds=1)
    pending = [i for i in ids if cluster.broker.tasks[i].state != ts.FINISHED]
    cluster.client.release(pending[:1])          # still needed by the next level up
    cluster.run()
    cluster.client.fetch(ids[1:3], release=True)  # served (and released) as they finish
    for _ in range(2):
        for worker in cluster.workers:
            worker.finish_running()
        cluster.run()
    original = cluster.broker
    restored = _restored(_through_file(tmp_path, original.journal.take()))
    _assert_same(original, restored)


def test_a_running_broker_compacts_to_what_replays_to_its_state(tmp_path):
    """Online compaction: the records a live core writes (tasks running, data on live
    workers, a released result) replay to the same state."""
    cluster, ids = _half_run(rounds=2)
    cluster.client.release(ids[:1])
    cluster.run()
    path = os.path.join(tmp_path, "online")
    jn.write_journal(path, cluster.broker.compact_records())
    _assert_same(cluster.broker, _restored(path))


def test_dslice_and_dget_expansions_replay_to_the_same_tasks(tmp_path):
    """Pieces depend on the cores there were: the journal records them, so the restored
    broker knows the pieces (ids, slices) the workers hold, and compaction keeps them."""
    cluster = Cluster(workers=2, cpus=1, auto_run=False,
                      broker=BrokerState(journal=jn.JournalRecorder()))
    array = tasks.array_make([tasks.const(str(i)) for i in range(20)])
    letters = tasks.array_make([tasks.const(c) for c in "abcde"])
    ids = cluster.client.submit([tasks.length(tasks.dslice(array)),
                                 tasks.merge((tasks.dget(letters), tasks.const("!")))])
    for _ in range(4):
        for worker in cluster.workers:
            worker.finish_running()
        cluster.run()
    original = cluster.broker
    assert any(i & protocol.BROKER_ID_BASE for i in original.tasks)   # expanded already
    restored = _restored(_through_file(tmp_path, original.journal.take()))
    _assert_same(original, restored)
    compacted = os.path.join(tmp_path, "compacted")
    jn.write_journal(compacted, restored.compact_records())
    again = _restored(compacted)
    _assert_same(original, again)
    assert [c.next_broker_id for c in again.sessions.values()] == \
        [c.next_broker_id for c in original.clients.values()]
    # what the client's plans took: the broker's own ids (the pieces) do not count, or
    # a plan it never got would pass for one it has (Accepted)
    assert [c.accepted_until for c in again.sessions.values()] == [cluster.client.next_id]
    # the workers and the client re-attach to the restored broker; the plan completes
    number, token = cluster.client.session
    resumed = Cluster(workers=0, broker=restored)
    for old in cluster.workers:
        _rejoin(resumed, old)
    resumed.resume_client((number, token), ids)
    resumed.run()
    lengths, letters = resumed.gather(ids)
    assert sum(struct.unpack("<Q", item)[0] for item in lengths) == 20
    assert letters == [b"a!", b"b!", b"c!", b"d!", b"e!"]


def test_describe_counts_records_and_finished_tasks(tmp_path):
    cluster, _ = _half_run()
    finished = sum(1 for n in cluster.broker.tasks.values() if n.state == ts.FINISHED)
    released = cluster.broker.state_counts[ts.RELEASED]
    path = _through_file(tmp_path, cluster.broker.journal.take())
    summary = jn.describe(path)
    assert summary["finished_tasks"] == finished + released  # every finish is recorded
    assert summary["kinds"]["client"] == 1 and summary["kinds"]["worker"] == 2
    assert summary["problem"] is None and summary["dropped_bytes"] == 0


def test_workers_that_reattach_after_the_timeout_hand_back_their_data_once(tmp_path):
    """The broker-kill chaos test's crash: with the re-attach timeout passed, the
    ghosts' data was being recomputed (its consumers sent back to WAITING, their queue
    entries left behind) when the workers re-attached holding it; those consumers
    were READY again and queued twice, and the broker's next round crashed."""
    cluster, ids = _half_run(rounds=1)
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    restored.reattach_timeout = 0.0
    again = Cluster(workers=0, broker=restored)  # its first round gives up on the ghosts
    assert not restored.restoring and restored.stats()["journal"]["detached_workers"] == []
    for old in cluster.workers:
        _rejoin(again, old)
    again.resume_client((number, token), ids)
    again.run()
    assert again.gather(ids)[-1] == _expected()


def test_data_copied_before_its_worker_died_is_not_recomputed_after_a_restart(tmp_path):
    """The journal names only the worker that computed a task. The LOST record names a
    worker still holding each copy the lost worker had: without it, the restored
    broker took the copy for lost and computed it again."""
    cluster = Cluster(workers=1, cpus=1, broker=BrokerState(journal=jn.JournalRecorder()))
    source = tasks.const("a")
    wide = tasks._make(protocol.TASK_MERGE, [source], request=tasks.cpus(2))
    source_id, wide_id = cluster.client.submit([source, wide])
    cluster.run()                                # the source runs; nobody can run wide
    first = cluster.workers[0]
    big = cluster.add_worker(cpus=2)
    cluster.run()                                # the source is copied to the 2-cpu worker
    assert source_id in big.core.store and wide_id in big.core.store
    cluster.kill(first)                          # the copy remains: nothing to recompute
    cluster.run()
    assert [e[0] for [entries] in cluster.messages_named("ComputeTasks") for e in entries] \
        == [source_id, wide_id]
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    assert restored.tasks[source_id].state == ts.FINISHED
    assert [w.worker_id for w in restored.tasks[source_id].holders] == [big.core.worker_id]
    again = Cluster(workers=0, broker=restored, name="again-")
    _rejoin(again, big)
    again.resume_client((number, token), [source_id, wide_id])
    again.run()
    assert again.gather([source_id, wide_id]) == [b"a", b"a"]
    assert again.messages_named("ComputeTasks") == []
    assert restored.stats()["journal"]["recomputed"] == 0


def test_a_late_worker_hands_in_what_is_being_computed_again_elsewhere(tmp_path):
    """Past the re-attach timeout the ghosts' data is computed again; a worker that
    re-attaches holding some of it hands it in: taken as finished, the run elsewhere is
    canceled, and nothing the client waits for is lost on the way."""
    cluster, ids = _half_run(rounds=2)
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    restored.reattach_timeout = 0.0
    again = Cluster(workers=0, broker=restored, name="again-")
    fresh = again.add_worker(cpus=1, auto_run=False)
    again.run()                                  # the ghosts' data is placed on fresh:
    fresh.finish_running()                       # the consts first, then the merges
    again.run()
    placed = set(fresh.core.tasks)
    late = max(cluster.workers, key=lambda w: len(placed & set(w.core.store)))
    handed_in = placed & set(late.core.store)
    assert handed_in
    _rejoin(again, late)
    canceled = {i for [batch] in again.messages_named("CancelTasks", receiver=fresh.identity)
                for i in batch}
    assert canceled == handed_in
    again.resume_client((number, token), ids)
    fresh.auto_run = True
    fresh.finish_running()
    again.run()
    assert again.gather(ids)[-1] == _expected()


def test_compaction_keeps_the_error_each_failed_result_was_failed_with(tmp_path):
    """A result failed by one of two failing inputs: compaction wrote the failed roots
    only, in lineage order, so on replay the other root failed it first (another error
    than its client was told) and the record of the first no longer applied."""
    cluster = Cluster(workers=2, cpus=1, auto_run=False,
                      broker=BrokerState(journal=jn.JournalRecorder()))
    first, second = tasks.open("/nonexistent/first"), tasks.open("/nonexistent/second")
    first_id, both_id = cluster.client.submit([first, tasks.merge([first, second])])
    cluster.run()
    [runs_second] = [w for w in cluster.workers if first_id not in {t.id for t in w.running}]
    runs_second.finish_running()             # the second fails first: so does the merge
    cluster.run()
    for worker in cluster.workers:
        worker.finish_running()
    cluster.run()
    assert "second" in cluster.client.failed[both_id][-1]
    assert "first" in cluster.client.failed[first_id][-1]
    path = os.path.join(tmp_path, "compacted")
    jn.write_journal(path, cluster.broker.compact_records())
    restored = _restored(path)                   # every record applies
    for task_id in (first_id, both_id):
        assert restored.tasks[task_id].extra.error == cluster.broker.tasks[task_id].extra.error


def test_a_plan_reading_a_failed_result_replays_without_skipping_records(tmp_path):
    """A plan whose input had failed when it came fails at once, journaled as FAILED
    after its SUBMIT; replaying the SUBMIT failed it again, so the FAILED record did
    not apply, and ``loom-broker`` warned of records skipped in a sound journal
    (found by test_random_clients.py)."""
    cluster = Cluster(workers=1, cpus=1, broker=BrokerState(journal=jn.JournalRecorder()))
    [broken_id] = cluster.client.submit([tasks.open("/nonexistent/loom-input")])
    cluster.run()
    assert broken_id in cluster.client.failed
    # the client submits before it hears of the failure (a real client refuses a
    # future it knows failed): a Future of the failed result as an input
    [reader_id] = cluster.client.submit([tasks.merge([Future(cluster.client, broken_id)])])
    cluster.run()
    told = cluster.client.failed[reader_id]
    assert "No such file or directory" in told[-1]
    number, token = cluster.client.session
    path = _through_file(tmp_path, cluster.broker.journal.take())
    restored = _restored(path)                   # every record applies
    assert restored.tasks[reader_id].extra.error == told
    again = Cluster(workers=1, broker=restored, client=False)
    client = again.resume_client((number, token), [reader_id])
    again.run()
    assert client.failed[reader_id] == told


def test_data_released_while_its_holder_is_still_awaited_is_not_removed_from_nobody(tmp_path):
    """A worker back first hands in results it finished meanwhile; inputs they release
    were held by a worker not back yet: their RemoveData was addressed to its ghost
    (nobody: the invariants flag it). That worker is told when it comes back."""
    cluster, ids = _half_run(rounds=1)
    for worker in cluster.workers:
        worker.finish_running(report=False)      # finished while the broker is down
    number, token = cluster.client.session
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    restored.reattach_timeout = 5.0
    again = Cluster(workers=0, broker=restored, name="again-")
    first, second = cluster.workers
    _rejoin(again, first)
    again.run()
    assert restored.restoring                    # the second is still awaited
    back = _rejoin(again, second)
    again.run()
    assert again.messages_named("RemoveData", receiver=back.identity)  # told now
    again.resume_client((number, token), ids)
    for worker in again.workers:
        worker.auto_run = True
        worker.finish_running()
    again.run()
    assert again.gather(ids)[-1] == _expected()


def _chain_plan(length=12):
    """A chain of merges over consts: its result is every const's bytes, in order."""
    value = tasks.const(b"0,")
    for i in range(1, length):
        value = tasks.merge((value, tasks.const(b"%d," % i)))
    return [value], b"".join(b"%d," % i for i in range(length))


def test_a_plan_cut_by_a_dropped_connection_is_taken_in_once_when_sent_again(tmp_path):
    """The client's connection drops between two chunks of its plan: the broker drops
    the chunks it has (journaled as CUT), the resumed client's waiting ids of that plan
    are not failed, the plan sent again whole is taken in, and the journal replays to
    the same state (the cut chunks do not merge with the plan sent again)."""
    cluster = Cluster(workers=1, broker=BrokerState(journal=jn.JournalRecorder()))
    client = cluster.client
    before, _ = _chain_plan(3)
    first_ids = client.submit(before)
    cluster.run()                 # (with the clock to when the Accepted is due)
    assert client.accepted == [first_ids[-1] + 1]        # taken in: the ids below it
    plan, expected = _chain_plan()
    start = client.next_id
    roots, headers = client.encode_plan(plan, chunk=5)
    assert len(headers) > 2
    for header in headers[:2]:
        client.send(header)
    cluster.run()                 # (with the clock to when the Accepted is due)
    assert client.accepted == [first_ids[-1] + 1]        # nothing more until the last chunk
    cluster.disconnect(client)
    resumed = cluster.resume_client(client.session, [*first_ids, *roots],
                                    resend_from=start)
    cluster.run()
    assert resumed.accepted == [first_ids[-1] + 1]       # what the journal has: not this plan
    assert not resumed.failed                            # its plan comes again
    for header in headers:
        resumed.send(header)
    cluster.run()                 # (with the clock to when the Accepted is due)
    assert resumed.accepted[-1] == client.next_id
    assert not resumed.refused and not resumed.failed
    assert cluster.gather(roots) == [expected]
    original = cluster.broker
    restored = _restored(_through_file(tmp_path, original.journal.take()))
    _assert_same(original, restored)
    assert restored.sessions[client.number].accepted_until == client.next_id


def test_accepted_survives_compaction_and_only_plans_sent_again_are_spared(tmp_path):
    """After a restart from a compacted journal the broker still knows which plans it
    has: a resumed client's waiting ids from ``resend_from`` on that it does not know
    are left for the plan sent again; unknown ids below are failed, as before."""
    cluster = Cluster(workers=1, broker=BrokerState(journal=jn.JournalRecorder()))
    client = cluster.client
    plan, expected = _chain_plan()
    ids = client.submit(plan)
    cluster.run()
    cluster.client.release(ids)                       # finished, released: compacted away
    cluster.run()
    lost_plan, lost_expected = _chain_plan(5)
    start = client.next_id
    lost_ids, headers = client.encode_plan(lost_plan)  # "sent" as the broker died
    path = _through_file(tmp_path, cluster.broker.journal.take())
    core = _restored(path)
    jn.write_journal(path, core.compact_records())
    restored = _restored(path)
    assert not restored.tasks                          # the released plan is gone...
    assert restored.sessions[client.number].accepted_until == start   # ...but counted
    again = Cluster(workers=1, broker=restored, client=False)
    stranger_id = ids[0] - 1                           # below what it has, and unknown
    resumed = again.resume_client(client.session, [stranger_id, *lost_ids],
                                  resend_from=start)
    again.run()
    assert resumed.accepted == [start]
    assert list(resumed.failed) == [stranger_id]
    assert "does not know this task" in resumed.failed[stranger_id][2]
    for header in headers:
        resumed.send(header)
    again.run()
    assert again.gather(lost_ids) == [lost_expected]


def test_one_accepted_covers_the_plans_taken_in_while_it_waited():
    cluster = Cluster(workers=1, broker=BrokerState(journal=jn.JournalRecorder()))
    for _ in range(3):                                    # rounds, the clock standing still
        cluster.client.submit(_chain_plan(3)[0])
        for _ in range(5):
            cluster.step()
    assert cluster.client.accepted == []                  # not one per plan
    assert list(cluster.broker.accepted_owed.values()) == [ACCEPTED_DELAY]
    assert cluster.broker.due_at() <= ACCEPTED_DELAY      # the broker's loop wakes for it
    cluster.run()                                         # (the harness's clock goes there)
    assert cluster.client.accepted == [cluster.client.next_id]


def test_a_broker_without_a_journal_sends_no_accepted():
    cluster = Cluster(workers=1)
    ids = cluster.client.submit(_chain_plan()[0])
    cluster.run()
    assert ids[0] in cluster.client.finished and cluster.client.accepted == []


def test_an_abandoned_plan_is_dropped_and_the_next_one_starts_afresh(tmp_path):
    """A client that stops a submit between two chunks (a Ctrl-C) says AbandonPlan: the
    chunks the broker has are dropped (journaled as a cut), nothing of them is computed
    or confirmed, the next plan is taken in alone, and the journal replays to that."""
    cluster = Cluster(workers=1, broker=BrokerState(journal=jn.JournalRecorder()))
    client = cluster.client
    abandoned, _ = _chain_plan()
    _, headers = client.encode_plan(abandoned, chunk=5)
    assert len(headers) > 2
    for header in headers[:2]:
        client.send(header)
    cluster.run()
    client.send(protocol.encode(protocol.ABANDON_PLAN))
    cluster.run()
    client.send(protocol.encode(protocol.ABANDON_PLAN))   # none pending: ignored
    plan = [tasks.size(tasks.const(b"abcd"))]
    ids = client.submit(plan, chunk=1)
    cluster.run()
    assert not client.refused and not client.failed
    assert set(cluster.broker.tasks) == set(ids)          # none of the abandoned chunks
    assert client.accepted[-1] == client.next_id
    restored = _restored(_through_file(tmp_path, cluster.broker.journal.take()))
    _assert_same(cluster.broker, restored)
    assert cluster.gather(ids) == [(4).to_bytes(8, "little")]


def test_task_types_of_workers_gone_before_a_compaction_survive_the_restart(tmp_path):
    """A broker takes plans of every task type a worker ever provided; restarted from a
    compacted journal (which names only the workers it still waits for) it must too,
    or a plan its client sends again before the workers rejoin is refused."""
    cluster = Cluster(workers=1, broker=BrokerState(journal=jn.JournalRecorder()))
    custom = cluster.add_worker(task_types=["my/custom"])
    cluster.run()
    cluster.kill(custom)          # it held nothing: a compacted journal has no record of it
    cluster.run()
    assert "my/custom" in cluster.broker.provided_types
    path = _through_file(tmp_path, cluster.broker.journal.take())
    jn.write_journal(path, _restored(path).compact_records())
    restored = _restored(path)
    assert "my/custom" in restored.provided_types
