"""Which messages a one-task round trip costs (broker core, no sockets).

Each message is a send and a wake-up of another process: on a 2-core machine
that is most of a round trip (benchmarks/README.md, "Round trip"). These tests
pin down the two savings: RemoveData waits REMOVE_DELAY and goes out batched,
and TasksFinished is left out when Data carries every result it would name.
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

    def submit_and_fetch(self, n=1, release=True):
        """Submit n const results and fetch them at once (as submit + gather)."""
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        entries = [[i, 0, b"x", [], 0, True, -1, None] for i in ids]
        self.state.on_submit(self.client, [CONST], [], entries, False, False)
        self.state.on_fetch(self.client, 1, ids, release)
        return ids

    def finish_inline(self, worker, ids):
        """The worker reports ``ids`` done, each with its small value along."""
        frames, results = [], []
        for task_id in ids:
            first = len(frames)
            meta, _ = data.encode(data.Plain(b"x"), frames)
            results.append([task_id, meta, len(frames) - first])
        self.state.on_tasks_done(worker, [[i, 1, 0] for i in ids], [], self.now, results,
                                 frames)


def names(sent, identity=None):
    return [name for who, name, _ in sent if identity is None or who == identity]


def test_a_gathered_result_is_answered_by_data_alone():
    b = Broker()
    [task_id] = b.submit_and_fetch()
    assert names(b.round()) == ["ComputeTasks"]
    b.finish_inline(b.workers[0], [task_id])
    sent = b.round()
    assert names(sent, b"client") == ["Data"]        # no TasksFinished beside it
    [(_, _, (request, entries))] = [s for s in sent if s[1] == "Data"]
    assert entries[0][0] == task_id


def test_tasks_finished_still_goes_when_data_does_not_name_every_result():
    b = Broker()
    [fetched] = b.submit_and_fetch()
    unfetched = b.next_id
    entries = [[unfetched, 0, b"y", [], 0, True, -1, None]]   # a result nobody fetches
    b.state.on_submit(b.client, [CONST], [], entries, False, False)
    b.round()
    b.finish_inline(b.workers[0], [fetched, unfetched])
    sent = b.round()
    assert sorted(names(sent, b"client")) == ["Data", "TasksFinished"]
    [finished] = [fields for _, name, fields in sent if name == "TasksFinished"]
    assert set(finished[0]) == {fetched, unfetched} and finished[1:] == [2, 2]


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
