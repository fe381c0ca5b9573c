"""The broker core without sockets: feed events, read the outbox."""

import pytest

from hyperloom import protocol
from hyperloom.broker import taskstate as ts
from hyperloom.broker.state import BrokerState

CONST, MERGE, RUN = protocol.TASK_CONST, protocol.TASK_MERGE, protocol.TASK_RUN


class Harness:
    """A BrokerState with helpers to connect peers and submit plans."""

    def __init__(self):
        self.state = BrokerState()
        self.client = self.state.on_client_hello(b"client", protocol.PROTOCOL_VERSION, 0.0)
        self.base = self.client.number << protocol.CLIENT_SHIFT
        self.workers = []

    def add_worker(self, cpus=1, types=(CONST, MERGE, RUN)):
        identity = b"w%d" % len(self.workers)
        worker = self.state.on_worker_hello(identity, protocol.PROTOCOL_VERSION, cpus,
                                            f"tcp://w{len(self.workers)}:1", list(types), "h", 0.0)
        self.workers.append(worker)
        return worker

    def submit(self, *tasks):
        """tasks: (local id, type, inputs (local ids), n_cpus, is_result)."""
        symbols = [CONST, MERGE, RUN, "my/type"]
        entries = [[self.base + i, symbols.index(t), b"", [self.base + x for x in inputs], cpus,
                    result, -1, None] for i, t, inputs, cpus, result in tasks]
        self.state.on_submit(self.client, symbols, [], entries, False, False)

    def node(self, local):
        return self.state.tasks.get(self.base + local)

    def schedule(self):
        self.state.outbox.compute.clear()
        self.state.on_drained(0.0)
        out = self.state.outbox
        assigned = {w: [e[0] - self.base for e in entries] for w, entries in out.compute.items()}
        return assigned

    def finish(self, worker, *locals_, size=10):
        self.state.on_tasks_done(worker, [[self.base + x, size, 0] for x in locals_], [], 0.0)

    def fail(self, worker, local, message="boom"):
        self.state.on_tasks_done(worker, [], [[self.base + local, message]], 0.0)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.state.check_invariants()


def test_ready_tasks_spread_over_idle_workers(h):
    h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, True), (1, RUN, [], 1, True))
    assigned = h.schedule()
    assert sorted(len(v) for v in assigned.values()) == [1, 1]


def test_a_consumer_runs_where_its_larger_input_is(h):
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, False), (1, RUN, [], 1, False), (2, MERGE, [0, 1], 0, True))
    assigned = h.schedule()
    on_w1 = assigned[w1][0]
    h.finish(w1, on_w1, size=200)
    h.finish(w2, 1 - on_w1, size=100)
    h.state.outbox.clear()
    assert h.schedule() == {w1: [2]}
    # the smaller input is pushed from w2 to w1, worker to worker
    assert h.state.outbox.sends == {w2: {"tcp://w0:1": [h.base + 1 - on_w1]}}


def test_cores_are_never_oversubscribed_beyond_overbooking(h):
    w = h.add_worker(cpus=2)
    h.submit(*[(i, RUN, [], 1, True) for i in range(20)])
    assigned = h.schedule()
    assert len(assigned[w]) == 2 * h.state.overbooking
    assert w.cpus_used == 6


def test_task_needing_more_cores_than_any_worker_is_unplaceable(h):
    h.add_worker(cpus=2)
    h.submit((0, RUN, [], 4, True))
    assert h.schedule() == {}
    [entry] = h.state.stats()["unplaceable"]
    assert "needs 4 cpus" in entry["reason"]
    big = h.add_worker(cpus=4)
    assert h.schedule() == {big: [0]}


def test_finishing_makes_consumers_ready_and_frees_inputs(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, False), (1, MERGE, [0], 0, True))
    assert h.schedule() == {w: [0]}
    h.finish(w, 0)
    h.state.outbox.clear()
    assert h.schedule() == {w: [1]}
    h.finish(w, 1)
    assert h.node(0) is None                       # forgotten: nobody needs it
    assert h.state.outbox.remove[w] == [h.base + 0]  # and deleted on the worker
    assert h.state.outbox.finished[h.client] == [h.base + 1]


