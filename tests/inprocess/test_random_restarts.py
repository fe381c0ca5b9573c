"""Random plans through broker restarts from the journal, worker deaths and
retirements, seeded.

The broker core "crashes" at random steps: its journal (appended to a file, then
replayed into a fresh core and compacted, as ``loom-broker --journal`` does) is all
that survives. Workers die, or retire (hand over their work and data and leave, as at
the end of a batch job), now and then; the client lets go of some results. While
the broker is down some workers die; the others re-attach as real workers do
(``WorkerCore.rejoining``: data kept, started tasks kept and reported later), before
the re-attach timeout or after it; the client resumes its session. Every journal
record must apply on replay, every result must be right, ``check_invariants`` holds
after every step, and nobody gets a message it does not expect.

This is the in-memory twin of the broker-kill chaos test
(tests/integration/test_chaos.py), which found a restart crash (a task queued twice,
lifecycle.py ``requeue_ready``) that no in-memory test reached before. Over 2,000
seeds it found: copies taken for lost on replay (journal.py, LOST), records that no
longer applied after compaction (restore.py, ``_replay_finished``), the scheduler
weighing a retiring holder it does not place on (a crash: scheduler.py, ``_Room.has``),
a removal held back past an order giving the same data to the same worker again
(recovery.py, ``_void_removals``), with failing tasks in the plans: compaction
replaying another error than the client was told (compaction.py), and removals
addressed to workers not back yet (lifecycle.py, ``_remove_data``).
"""

import random
import struct

import pytest

from hyperloom import protocol
from hyperloom.broker import journal as jn
from hyperloom.broker.state import BrokerState
from hyperloom.client import tasks

from .harness import Cluster, SimWorker
from .test_random_losses import queued_plan, random_dynamic_plan, random_plan


FAILS = object()   # the expected outcome of a result with a failing task in its lineage


def failing_plan(rng):
    """Consts and merges, a few leaves opening a file that does not exist (they fail,
    and so does every merge reading them); with the outcomes expected."""
    nodes = []
    for i in range(rng.randint(3, 12)):
        if rng.random() < 0.2:
            nodes.append((tasks.open(f"/nonexistent/loom-{i}"), FAILS))
        else:
            nodes.append((tasks.const(f"<{i}>"), f"<{i}>".encode()))
    for _ in range(rng.randint(5, 30)):
        picked = rng.sample(nodes, rng.randint(1, 3))
        task = tasks.merge([task for task, _ in picked])
        if rng.random() < 0.5:
            task.resource_request = tasks.cpus(1)
        values = [value for _, value in picked]
        nodes.append((task, FAILS if FAILS in values else b"".join(values)))
    results = rng.sample(nodes, min(6, len(nodes)))
    return [task for task, _ in results], [value for _, value in results]


def _broker():
    return BrokerState(journal=jn.JournalRecorder(), heartbeat_timeout=5.0, max_task_losses=10)


def _rejoin(cluster, old: SimWorker) -> SimWorker:
    """``old``'s process re-attaches to the restarted broker, as hyperloom/worker does."""
    worker = SimWorker(cluster, len(cluster.workers), old.cpus, None, auto_run=False)
    worker.identity = b"rejoined-%d-%d" % (old.core.worker_id, len(cluster.workers))
    worker.address = old.address
    worker.core, held, running = old.core.rejoining()
    worker.running = [task for task in old.running if task.id in worker.core.tasks]
    worker.inputs = old.inputs
    worker.incoming = old.incoming      # pushes in flight still arrive
    cluster.workers.append(worker)
    cluster.ever.add(worker.identity)
    worker.send(protocol.encode(protocol.REJOIN_WORKER, protocol.PROTOCOL_VERSION, old.cpus,
                                worker.address, worker.task_types, "sim-host",
                                old.core.worker_id, held, running))
    return worker


def _restart(cluster, path, rng, resume_clients):
    """The broker dies; a new one replays the journal; workers come back, and the
    clients (``resume_clients(new cluster)``)."""
    with open(path, "ab") as file:
        file.write(cluster.broker.journal.take())
    contents = jn.read_journal(path)
    assert contents.problem is None
    core = _broker()
    assert core.replay(contents.records) == 0
    jn.write_journal(path, core.compact_records())
    core.reattach_timeout = rng.choice([0.0, 5.0])
    # its first round: with a timeout of 0 s, the ghosts are lost
    again = Cluster(workers=0, broker=core, name=f"{cluster.name}r", client=False)
    survivors = [w for w in cluster.live_workers() if rng.random() < 0.8]
    for old in survivors:
        _rejoin(again, old)
        if rng.random() < 0.3:
            again.run()
    if not survivors or rng.random() < 0.3:
        again.add_worker(cpus=rng.choice([1, 2]), auto_run=False)
    resume_clients(again)
    again.run()
    if core.restoring:
        again.advance(6.0)                    # the ones that did not come back are lost
    return again


