"""A waiting call looks at what changed, not at every future it still waits for.

``wait``, ``gather`` and ``as_completed`` once rescanned all their pending futures on
every wake-up, so a wait for N tasks that finish one per wake-up cost O(N²). These
tests connect a real Client to a stand-in broker that only says Welcome, then feed it
one finished task per wake-up, and count how often the futures' status is read.
"""

import threading

import pytest
import zmq

from hyperloom import data, protocol
from hyperloom.client import Client, LoomError
from hyperloom.client.future import Future
from hyperloom.client.session import _ask_again

N = 3000
LOOKS_PER_FUTURE = 10   # a linear wait reads each status a few times; the old one N/2


class CountingFuture(Future):
    """A Future that counts reads of its status."""
    looks = 0

    @property
    def remote_status(self):
        CountingFuture.looks += 1
        return self._status

    @remote_status.setter
    def remote_status(self, value):
        self._status = value


@pytest.fixture
def client(client_and_broker):
    return client_and_broker[0]


@pytest.fixture
def client_and_broker():
    """A Client, and the stand-in broker's ROUTER (to read what the client sends)."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def welcome():
        if router.poll(10_000):
            identity, _ = router.recv_multipart()
            router.send_multipart([identity, protocol.encode(
                protocol.WELCOME, protocol.PROTOCOL_VERSION, 1, [])])

    thread = threading.Thread(target=welcome, daemon=True)
    thread.start()
    client = Client("127.0.0.1", port, connect_timeout=10)
    thread.join(10)
    yield client, router
    client.close()
    router.close(linger=0)
    context.term()


def submitted(client, n):
    """n futures as a submit leaves them: running, in the table the broker's answers reach."""
    futures = [CountingFuture(client, client._first_id + i) for i in range(n)]
    client.futures.update((f._id, f) for f in futures)
    return futures


def one_per_wake_up(client, messages):
    """Each wake-up of the client handles the next message (in place of the socket)."""
    messages = iter(messages)

    def process_events():
        client._on_message([zmq.Frame(next(messages))])
    client._process_events = process_events


def finished(futures):
    for i, future in enumerate(reversed(futures)):   # the last submitted finishes first
        yield protocol.encode(protocol.TASKS_FINISHED, [future._id], i + 1, len(futures))


def results(futures):
    for i, future in enumerate(reversed(futures)):
        entry = [future._id, [data.KIND_SMALL, b"value %d" % future._id]]
        yield protocol.encode(protocol.RESULTS, [entry], i + 1, len(futures))


def test_wait_for_tasks_finishing_one_per_wake_up_reads_each_status_a_few_times(client):
    futures = submitted(client, N)
    one_per_wake_up(client, finished(futures))
    CountingFuture.looks = 0
    client.wait(futures)
    assert all(f.finished() for f in futures)
    assert CountingFuture.looks < LOOKS_PER_FUTURE * N


def test_gather_of_results_arriving_one_per_wake_up_reads_each_status_a_few_times(client):
    futures = submitted(client, N)
    one_per_wake_up(client, results(futures))
    CountingFuture.looks = 0
    values = client.gather(futures)
    assert values == [b"value %d" % f._id for f in futures]
    assert CountingFuture.looks < LOOKS_PER_FUTURE * N


def test_as_completed_yields_in_finishing_order_reading_each_status_a_few_times(client):
    futures = submitted(client, N)
    one_per_wake_up(client, finished(futures))
    CountingFuture.looks = 0
    assert list(client.as_completed(futures)) == list(reversed(futures))
    assert CountingFuture.looks < LOOKS_PER_FUTURE * N


def test_as_completed_yields_finished_futures_first_and_a_future_given_twice_twice(client):
    futures = submitted(client, 3)
    one_per_wake_up(client, finished(futures[1:]))
    futures[0].remote_status = "finished"
    given = [futures[1], futures[0], futures[1], futures[2]]
    assert list(client.as_completed(given)) == [futures[0], futures[2], futures[1], futures[1]]


def test_a_release_from_another_thread_ends_a_wait_for_it(client):
    futures = submitted(client, 2)
    released = threading.Event()

    def release_on_first_wake_up():   # the release is noted while wait() is waiting
        if not released.is_set():
            threading.Thread(target=client._note_release, args=(futures[0],)).start()
            released.set()
        else:
            client._on_message([zmq.Frame(protocol.encode(protocol.TASKS_FINISHED, [futures[1]._id],
                                                          1, 2))])
    client._process_events = release_on_first_wake_up
    with pytest.raises(LoomError, match="was released"):
        client.wait(futures)
    assert futures[1].finished()


def test_waiting_for_another_clients_future_is_refused_at_once(client):
    other = Future(object(), 1)
    with pytest.raises(LoomError, match="belongs to another client"):
        client.wait([other])


def test_a_fetch_asked_again_after_a_reattach_names_only_values_still_awaited(
        client_and_broker):
    """Values the client took from a fetch's Data are no longer awaited: asked again
    after a broker restart (session.py), a released one would come back as an error,
    and that error must not fail a future that has its value."""
    client, router = client_and_broker
    first, second = futures = submitted(client, 2)
    for future in futures:   # finished (TasksFinished came), values not here yet
        future.remote_status = "finished"
    asked = []

    def next_fetch():
        assert router.poll(10_000), "the client sent no Fetch"
        code, fields = protocol.decode(router.recv_multipart()[1])
        assert code == protocol.FETCH
        asked.append(fields)
        return fields[0]

    def data_message(request, *entries):
        return zmq.Frame(protocol.encode(protocol.DATA, request, list(entries), None))

    def value_of(future):
        return [future._id, [data.KIND_SMALL, b"value %d" % future._id]]

    wake_ups = iter([
        lambda: client._on_message([data_message(next_fetch(), value_of(first))]),
        lambda: (_ask_again(client), next_fetch()),    # the broker restarted: asked again
        lambda: client._on_message([data_message(
            asked[0][0], [first._id, None, "Invalid id"], value_of(second))]),
    ])
    client._process_events = lambda: next(wake_ups)()
    assert client.gather(futures) == [b"value %d" % f._id for f in futures]
    assert [fields[1] for fields in asked] == [[first._id, second._id], [second._id]]