def test_release_of_a_finished_result_removes_its_data(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, True))
    h.schedule()
    h.finish(w, 0)
    h.state.outbox.clear()
    h.state.on_release(h.client, [h.base])
    assert h.node(0) is None and h.state.outbox.remove[w] == [h.base]
    assert h.state.stats()["n_data_objects"] == 0


def test_release_of_a_pending_result_cancels_its_whole_upstream(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, False), (1, MERGE, [0], 0, False), (2, MERGE, [1], 0, True))
    h.schedule()
    h.state.on_release(h.client, [h.base + 2])
    assert h.state.tasks == {}
    assert h.state.outbox.cancel[w] == [h.base]
    # the canceled task's late report is expected and its data removed
    h.state.outbox.clear()
    h.finish(w, 0)
    assert not h.state.outbox.errors and h.state.outbox.remove[w] == [h.base]


def test_failure_propagates_to_dependents_only(h):
    w = h.add_worker()
    h.submit((0, RUN, [], 1, False), (1, MERGE, [0], 0, True), (2, CONST, [], 0, True))
    h.schedule()
    h.fail(w, 0, "Program terminated with status 1")
    h.finish(w, 2)
    failed = h.state.outbox.failed[h.client]
    assert failed == [[h.base + 1, h.base + 0, "tcp://w0:1", "Program terminated with status 1"]]
    assert h.node(2).state == ts.FINISHED
    assert h.node(1).state == ts.FAILED
    h.state.on_release(h.client, [h.base + 1])
    assert h.node(0) is None and h.node(1) is None


def test_fetch_waits_for_the_task_then_uploads_from_its_holder(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, True))
    h.state.on_fetch(h.client, 7, [h.base], True)
    assert not h.state.outbox.uploads
    h.schedule()
    h.finish(w, 0)
    assert h.state.outbox.uploads == {(w, b"client", 7, False): [h.base]}
    assert h.node(0) is None  # fetched with release


def test_fetch_of_unknown_id_is_an_error_entry(h):
    h.state.on_fetch(h.client, 1, [h.base + 99], False)
    [[task_id, meta, message]] = h.state.outbox.data_errors[(b"client", 1)]
    assert meta is None and "Invalid id: 99" in message


def test_plan_with_unknown_type_is_refused_whole(h):
    h.add_worker()
    h.submit((0, CONST, [], 0, True), (1, "my/type", [0], 0, True))
    [(identity, ids, message)] = h.state.outbox.refused
    assert ids == [h.base, h.base + 1]
    assert "task id=1 has unknown task type 'my/type'" in message
    assert h.state.tasks == {}


def test_input_not_in_plan_is_refused(h):
    h.submit((0, MERGE, [5], 0, True))
    [(_, _, message)] = h.state.outbox.refused
    assert "task id=0 has input id=" in message and "not part of the plan" in message


def test_task_types_only_go_to_workers_that_provide_them(h):
    h.add_worker(types=(CONST,))  # a worker that cannot run the task
    special = h.add_worker(types=(CONST, "my/type"))
    h.submit(*[(i, "my/type", [], 0, True) for i in range(5)])
    assert h.schedule() == {special: [0, 1, 2, 3, 4]}


def test_worker_claiming_a_task_it_was_never_given_is_refused(h):
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, CONST, [], 0, True))
    assigned = h.schedule()
    other = w2 if w1 in assigned else w1
    h.finish(other, 0)
    [(identity, message, fatal)] = h.state.outbox.errors
    assert identity == other.identity and "never assigned" in message and not fatal
    assert h.node(0).state == ts.ASSIGNED


def test_lost_worker_running_tasks_are_rescheduled(h):
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, True))
    [victim] = h.schedule()
    h.state.outbox.clear()
    h.state.on_worker_lost(victim)
    survivor = w2 if victim is w1 else w1
    assert h.schedule() == {survivor: [0]}