def _resume_one(client, ids, released):
    """How ``client`` resumes in a restarted cluster: waiting on what it has not seen end."""
    def resume(again):
        again.resume_client(client.session,
                            [i for i in ids if i not in client.finished and i not in released],
                            identity=b"resumed-%d" % len(again.workers))
    return resume


def _run_with_restarts(cluster, path, rng, ids, released, rounds=800, max_restarts=2,
                       max_losses=2, max_retirements=2):
    """Random steps until every result in ``ids`` finished or was released (the client
    lets go of some on the way: ``released``, filled here); returns the cluster and
    how many restarts there were."""
    restarts = losses = retirements = 0
    finished = set()
    first_restart = rng.randint(0, 5)      # every seed restarts at least once
    for step in range(rounds):
        cluster.run()
        finished |= cluster.client.finished
        if all(i in finished or i in released for i in ids) and restarts:
            break
        roll = rng.random()
        if restarts < max_restarts and (roll < 0.04 or step == first_restart):
            cluster = _restart(cluster, path, rng, _resume_one(cluster.client, ids, released))
            restarts += 1
        elif losses < max_losses and roll < 0.07 and len(cluster.live_workers()) > 1:
            cluster.kill(rng.choice(cluster.live_workers()))
            cluster.add_worker(cpus=rng.choice([1, 2]), auto_run=False)
            losses += 1
        elif roll < 0.1 and len(cluster.live_workers()) < 6:
            cluster.add_worker(cpus=1, auto_run=False)
        elif roll < 0.125 and len(released) < len(ids) - 1:
            # the client lets go of a result, finished or not (its lineage is canceled)
            task_id = rng.choice([i for i in ids if i not in released])
            cluster.client.release([task_id])
            released.add(task_id)
        elif roll < 0.14 and retirements < max_retirements:
            # its batch job ends: it hands over its work and data, then leaves
            rng.choice(cluster.live_workers()).send(protocol.encode(protocol.RETIRING))
            cluster.add_worker(cpus=rng.choice([1, 2]), auto_run=False)
            retirements += 1
        else:
            rng.choice(cluster.live_workers()).finish_running(rng.randint(1, 3))
    for worker in cluster.live_workers():
        worker.auto_run = True
        worker.finish_running()
    cluster.run()
    return cluster, restarts


def new_journal(tmp_path) -> str:
    """An empty journal file (its header only), as ``loom-broker --journal`` starts one."""
    path = str(tmp_path / "broker.journal")
    with open(path, "wb") as file:
        file.write(jn.header_bytes())
    return path


def any_plan(rng, most_leaves=15, most_merges=40):
    """One of the random plans (queued core tasks, dynamic, failing, merges)."""
    roll = rng.random()
    if roll < 0.3:
        return queued_plan(rng)
    if roll < 0.5:
        return random_dynamic_plan(rng)
    if roll < 0.75:
        return failing_plan(rng)
    return random_plan(rng, rng.randint(3, most_leaves), rng.randint(5, most_merges))


@pytest.mark.parametrize("seed", range(100))
def test_results_survive_random_broker_restarts(seed, tmp_path):
    rng = random.Random(seed)
    path = new_journal(tmp_path)
    cluster = Cluster(workers=2, cpus=rng.choice([1, 2]), auto_run=False, broker=_broker())
    plan, expected = any_plan(rng)
    ids = cluster.client.submit(plan)
    released = set()
    cluster, restarts = _run_with_restarts(cluster, path, rng, ids, released)
    assert restarts >= 1
    kept = [(i, want) for i, want in zip(ids, expected) if i not in released]
    request = cluster.client.fetch([i for i, _ in kept], release=True)
    cluster.run()
    replies = cluster.client.replies[request]
    for task_id, want in kept:
        check_outcome(want, *replies[task_id])
    assert cluster.broker.tasks == {}


def check_outcome(want, value, error):
    """A fetched ``(value, error)`` against what the plan should give: ``FAILS``, a
    dslice's total length (int), or bytes."""
    if want is FAILS:
        assert error is not None and "No such file or directory" in error[-1], (value, error)
    elif isinstance(want, int):   # dslice: the pieces' lengths add up to the array's
        assert sum(struct.unpack("<Q", item)[0] for item in value) == want
    else:
        assert (value, error) == (want, None)
