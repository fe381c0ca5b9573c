"""Which messages a one-task round trip costs (broker core, no sockets).

Each message is a send and a wake-up of another process: on a 2-core machine
that is most of a round trip (benchmarks/README.md, "Round trip"). These tests
pin down the savings: RemoveData waits REMOVE_DELAY and goes out batched,
small results go to their client as they finish (Results: no Fetch needed), and
TasksFinished is left out when Data or Results carries every result it would name.
"""

from hyperloom import data, protocol
from hyperloom.broker.lifecycle import REMOVE_DELAY
from hyperloom.broker.outbox import messages
from hyperloom.broker.state import BrokerState

CONST = protocol.TASK_CONST


class Broker:
    """A broker core with one client and one or two 1-core workers, on a fake clock."""

    def __init__(self, workers=1):
        self.state = BrokerState()
        self.now = 0.0
        self.client = self.state.on_client_hello(b"client", protocol.PROTOCOL_VERSION, 0.0)
        self.base = self.client.number << protocol.CLIENT_SHIFT
        self.workers = [
            self.state.on_worker_hello(b"w%d" % i, protocol.PROTOCOL_VERSION, 1,
                                       f"tcp://w{i}:1", [CONST], "h", 0.0)
            for i in range(workers)]
        self.next_id = self.base
        self.round()

    def round(self):
        """on_drained, then what goes out: [(identity, message name, fields)]."""
        self.state.on_drained(self.now)
        sent = []
        for identity, frames in messages(self.state.outbox):
            code, fields = protocol.decode(frames[0])
            sent.append((identity, protocol.name_of(code), fields))
        self.state.outbox.clear()
        self.state.check_invariants()
        return sent

    def submit(self, n=1):
        """Submit n const results; their ids."""
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        entries = [[i, 0, b"x", [], 0, True, -1, None] for i in ids]
        self.state.on_submit(self.client, [CONST], [], entries, False, False)
        return ids

    def submit_and_fetch(self, n=1, release=True):
        """Submit n const results and fetch them at once (as submit + gather)."""
        ids = self.submit(n)
        self.state.on_fetch(self.client, 1, ids, release)
        return ids

    def finish_inline(self, worker, ids, value=b"x"):
        """The worker reports ``ids`` done, each with its value (at most 64 KiB) along."""
        frames, results = [], []
        for task_id in ids:
            first = len(frames)
            meta, _ = data.encode(data.Plain(value), frames)
            results.append([task_id, meta, len(frames) - first])
        self.state.on_tasks_done(worker, [[i, len(value), 0] for i in ids], [], self.now,
                                 results, frames)


def names(sent, identity=None):
    return [name for who, name, _ in sent if identity is None or who == identity]


def test_a_gathered_result_is_answered_by_data_alone():
    b = Broker()
    [task_id] = b.submit_and_fetch()
    assert names(b.round()) == ["ComputeTasks"]
    b.finish_inline(b.workers[0], [task_id])
    sent = b.round()
    assert names(sent, b"client") == ["Data"]        # no TasksFinished beside it
    [(_, _, (request, entries, offer))] = [s for s in sent if s[1] == "Data"]
    assert offer is None
    assert entries[0][0] == task_id


def test_tasks_finished_still_goes_when_data_does_not_name_every_result():
    b = Broker()
    [fetched] = b.submit_and_fetch()
    [unfetched] = b.submit()   # a result nobody fetches, too big to go unasked
    b.round()
    big = b"y" * (protocol.PUSH_RESULT_BYTES + 1)
    b.finish_inline(b.workers[0], [fetched, unfetched], big)
    sent = b.round()
    assert sorted(names(sent, b"client")) == ["Data", "TasksFinished"]
    [finished] = [fields for _, name, fields in sent if name == "TasksFinished"]
    assert set(finished[0]) == {fetched, unfetched} and finished[1:] == [2, 2]


def test_a_small_result_goes_to_its_client_as_it_finishes():
    b = Broker()
    [task_id] = b.submit()     # submitted, not fetched
    b.round()
    b.finish_inline(b.workers[0], [task_id])
    sent = b.round()
    assert names(sent, b"client") == ["Results"]     # the value, no TasksFinished
    [(objects, done, total)] = [fields for _, name, fields in sent if name == "Results"]
    assert [entry[0] for entry in objects] == [task_id] and (done, total) == (1, 1)
    assert objects[0][1][1] == b"x"                  # the value itself, inline


def test_a_result_over_the_push_size_is_only_named():
    b = Broker()
    [task_id] = b.submit()
    b.round()
    b.finish_inline(b.workers[0], [task_id], b"y" * (protocol.PUSH_RESULT_BYTES + 1))
    sent = b.round()
    assert names(sent, b"client") == ["TasksFinished"]


def test_a_fetched_result_is_not_pushed_as_well():
    b = Broker()
    b.submit_and_fetch()
    b.round()
    b.finish_inline(b.workers[0], [b.next_id - 1])
    assert names(b.round(), b"client") == ["Data"]


def test_removals_wait_the_delay_then_go_out_as_one_message_per_worker():
    b = Broker()
    ids = []
    for _ in range(3):               # three round trips within the delay
        [task_id] = b.submit_and_fetch()
        b.round()
        b.finish_inline(b.workers[0], [task_id])
        ids.append(task_id)
        assert "RemoveData" not in names(b.round())
        b.now += REMOVE_DELAY / 4
    assert b.state.due_at() == REMOVE_DELAY
    b.now = REMOVE_DELAY
    sent = b.round()
    assert [(who, name, fields) for who, name, fields in sent] == \
        [(b"w0", "RemoveData", [ids])]
    assert b.state.due_at() is None


def test_held_removals_of_a_lost_worker_are_dropped():
    b = Broker(workers=1)
    [task_id] = b.submit_and_fetch()
    b.round()
    b.finish_inline(b.workers[0], [task_id])
    b.round()
    assert b.state.due_at() is not None
    b.state.on_peer_disconnected(b"w0", b.now)
    b.now += REMOVE_DELAY
    assert "RemoveData" not in names(b.round())
    assert b.state.due_at() is None


def test_a_stopping_broker_sends_held_removals_before_shutdown():
    b = Broker()
    [task_id] = b.submit_and_fetch()
    b.round()
    b.finish_inline(b.workers[0], [task_id])
    b.round()
    b.state.on_shutdown()
    sent = []
    for identity, frames in messages(b.state.outbox):
        sent.append((identity, protocol.name_of(protocol.decode(frames[0])[0])))
    assert sent == [(b"w0", "RemoveData"), (b"w0", "Shutdown")]


def test_a_cleared_outbox_is_empty_whatever_it_held():
    # clear() empties the batches in place: one left out of its list would carry
    # messages over into the next round.
    from hyperloom.broker.outbox import Outbox
    out = Outbox()
    for name, batch in vars(out).items():
        if name.startswith("_"):
            continue
        if isinstance(batch, dict):
            batch[("key", name)] = [1]
        elif isinstance(batch, set):
            batch.add(("key", name))
        else:
            batch.append(("entry", name))
    assert not out.is_empty()
    out.clear()
    assert out.is_empty()
    assert all(not batch for name, batch in vars(out).items() if not name.startswith("_"))