def test_lost_data_is_recomputed_from_lineage(h):
    w1, w2 = h.add_worker(), h.add_worker()
    # 0 -> 1 -> 2 (result); 1 is held only on the worker that dies
    h.submit((0, CONST, [], 0, False), (1, MERGE, [0], 0, False), (2, MERGE, [1], 0, True))
    worker = next(iter(h.schedule()))
    h.finish(worker, 0)
    h.schedule()
    h.finish(worker, 1)
    assert h.node(0) is None       # 0 was forgotten once 1 finished
    h.state.outbox.clear()
    h.schedule()
    h.state.on_worker_lost(worker)  # 2 was assigned there too: everything is redone
    survivor = w2 if worker is w1 else w1
    assert h.schedule() == {survivor: [0]}
    h.finish(survivor, 0)
    assert h.schedule() == {survivor: [1]}
    h.finish(survivor, 1)
    h.schedule()
    h.finish(survivor, 2)
    assert h.node(2).state == ts.FINISHED


def test_task_lost_three_times_fails_with_a_clear_error(h):
    h.submit((0, RUN, [], 1, True))
    for _attempt in range(3):
        worker = h.add_worker()
        h.schedule()
        h.state.on_worker_lost(worker)
    [[_, _, _, message]] = h.state.outbox.failed[h.client]
    assert "Worker lost while running this task 3 times" in message


def test_client_loss_releases_everything(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, True), (1, RUN, [], 1, True))
    h.schedule()
    h.finish(w, 0)
    h.state.on_client_lost(h.client)
    assert h.state.tasks == {}


def test_illegal_transition_is_refused(h):
    h.submit((0, CONST, [], 0, True))
    with pytest.raises(ts.IllegalTransition):
        h.state.transition(h.node(0), ts.FINISHED)


def test_version_mismatch_gets_a_fatal_error():
    state = BrokerState()
    assert state.on_client_hello(b"x", protocol.PROTOCOL_VERSION + 1, 0.0) is None
    [(identity, message, fatal)] = state.outbox.errors
    assert fatal and "protocol version mismatch" in message


def test_long_chain_cancel_needs_no_deep_recursion(h):
    h.add_worker()
    n = 20000
    h.submit((0, CONST, [], 0, False), *[(i, MERGE, [i - 1], 0, False) for i in range(1, n)],
             (n, MERGE, [n - 1], 0, True))
    h.state.on_release(h.client, [h.base + n])
    assert h.state.tasks == {}


def test_idle_worker_steals_queued_tasks(h):
    busy = h.add_worker(cpus=1)
    h.submit(*[(i, RUN, [], 1, True) for i in range(3)])
    assert h.schedule() == {busy: [0, 1, 2]}     # overbooked: 1 runs, 2 queue
    idle = h.add_worker(cpus=1)
    h.schedule()
    asked = h.state.outbox.steal[busy]
    assert len(asked) == 1                        # one idle core: one task asked back
    h.state.on_tasks_stolen(busy, asked)
    assert h.schedule() == {idle: [asked[0] - h.base]}


def test_original_scheduler_expectations_two_single_core_workers(h):
    # reference §6.4: 2 x 1 cpu, two ready independent tasks -> one on each
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, True), (1, RUN, [], 1, True))
    assert set(h.schedule()) == {w1, w2}


def test_original_scheduler_expectations_cpu_requests(h):
    # a 5-cpu worker with ready {3-cpu, 4-cpu, 4-cpu, 0-cpu} runs a 4-cpu and the 0-cpu
    # task at once (what fits in its cores; overbooking only queues behind them)
    h.state.overbooking = 1
    w = h.add_worker(cpus=5)
    h.submit((0, RUN, [], 3, True), (1, RUN, [], 4, True), (2, RUN, [], 4, True),
             (3, RUN, [], 0, True))
    assigned = h.schedule()[w]
    cpus = sorted(h.node(i).n_cpus for i in assigned)
    assert sum(cpus) <= 5 and 0 in cpus and len(assigned) == 2


