"""Client and Future API (guide + reference §3) against real processes."""

import gc
import threading

import pytest

from hyperloom import protocol
from hyperloom.client import Client, LoomError, TaskFailed, tasks

from ..conftest import wait_until


def test_future_states_and_repr(client):
    big = b"x" * (protocol.PUSH_RESULT_BYTES + 1)    # fetched, not sent unasked
    future = client.submit_one(tasks.const(big))
    future.wait()
    assert future.finished() and future.active() and not future.released()
    assert repr(future) == f"<Future task_id={future.task_id} finished>"
    assert future.fetch() == big
    assert repr(future).endswith("finished R>")
    future.release()
    assert future.released() and not future.active()
    # a cached result stays readable after release (as the original)
    assert future.fetch() == big


def test_a_small_result_reaches_the_client_as_its_task_finishes(client):
    future = client.submit_one(tasks.const(b"small"))
    future.wait()
    assert repr(future).endswith("finished R>")      # the value came with the news
    sent = []
    original_send = client._send
    client._send = lambda header: sent.append(protocol.decode(header)[0]) or \
        original_send(header)
    assert future.gather() == b"small"
    assert sent == []                                # no Fetch; the release waits
    assert client.get_stats()["n_data_objects"] == 0  # ... for the next message
    assert sent == [protocol.RELEASE, protocol.GET_STATS]


def test_a_future_fetched_before_it_was_waited_for_is_finished(client):
    # The broker leaves TasksFinished out when Data carries the value: the value
    # itself must tell the client that the task finished.
    futures = [client.submit_one(tasks.const(b"v%d" % i)) for i in range(20)]
    assert client.fetch(futures) == [b"v%d" % i for i in range(20)]
    assert all(f.finished() and f.active() for f in futures)
    client.wait(futures)                      # returns at once: nothing to wait for
    assert [f.fetch() for f in futures] == [b"v%d" % i for i in range(20)]
    assert client.gather(futures) == [b"v%d" % i for i in range(20)]
    assert all(f.released() for f in futures)


def test_task_ids_count_from_zero_per_client(shared_cluster):
    client = shared_cluster.client()
    f0, f1 = client.submit((tasks.const("a"), tasks.const("b")))
    assert (f0.task_id, f1.task_id) == (0, 1)
    assert client.submit_one(tasks.const("c")).task_id == 2
    client.close()


def test_same_task_twice_in_one_submit_gives_the_same_future(client):
    task = tasks.const("x")
    f1, f2 = client.submit((task, task))
    assert f1 is f2
    assert client.gather((f1, f2)) == [b"x", b"x"]


def test_resubmitting_a_task_object_computes_it_again(client):
    task = tasks.const("x")
    f1 = client.submit_one(task)
    f2 = client.submit_one(task)
    assert f1 is not f2 and f1.task_id != f2.task_id
    assert client.gather((f1, f2)) == [b"x", b"x"]


def test_using_a_released_future_names_it(client):
    future = client.submit_one(tasks.const("x"))
    assert future.gather() == b"x"
    with pytest.raises(LoomError, match=f"Released future <Future task_id={future.task_id}"):
        client.submit_one(tasks.merge((future,)))


def test_using_a_failed_future_names_it_and_its_error(client):
    future = client.submit_one(tasks.open("/nonexistent/loom-input"))
    with pytest.raises(TaskFailed):
        future.wait()
    with pytest.raises(LoomError, match=rf"Failed future <Future task_id={future.task_id} "
                                        rf"failed> used in plan .*No such file or directory"):
        client.submit_one(tasks.merge((future,)))


def test_fetching_a_released_unfetched_future_raises(client):
    future = client.submit_one(tasks.const("x"))
    future.release()
    with pytest.raises(LoomError, match="was released"):
        future.fetch()


def test_release_of_a_running_future_cancels_it(client):
    future = client.submit_one(tasks.run("sleep 2"))
    future.release()
    assert future.released()
    stats = client.get_stats()
    assert stats["n_tasks"] == 0  # canceled right away, nothing held
    assert client.submit_one(tasks.const("after")).gather() == b"after"


def test_garbage_collected_futures_are_released(client):
    futures = client.submit([tasks.const("x") for _ in range(20)])
    client.wait(futures)
    assert client.get_stats()["n_data_objects"] >= 20
    del futures
    gc.collect()
    assert client.get_stats()["n_data_objects"] == 0


def test_submit_leaves_the_garbage_collector_as_it_found_it(client):
    # submit pauses collection while it walks the plan; it must always switch it back on,
    # also when the plan is refused, and never switch on a collector the user turned off.
    assert gc.isenabled()
    client.gather(client.submit([tasks.const("x")]))
    assert gc.isenabled()
    a = tasks.merge(())
    a.inputs = (tasks.merge((a,)),)
    with pytest.raises(LoomError, match="not a DAG"):
        client.submit_one(a)
    assert gc.isenabled()
    gc.disable()
    try:
        client.gather(client.submit([tasks.const("y")]))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_client_level_fetch_wait_release(client):
    futures = client.submit([tasks.const(str(i)) for i in range(10)])
    client.wait(futures)
    assert all(f.finished() for f in futures)
    assert client.fetch(futures) == [str(i).encode() for i in range(10)]
    client.release(futures)
    assert all(f.released() for f in futures)
    assert client.get_stats()["n_data_objects"] == 0


