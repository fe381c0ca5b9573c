"""Dynamic slice and get (the guide's "Dynamic slice & get"), on real processes."""

import pytest

from hyperloom.client import TaskFailed, tasks


def data_array(n):
    return tasks.array_make([tasks.const("data%d" % i) for i in range(n)])


def test_dslice_splits_by_total_cores(client):
    # 2 workers x 1 core: pieces of round(16 / (2 * 4)) = 2 elements -> 8 pieces
    t1 = tasks.dslice(data_array(16))
    t2 = tasks.get(t1, 0)
    result = tasks.array_make((t2,))
    assert client.submit_one(result).gather() == [b"data%d" % i for i in range(0, 16, 2)]


def test_dget_makes_one_task_per_element(client):
    t1 = tasks.dget(data_array(16))
    t2 = tasks.run("/bin/cat", stdin=t1)
    result = tasks.array_make((t2,))
    assert client.submit_one(result).gather() == [b"data%d" % i for i in range(16)]


def test_dslice_of_an_index_and_a_submitted_consumer(client):
    lines = tasks.split(tasks.const("".join("line%d\n" % i for i in range(40))))
    t2 = tasks.size(tasks.dslice(lines))
    # the consumer itself is submitted: its future gives the list of piece results
    results = client.submit_one(t2).gather()
    assert len(results) == 8   # round(40 / 8) = 5 lines per piece
    assert sum(int.from_bytes(r, "little") for r in results) == \
        sum(len("line%d\n" % i) for i in range(40))


def test_dynamic_of_empty_data_makes_no_pieces(client):
    result = tasks.array_make((tasks.get(tasks.dget(tasks.array_make(())), 0),))
    assert client.submit_one(result).gather() == []


def test_dslice_with_two_consumers_fails_clearly(client):
    d = tasks.dslice(data_array(4))
    result = tasks.array_make((tasks.get(d, 0), tasks.get(d, 1)))
    with pytest.raises(TaskFailed, match="must have exactly one consumer"):
        client.submit_one(result).gather()


def test_everything_is_released_after_expansion(client):
    plan = tasks.array_make((tasks.merge((tasks.dget(data_array(5)),)),))
    assert client.submit_one(plan).gather() == [b"data%d" % i for i in range(5)]
    assert client.get_stats()["n_tasks"] == 0