def test_transfer_from_a_worker_that_dies_is_ordered_again_or_recomputed(h):
    h.add_worker(), h.add_worker(), h.add_worker()
    # 0 on w1 (via locality), then 1 and 2 need it elsewhere
    h.submit((0, RUN, [], 1, False), (1, RUN, [0], 1, True))
    [source] = h.schedule()
    h.finish(source, 0)
    h.state.outbox.clear()
    # force the consumer elsewhere: the source is full
    source.cpus_used = source.cpus * h.state.overbooking
    [target] = h.schedule()
    source.cpus_used = 0
    assert target is not source and h.state.outbox.sends[source]
    h.state.outbox.clear()
    h.state.on_worker_lost(source)      # dies before pushing: the copy never arrives
    assert h.node(0).state == ts.WAITING or h.node(0).state == ts.READY
    # recomputed on the third worker (the consumer's is kept full), then delivered to
    # the waiting consumer's worker
    busy, target.cpus_used = target.cpus_used, target.cpus * h.state.overbooking
    [producer] = h.schedule()
    target.cpus_used = busy
    assert producer not in (source, target)
    h.finish(producer, 0)
    assert h.state.outbox.sends[producer] == {target.address: [h.base + 0]}
    h.finish(target, 1)
    assert h.node(1).state == ts.FINISHED
    assert not target.incoming


def test_fetch_sent_to_a_worker_that_dies_is_served_again(h):
    h.add_worker(), h.add_worker()
    h.submit((0, CONST, [], 0, True))
    [worker] = h.schedule()
    h.state.on_tasks_done(worker, [[h.base, 70000, 0]], [], 0.0)   # too big to send inline
    h.state.on_fetch(h.client, 3, [h.base], False)
    assert h.state.outbox.uploads == {(worker, b"client", 3, False): [h.base]}
    h.state.outbox.clear()
    h.state.on_worker_lost(worker)
    [again] = h.schedule()               # recomputed on the survivor
    h.state.on_tasks_done(again, [[h.base, 70000, 0]], [], 0.0)
    assert h.state.outbox.uploads == {(again, b"client", 3, False): [h.base]}


def test_a_chunked_plan_is_accepted_whole_or_refused_whole(h):
    symbols = [CONST, MERGE]
    first = [[h.base + 0, 0, b"", [], 0, False, -1, None]]
    second = [[h.base + 1, 1, b"", [h.base + 0], 0, True, -1, None]]
    h.state.on_submit(h.client, symbols, [], first, False, True)
    assert h.state.tasks == {}                       # nothing linked before the last chunk
    h.state.on_submit(h.client, [], [], second, False, False)
    assert h.node(1).remaining == 1 and h.node(0).state == ts.READY
    bad_first = [[h.base + 2, 5, b"", [], 0, True, -1, None]]   # invalid type index
    h.state.on_submit(h.client, [], [], bad_first, False, True)
    h.state.on_submit(h.client, [], [], [[h.base + 3, 0, b"", [], 0, True, -1, None]],
                      False, False)
    [(_, ids, message)] = h.state.outbox.refused
    assert ids == [h.base + 2, h.base + 3] and "invalid type index" in message
    assert h.node(2) is None and h.node(3) is None
    h.state.on_release(h.client, [h.base + 1])


def test_workers_finishing_core_tasks_quickly_may_queue_more(h):
    fast, slow = h.add_worker(cpus=1), h.add_worker(cpus=1)
    fast.n_core_finished = 2000          # 2000 core tasks in one second
    slow.n_core_finished = 1
    h.state.update_overbooking(1.0)
    assert fast.overbooking == 40        # 2000/s x 20 ms
    assert slow.overbooking == h.state.overbooking
    h.submit(*[(i, RUN, [], 1, True) for i in range(100)])
    assigned = h.schedule()
    assert len(assigned[fast]) == 40 and len(assigned[slow]) == 3


def test_big_input_waits_for_its_busy_holder_rather_than_moving(h):
    h.add_worker(cpus=1), h.add_worker(cpus=1)
    h.submit((0, RUN, [], 1, False), (1, RUN, [0], 1, True), (2, RUN, [], 1, True),
             (3, RUN, [], 1, True), (4, RUN, [], 1, True), (5, RUN, [], 1, True))
    first = h.schedule()
    holder = next(w for w, ids in first.items() if 0 in ids)
    h.finish(holder, 0, size=20 << 20)
    holder.overbooking = 2               # the holder is full: 2 tasks assigned to 1 core
    h.state.outbox.clear()
    # the other worker is busy too (overbooked): the 20 MiB input is not moved, task 1 waits
    assert 1 not in sum(h.schedule().values(), [])
    assert not h.state.outbox.sends
    # the holder frees a core: task 1 runs there, nothing crossed
    running_on_holder = [n for n in holder.assigned if n.n_cpus]
    h.finish(holder, running_on_holder[0].id - h.base)
    assert h.schedule() == {holder: [1]} and not h.state.outbox.sends


