"""Several clients of one journaled broker, at random, seeded: each submits a plan,
then more plans that read its earlier results (Futures as inputs); connections drop
and come back (sessions resumed), clients say goodbye or vanish (their sessions
expire), while the broker restarts from its journal, workers die, join and retire.
Clients keep their plans until ``Accepted`` with the real client's ``SentPlans`` and
send again what the broker lacks when they resume; a plan is now and then in flight
(some or none of its chunks arrived) when the connection drops or the broker dies, or
taken in whole (journaled) with its Accepted not yet sent, or sent and lost with the
connection: the Accepted after Welcome must then cover it, and the client must not send
it again (a second copy is refused as "submitted twice", or computed twice).

What a user of a shared broker counts on: every client that stays gets the right
value or error for each result it kept, whatever the other clients and the cluster
did; one that left leaves nothing behind (``broker.tasks`` ends empty); the broker
never sends anything to a connection that dropped, every journal record applies on
replay, ``check_invariants`` holds after every step, and no plan is refused but those
made to be.
"""

import random

import pytest

from hyperloom import protocol
from hyperloom.broker.outbox import messages
from hyperloom.broker.sessions import ACCEPTED_DELAY
from hyperloom.client import tasks
from hyperloom.client.future import Future
from hyperloom.client.session import SentPlans

from .harness import Cluster, check_entries
from .test_random_restarts import FAILS, _broker, _restart, any_plan, check_outcome, new_journal


class User:
    """One client session through the run: its results and what they must be."""

    def __init__(self, name: bytes, client):
        self.name = name
        self.client = client          # the SimClient of its current connection
        self.expected = {}            # result id -> bytes, FAILS or a dslice's total length
        self.released = set()
        self.state = "attached"       # or "detached" (connection dropped), "gone"
        self.connections = 1
        self.plans = client.plans = SentPlans()   # not yet Accepted, as the client keeps them
        self.refused = client.refused = []        # SubmitRefused, through all its connections
        self.refusals_made = 0                    # of them, by _read_anothers_result
        # the chunk lists (in self.plans) of plans the broker took in whole before the
        # connection dropped or it died, their Accepted not received
        self.taken_in = []

    def kept(self):
        return [i for i in self.expected if i not in self.released]

    def submit(self, plan, expected, chunk=20000, arriving=None) -> int:
        """Submit ``plan``, kept until Accepted; only its first ``arriving`` chunks reach
        the broker (None: all), as when the connection drops after it was sent. Returns
        how many chunks it took."""
        first = self.client.next_id
        ids, headers = self.client.encode_plan(plan, chunk=chunk)
        self.plans.keep(first, self.client.next_id).extend(headers)
        for header in headers[:arriving]:
            self.client.send(header)
        for task_id, want in zip(ids, expected):
            self.expected[task_id] = want
        return len(headers)

    def identity(self) -> bytes:
        self.connections += 1
        return b"%s-%d" % (self.name, self.connections)


def _follow_up(user, rng, in_flight=False, chunked=False) -> bool:
    """A plan reading 1-3 of the user's kept results (bytes or failed) and consts;
    ``in_flight``: sent in chunks of which some or none reach the broker; ``chunked``:
    sent in chunks, all of which reach it."""
    usable = [i for i in user.kept() if user.expected[i] is FAILS
              or isinstance(user.expected[i], bytes)]
    if not usable:
        return False
    picked = rng.sample(usable, rng.randint(1, min(3, len(usable))))
    consts = rng.randint(1, 3)
    task = tasks.merge([Future(user.client, i) for i in picked]
                       + [tasks.const("+") for _ in range(consts)])
    if rng.random() < 0.4:
        task.resource_request = tasks.cpus(1)
    values = [user.expected[i] for i in picked]
    expected = [FAILS if FAILS in values else b"".join(values) + b"+" * consts]
    if in_flight:   # a chunk a task (the merge and its consts), not all of them arrive
        chunks = user.submit([task], expected, chunk=1, arriving=rng.randint(0, consts))
        assert chunks == consts + 1
    elif chunked:
        assert user.submit([task], expected, chunk=1) == consts + 1
    else:
        user.submit([task], expected)
    return True