def test_as_completed_yields_in_completion_order(client):
    slow = client.submit_one(tasks.run("sleep 0.4"))
    medium = client.submit_one(tasks.run("sleep 0.1"))
    fast = client.submit_one(tasks.const("x"))
    order = list(client.as_completed([slow, medium, fast]))
    assert order == [fast, medium, slow]
    client.release(order)


def test_two_clients_see_only_their_own_futures(shared_cluster):
    a = shared_cluster.client()
    b = shared_cluster.client()
    fa = a.submit_one(tasks.const("a"))
    fb = b.submit_one(tasks.const("b"))
    assert fa.task_id == fb.task_id == 0
    assert a.gather([fa]) == [b"a"] and b.gather([fb]) == [b"b"]
    fa2 = a.submit_one(tasks.const("a2"))
    with pytest.raises(LoomError, match="belongs to another client"):
        b.submit_one(tasks.merge((fa2,)))
    with pytest.raises(LoomError, match="belongs to another client"):
        b.fetch([fa2])
    a.close()
    b.close()


def test_failure_touches_only_the_failed_task_and_its_dependents(client):
    good = client.submit_one(tasks.const("good"))
    bad = tasks.run("false")
    dependent = tasks.merge((bad, tasks.const("x")))
    f_bad, f_dep = client.submit((bad, dependent))
    with pytest.raises(TaskFailed) as error:
        f_dep.wait()
    assert error.value.id == f_bad.task_id
    assert str(error.value).startswith(f"Task id={f_bad.task_id} failed: "
                                       "Program terminated with status 1")
    with pytest.raises(TaskFailed):
        f_bad.fetch()
    assert good.gather() == b"good"   # an earlier future stays valid
    client.release((f_bad, f_dep))
    assert client.get_stats()["n_tasks"] == 0


def test_info_reports_workers_and_task_counts(client):
    info = client.info()
    assert len(info["workers"]) == 2
    for worker in info["workers"]:
        assert worker["cpus"] == 1
        assert worker["address"].startswith("tcp://127.0.0.1:")
    assert set(info["tasks"]) >= {"waiting", "ready", "assigned", "finished", "failed"}


def test_client_without_address_starts_a_local_cluster():
    with Client() as client:
        assert client.submit_one(tasks.const("embedded")).gather() == b"embedded"
        assert client.get_stats()["n_workers"] >= 1


def _held_objects(observer):
    return observer.get_stats()["n_data_objects"]


def test_release_reaches_the_broker_while_the_owner_stays_quiet(make_cluster):
    # Issue 11.2: release() used to be queued until the owner's next call.
    cluster = make_cluster()
    owner, observer = cluster.client(), cluster.client()
    future = owner.submit_one(tasks.const("x" * 1000))
    future.wait()
    assert _held_objects(observer) == 1
    future.release()
    # The owner makes no further call: the broker must have heard it anyway.
    wait_until(lambda: _held_objects(observer) == 0, timeout=5,
               message="the released object to leave the workers")


def test_collected_futures_are_released_while_the_owner_stays_quiet(make_cluster):
    cluster = make_cluster()
    owner, observer = cluster.client(), cluster.client()
    futures = owner.submit([tasks.const("y%d" % i) for i in range(5)])
    owner.wait(futures)
    assert _held_objects(observer) == 5
    del futures
    gc.collect()  # Future.__del__ only notes the ids; the owner stays idle from here on
    wait_until(lambda: _held_objects(observer) == 0, timeout=5,
               message="the collected futures' objects to leave the workers")


def test_collected_futures_are_released_during_a_long_wait(make_cluster):
    # While the owner blocks in wait(), releases noted by __del__ go out at its next
    # wake-up, not after the wait returns.
    cluster = make_cluster()
    owner, observer = cluster.client(), cluster.client()
    held = [owner.submit_one(tasks.const("z"))]
    held[0].wait()
    slow = owner.submit_one(tasks.run("sleep 3"))
    seen = []

    def owner_is_waiting():
        free = owner._lock.acquire(blocking=False)
        if free:
            owner._lock.release()
        return not free

    def collect_and_watch():
        wait_until(owner_is_waiting, timeout=2, message="the owner to block in wait()")
        held.clear()
        gc.collect()
        seen.append(wait_until(lambda: _held_objects(observer) == 0, timeout=2.5,
                               message="the object released during the wait"))

    watcher = threading.Thread(target=collect_and_watch)
    watcher.start()
    slow.wait()  # 3 s; the watcher must see the release well before it returns
    watcher.join()
    assert seen == [True]