def test_small_input_prefers_an_idle_core_to_queueing_on_its_holder(h):
    w1, w2 = h.add_worker(cpus=1), h.add_worker(cpus=1)
    h.submit((0, CONST, [], 0, False), (1, RUN, [0], 1, True), (2, RUN, [0], 1, True))
    [holder] = h.schedule()
    h.finish(holder, 0, size=100)
    placed = h.schedule()
    assert set(placed) == {w1, w2}   # one each, though the input lives on one of them


def test_a_task_nobody_can_use_is_not_held(h):
    h.add_worker(cpus=1)
    # task 0 is neither a result nor an input, and needs more cores than any worker has
    h.submit((0, RUN, [], 64, False), (1, CONST, [], 0, True))
    assert h.node(0) is None and h.node(1) is not None


def test_progress_counts_a_recomputed_task_once(h):
    # Issue 11.5: a task recomputed after a worker loss was counted done twice (2/1).
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, CONST, [], 0, False), (1, MERGE, [0], 0, True))
    first = next(iter(h.schedule()))
    h.finish(first, 0)
    h.schedule()
    h.finish(first, 1)
    assert (h.client.n_done, h.client.n_total) == (2, 2)
    h.state.on_worker_lost(first)   # the result lived only there: computed again
    assert h.client.n_done < h.client.n_total
    survivor = w2 if first is w1 else w1
    for local in (0, 1):
        h.schedule()
        h.finish(survivor, local)
        assert h.client.n_done <= h.client.n_total
    assert h.node(1).state == ts.FINISHED
    assert (h.client.n_done, h.client.n_total) == (2, 2)


def _ordered_upload(h):
    """A finished result held on w1 and fetched by the client as request 7."""
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, CONST, [], 0, True), (1, CONST, [], 0, True))
    for worker, ids in h.schedule().items():
        h.finish(worker, *ids)
    holder = h.node(0).holders[0]
    h.state.outbox.clear()
    h.state.on_fetch(h.client, 7, [h.base], False)
    assert h.state.outbox.uploads == {(holder, b"client", 7, False): [h.base]}
    h.state.outbox.clear()
    return holder, (w2 if holder is w1 else w1)


def _relayed(h):
    """Data messages the broker would send to clients."""
    return [entry for kind, entry in h.state.outbox.notices
            if kind == "reply" and protocol.decode(entry[1])[0] == protocol.DATA]


def _errors_to(h, worker):
    return [message for identity, message, fatal in h.state.outbox.errors
            if identity == worker.identity]


def test_an_ordered_upload_is_relayed_to_the_client_that_asked(h):
    holder, _ = _ordered_upload(h)
    h.state.on_uploaded(holder, b"client", 7, [[h.base, [0]]], None, [b"payload"])
    [(identity, header, frame)] = _relayed(h)
    assert identity == b"client" and frame == b"payload"
    assert protocol.decode(header) == (protocol.DATA, [7, [[h.base, [0]]], None])
    assert not holder.uploads


def test_an_upload_nobody_ordered_is_refused_not_relayed(h):
    # Issue 11.6: the broker relayed any Uploaded to whatever identity a worker named.
    holder, other = _ordered_upload(h)
    other_worker_identity = other.identity
    h.state.on_uploaded(other, b"client", 7, [[h.base, [0]]], None, [b"forged"])
    h.state.on_uploaded(holder, other_worker_identity, 7, [[h.base, [0]]], None, [b"to a worker"])
    h.state.on_uploaded(holder, b"client", 8, [[h.base, [0]]], None, [b"wrong request"])
    h.state.on_uploaded(holder, b"client", 7, [[h.base + 1, [0]]], None, [b"an id not asked for"])
    h.state.on_uploaded(holder, b"client", 7, [], None, [])
    assert _relayed(h) == []
    assert len(_errors_to(h, other)) == 1 and len(_errors_to(h, holder)) == 4
    assert all("answers no Upload" in m for m in _errors_to(h, holder))
    # the genuine answer still goes through afterwards
    h.state.on_uploaded(holder, b"client", 7, [[h.base, [0]]], None, [b"payload"])
    assert len(_relayed(h)) == 1