def _read_anothers_result(cluster, user, other, rng):
    """A hand-made plan (the client API refuses it) reading another client's result:
    refused, naming the input, and nothing else changes."""
    stolen = rng.choice(other.kept())
    task_id = user.client.next_id
    user.client.next_id += 1
    user.client.send(protocol.encode(protocol.SUBMIT, [protocol.TASK_MERGE], [],
                                     [[task_id, 0, b"", [stolen], 0, True, -1, None]],
                                     False, False, []))
    before = len(user.client.refused)
    cluster.run()
    user.refusals_made += 1
    [(ids, message)] = user.client.refused[before:]
    assert ids == [task_id] and f"input id={stolen}" in message, message
    assert task_id not in cluster.broker.tasks


def _resume(cluster, user):
    """Its session resumed: Welcome and Accepted come, and it sends again, whole, the
    plans it kept that the broker's journal lacks, as the client does."""
    user.client = cluster.resume_client(user.client.session, user.kept(),
                                        identity=user.identity(), next_id=user.client.next_id,
                                        replaces=user.client,
                                        resend_from=user.plans.resend_from())
    user.client.plans = user.plans
    user.client.refused = user.refused
    user.state = "attached"
    cluster.run()
    assert user.client.accepted, "no Accepted after Welcome"
    resent = {id(chunks) for chunks in user.plans.unconfirmed()}
    assert not any(id(chunks) in resent for chunks in user.taken_in), \
        "a plan the broker took in is sent again: its Accepted after Welcome did not cover it"
    user.taken_in = []
    for chunks in user.plans.unconfirmed():
        for header in chunks:
            user.client.send(header)


def _resume_attached(users):
    def resume(again):
        for user in users:
            if user.state == "attached":
                _resume(again, user)
    return resume


def _before_the_drop(cluster, user, rng, lose_accepted=False):
    """What ``user`` sends just before its connection drops or its broker dies: nothing;
    or 1-2 plans the broker takes in whole (and journals: the in-process journal keeps
    every record) and answers with no Accepted yet, the broker maybe placing and running
    some of their tasks meanwhile or (``lose_accepted``) sending the Accepted, which the
    dropping connection loses; and/or, last, a plan of which only some chunks arrive."""
    roll = rng.random()
    if roll < 0.25:
        return
    if roll < 0.75:
        for _ in range(rng.randint(1, 2)):
            first = user.client.next_id
            if not _follow_up(user, rng, chunked=rng.random() < 0.5):
                break
            # taken in: its tasks are known, its plan kept by the user till Accepted
            assert any(first <= i < user.client.next_id for i in cluster.broker.tasks)
            user.taken_in.append(user.plans.unconfirmed()[-1])
        if user.taken_in:
            for _ in range(rng.randint(0, 2)):  # no time passes: no Accepted goes yet
                cluster.step()
                if rng.random() < 0.5:
                    rng.choice(cluster.live_workers()).finish_running(rng.randint(1, 3))
            if lose_accepted and rng.random() < 0.5:
                _accepted_lost(cluster, user)
            assert user.plans.unconfirmed()[-len(user.taken_in):] == user.taken_in
        if rng.random() < 0.5:
            return
    _follow_up(user, rng, in_flight=True)


def _accepted_lost(cluster, user):
    """Rounds (the clock moved on) until the broker sent ``user`` its Accepted, which, with
    whatever else went to it, the connection about to drop loses."""
    lost = []
    for _ in range(10):
        cluster.broker.on_drained(cluster.now)
        cluster.check()
        out = cluster.broker.outbox
        batch = list(messages(out))
        out.clear()
        for identity, frames in batch:
            code, fields = protocol.decode(frames[0])
            check_entries(code, fields)
            if identity == user.client.identity:
                lost.append(code)
            else:
                cluster.transcript.append((b"broker", identity, protocol.name_of(code), fields))
                cluster._deliver(identity, code, fields, frames)
        for worker in cluster.workers:
            worker.work()
        if protocol.ACCEPTED in lost:
            return
        cluster.now += ACCEPTED_DELAY
    raise AssertionError(f"no Accepted went to {user.client.identity!r}")


def _check_refusals(users):
    """Only the plans made to be refused are: a plan sent again that the broker had
    taken in is refused as submitted twice."""
    for user in users:
        assert len(user.refused) == user.refusals_made, user.refused


