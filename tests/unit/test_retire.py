"""Retiring a worker in the broker core (broker/retire.py), without sockets."""

from hyperloom.broker import taskstate as ts
from hyperloom.broker.retire import Retirements

from .test_broker_state import RUN, Harness


def test_retiring_worker_gets_nothing_new_gives_back_queued_and_copies_sole_data():
    h = Harness()
    old, new = h.add_worker(cpus=1), h.add_worker(cpus=1)
    retire = Retirements(h.state)
    h.submit(*[(i, RUN, [], 1, True) for i in range(8)])
    assigned = h.schedule()
    on_old = assigned[old]
    assert len(on_old) >= 2, "overbooking queued some tasks there"
    h.finish(old, on_old[0])                  # a result only the old worker holds
    running, queued = on_old[1], on_old[2:]
    h.state.outbox.clear()

    retire.on_retiring(old)
    assert old.retiring
    assert sorted(i - h.base for i in h.state.outbox.steal[old]) == sorted([running, *queued])
    assert retire.advance() == [], "not while tasks are assigned there"
    h.state.on_tasks_stolen(old, [h.base + i for i in queued])   # not started: given back
    h.finish(old, running)                                       # was running: finishes
    h.state.outbox.clear()
    h.schedule()
    assert old not in h.state.outbox.compute, "nothing new is placed on it"

    assert retire.advance() == [old]
    sends = h.state.outbox.sends[old]
    assert sorted(i - h.base for i in sends[new.address]) == sorted([on_old[0], running])

    retire.on_left(old, clean=True)
    h.state.on_worker_lost(old)
    for local in (on_old[0], running):
        node = h.node(local)
        assert node.state == ts.FINISHED and node.holders == [new], "nothing recomputed"
    h.state.check_invariants()


def test_retiring_worker_lost_before_shutdown_is_an_ordinary_loss():
    h = Harness()
    old, _ = h.add_worker(cpus=1), h.add_worker(cpus=1)
    retire = Retirements(h.state)
    h.submit((0, RUN, [], 1, True), (1, RUN, [], 1, True))
    assigned = h.schedule()
    h.finish(old, *assigned[old])
    retire.on_retiring(old)
    assert retire.advance() == [old]          # copies ordered, Shutdown about to be sent...
    retire.on_left(old, clean=False)          # ...but it crashed instead of saying goodbye
    h.state.on_worker_lost(old)
    (local,) = assigned[old]
    assert h.node(local).state != ts.FINISHED, "an undelivered copy is not trusted"


def test_retiring_last_worker_waits_for_somewhere_to_copy_to():
    h = Harness()
    only = h.add_worker(cpus=1)
    retire = Retirements(h.state)
    h.submit((0, RUN, [], 1, True))
    h.schedule()
    h.finish(only, 0)
    retire.on_retiring(only)
    assert retire.advance() == []
    newcomer = h.add_worker(cpus=1)
    assert retire.advance() == [only]
    assert list(h.state.outbox.sends[only]) == [newcomer.address]