def test_a_client_that_reads_lanes_gets_the_holders_offer_relayed_and_nothing_malformed(h):
    holder, _ = _ordered_upload(h)
    h.state.on_fetch(h.client, 8, [h.base], False, True)       # lane=True
    assert h.state.outbox.uploads == {(holder, b"client", 8, True): [h.base]}
    h.state.outbox.clear()
    for bad in (["tcp://w0:9", b"t" * 16], ["tcp://w0:9", "token", [5]],
                ["tcp://w0:9", b"t" * 16, [-1]]):
        h.state.on_uploaded(holder, b"client", 8, [[h.base, [0]]], bad, [])
    h.state.on_uploaded(holder, b"client", 8, [[h.base, [0]]], ["tcp://w0:9", b"t" * 16, [5]],
                        [b"frames beside an offer"])
    assert _relayed(h) == [] and len(_errors_to(h, holder)) == 4
    assert all("malformed offer" in m for m in _errors_to(h, holder))
    offer = ["tcp://w0:9", b"t" * 16, [5]]
    h.state.on_uploaded(holder, b"client", 8, [[h.base, [0]]], offer, [])
    [(identity, header)] = _relayed(h)
    assert protocol.decode(header) == (protocol.DATA, [8, [[h.base, [0]]], offer])


def test_an_upload_answered_in_two_parts_is_relayed_twice_then_refused(h):
    w = h.add_worker()
    h.submit((0, RUN, [], 1, True), (1, RUN, [], 1, True))
    h.state.on_fetch(h.client, 3, [h.base, h.base + 1], False)
    h.schedule()
    h.finish(w, 0)
    h.finish(w, 1)  # two Upload orders of the same request
    assert w.uploads == {(b"client", 3): [h.base, h.base + 1]}
    h.state.on_uploaded(w, b"client", 3, [[h.base, [0]]], None, [b"a"])
    h.state.on_uploaded(w, b"client", 3, [[h.base + 1, [0]]], None, [b"b"])
    assert len(_relayed(h)) == 2 and not w.uploads
    h.state.on_uploaded(w, b"client", 3, [[h.base + 1, [0]]], None, [b"b again"])
    assert len(_relayed(h)) == 2 and len(_errors_to(h, w)) == 1


def test_every_batch_entry_the_broker_sends_has_its_protocol_record(h):
    # The wire contract (issue 12.5): what the core puts into its batches is held to the
    # record types docs/protocol.md is generated from.
    w1, w2 = h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, False), (1, RUN, [], 1, False), (2, MERGE, [0, 1], 0, True),
             (3, RUN, [], 1, True))
    h.state.on_fetch(h.client, 1, [h.base + 2, h.base + 99], False)  # 99: an invalid id
    seen = {"compute": 0, "sends": 0, "failed": 0, "data_errors": 0}
    for _ in range(4):
        h.schedule()
        out = h.state.outbox
        for entries in out.compute.values():
            for entry in entries:
                protocol.check_entry(protocol.ComputeTask, entry)
                seen["compute"] += 1
        for targets in out.sends.values():
            for address, ids in targets.items():
                protocol.check_entry(protocol.DataSend, [address, ids])
                seen["sends"] += 1
        for failures in out.failed.values():
            for entry in failures:
                protocol.check_entry(protocol.TaskFailure, entry)
                seen["failed"] += 1
        for entries in out.data_errors.values():
            for entry in entries:
                protocol.check_entry(protocol.DataEntry, entry)
                seen["data_errors"] += 1
        out.clear()
        for worker in (w1, w2):
            running = [n.id - h.base for n in worker.assigned]
            for local in running:
                if local == 3:
                    h.fail(worker, 3)
                else:
                    h.finish(worker, local)
    assert all(seen.values()), seen