def _step(cluster, users, rng, path, budget):
    """One random event; returns the cluster (a new one after a restart)."""
    roll = rng.random()
    attached = [u for u in users if u.state == "attached"]
    detached = [u for u in users if u.state == "detached"]
    if budget["restarts"] and roll < 0.03:
        budget["restarts"] -= 1
        return _restart(cluster, path, rng, _resume_attached(users))
    if budget["losses"] and roll < 0.06 and len(cluster.live_workers()) > 1:
        budget["losses"] -= 1
        cluster.kill(rng.choice(cluster.live_workers()))
        cluster.add_worker(cpus=rng.choice([1, 2]), auto_run=False)
    elif budget["retirements"] and roll < 0.08:
        budget["retirements"] -= 1
        rng.choice(cluster.live_workers()).send(protocol.encode(protocol.RETIRING))
        cluster.add_worker(cpus=rng.choice([1, 2]), auto_run=False)
    elif roll < 0.14 and attached:
        _follow_up(rng.choice(attached), rng)
    elif roll < 0.17 and attached:
        user = rng.choice(attached)
        kept = user.kept()
        if len(kept) > 1:
            task_id = rng.choice(kept)
            user.client.release([task_id])
            user.released.add(task_id)
    elif roll < 0.18 and attached and len(users) > 1:
        user = rng.choice(attached)
        others = [u for u in users if u is not user and u.state != "gone" and u.kept()]
        if others:
            _read_anothers_result(cluster, user, rng.choice(others), rng)
    elif roll < 0.20 and attached:
        user = rng.choice(attached)             # its connection drops
        _before_the_drop(cluster, user, rng, lose_accepted=True)   # with plans on their way
        cluster.disconnect(user.client)
        user.state = "detached"
    elif roll < 0.21 and attached and budget["restarts"]:
        budget["restarts"] -= 1                 # the broker dies with plans on their way
        _before_the_drop(cluster, rng.choice(attached), rng)
        return _restart(cluster, path, rng, _resume_attached(users))
    elif roll < 0.24 and detached:
        _resume(cluster, rng.choice(detached))  # and comes back
    elif budget["departures"] and roll < 0.27 and len(attached) > 1:
        budget["departures"] -= 1
        user = rng.choice(attached)             # it is done: Goodbye
        user.client.send(protocol.encode(protocol.GOODBYE))
        user.client.connected = False
        user.state = "gone"
    elif budget["departures"] and roll < 0.29 and detached:
        budget["departures"] -= 1
        rng.choice(detached).state = "gone"     # it never comes back: its session expires
    else:
        rng.choice(cluster.live_workers()).finish_running(rng.randint(1, 3))
    return cluster


def _check_values(user, replies):
    for task_id in user.kept():
        check_outcome(user.expected[task_id], *replies[task_id])


@pytest.mark.parametrize("seed", range(60))
def test_clients_of_one_broker_keep_their_results_whatever_the_others_do(seed, tmp_path):
    rng = random.Random(seed)
    path = new_journal(tmp_path)
    cluster = Cluster(workers=2, cpus=rng.choice([1, 2]), auto_run=False, broker=_broker())
    users = [User(b"u0", cluster.client)]
    for n in range(1, rng.randint(2, 3)):
        users.append(User(b"u%d" % n, cluster.add_client(b"u%d" % n)))
    cluster.run()
    for user in users:
        user.submit(*any_plan(rng, most_leaves=10, most_merges=25))
    budget = {"restarts": rng.randint(0, 2), "losses": 2, "retirements": 2, "departures": 1}
    for _ in range(rng.randint(50, 300)):
        cluster.run()
        cluster = _step(cluster, users, rng, path, budget)
        _check_refusals(users)
    for user in users:
        if user.state == "detached":
            if rng.random() < 0.7:
                _resume(cluster, user)
            else:
                user.state = "gone"
    for worker in cluster.live_workers():
        worker.auto_run = True
        worker.finish_running()
    cluster.run()
    # the gone expire: a session restored from the journal is kept for session_timeout
    # from the restored broker's first tick (its first advance step)
    cluster.advance(cluster.broker.session_timeout + 20.0, step=10.0)
    staying = [u for u in users if u.state == "attached"]
    requests = {user.name: user.client.fetch(user.kept(), release=True) for user in staying}
    cluster.run()
    for user in staying:
        _check_values(user, user.client.replies[requests[user.name]])
    _check_refusals(users)
    assert cluster.broker.tasks == {}
    assert cluster.broker.sessions.keys() == {u.client.number for u in staying}