def test_check_invariants_flags_data_held_by_a_worker_that_is_not_live():
    h = Harness()
    w = h.add_worker()
    h.submit((0, CONST, [], 0, True))
    h.schedule()
    h.finish(w, 0)
    h.state.check_invariants()
    del h.state.workers[w.identity]      # a loss whose bookkeeping forgot the holders
    del h.state.peers[w.identity]
    with pytest.raises(AssertionError, match="not a live worker"):
        h.state.check_invariants()


def test_check_invariants_flags_more_tasks_done_than_submitted():
    h = Harness()
    h.submit((0, CONST, [], 0, True))
    h.client.n_done = h.client.n_total + 1
    with pytest.raises(AssertionError, match="2 done of 1"):
        h.state.check_invariants()


def test_state_counts_change_only_in_transition_and_match_the_dag(h):
    w = h.add_worker()
    h.submit((0, CONST, [], 0, False), (1, MERGE, [0], 0, True))
    counts = h.state.state_counts
    assert (counts[ts.WAITING], counts[ts.READY]) == (1, 1)
    h.schedule()
    h.finish(w, 0)
    h.schedule()
    h.finish(w, 1)                       # 0 is forgotten: RELEASED, out of the DAG
    counts = h.state.state_counts
    assert counts[ts.FINISHED] == 1 and counts[ts.RELEASED] == 1 and sum(counts[:6]) == 1
    h.state.on_worker_lost(w)            # 1 held only there: recomputed, 0 with it
    counts = h.state.state_counts
    assert (counts[ts.WAITING], counts[ts.READY], counts[ts.RELEASED]) == (1, 1, 0)


def test_transitions_nobody_makes_are_refused(h):
    h.submit((0, CONST, [], 0, True))
    node = h.node(0)
    assert node.state == ts.READY
    with pytest.raises(ts.IllegalTransition, match="ready -> released"):
        h.state.transition(node, ts.RELEASED)
    assert ts.READY not in ts.ALLOWED[ts.FINISHED] and ts.READY not in ts.ALLOWED[ts.RELEASED]


def test_a_worker_that_leaves_is_reported_gone_and_no_push_to_it_stays_queued(h):
    """The other workers are told (PeersGone) to close their channel to it; a push to it
    ordered earlier in the same round would reopen that channel, so it is dropped."""
    h.add_worker(), h.add_worker()
    h.submit((0, RUN, [], 1, False), (1, RUN, [0], 1, True))
    [source] = h.schedule()
    h.finish(source, 0)
    h.state.outbox.clear()
    source.cpus_used = source.cpus * h.state.overbooking  # the consumer goes elsewhere
    [target] = h.schedule()
    source.cpus_used = 0
    assert h.state.outbox.sends[source] == {target.address: [h.base + 0]}
    h.state.on_worker_lost(target)
    assert h.state.outbox.peers_gone == [target.address]
    assert target.address not in h.state.outbox.sends[source]
    h.state.outbox.clear()
    assert h.schedule() == {source: [1]}   # runs where its input is, no transfer
    assert not h.state.outbox.sends and not h.state.outbox.peers_gone


def test_a_worker_back_at_the_same_address_keeps_its_channels(h):
    """A worker that re-registered (new connection, same data address) before the loss of
    its old connection was seen is not reported gone: the others' channel to that
    address serves the new registration, and pushes ordered to it stay."""
    old = h.add_worker()
    back = h.state.on_worker_hello(b"again", protocol.PROTOCOL_VERSION, 1, old.address,
                                   [CONST, MERGE, RUN], "h", 0.0)
    holder = h.add_worker()
    h.state.outbox.send_data(holder, back.address, h.base + 0)  # ordered for the new one
    h.state.on_worker_lost(old)
    assert h.state.outbox.peers_gone == []
    assert h.state.outbox.sends[holder] == {back.address: [h.base + 0]}
    h.state.on_worker_lost(back)    # now the address is gone for good
    assert h.state.outbox.peers_gone == [back.address]
    assert h.state.outbox.sends[holder] == {}
