"""Client-side plan building: post-order ids, sharing, validation."""

import pytest

from hyperloom.client import LoomError, Task, tasks
from hyperloom.client.plan import PlanBuilder


class FakeClient:
    pass


def test_post_order_ids_and_shared_inputs_once():
    a = tasks.const("a")
    b = tasks.merge((a, a))
    c = tasks.merge((a, b))
    builder = PlanBuilder(FakeClient(), 100)
    assert builder.add(c) == 102
    ids = [entry[0] for entry in builder.entries]
    assert ids == [100, 101, 102]
    assert builder.entries[1][3] == [100, 100]
    assert builder.entries[2][3] == [100, 101]


def test_deep_chain_needs_no_recursion():
    task = tasks.const("x")
    for _ in range(50000):
        task = tasks.merge((task,))
    builder = PlanBuilder(FakeClient(), 0)
    assert builder.add(task) == 50000


def test_cycle_is_detected():
    a = tasks.merge(())
    b = tasks.merge((a,))
    a.inputs = (b,)
    with pytest.raises(LoomError, match="not a DAG"):
        PlanBuilder(FakeClient(), 0).add(a)


def test_checkpoint_path_must_be_absolute():
    task = tasks.const("x")
    task.checkpoint_path = "relative"
    with pytest.raises(LoomError, match="Checkpoint has to be absolute path"):
        PlanBuilder(FakeClient(), 0).add(task)


def test_task_without_type_is_refused():
    with pytest.raises(LoomError, match="has no task_type"):
        PlanBuilder(FakeClient(), 0).add(Task())


def test_resource_requests_and_labels():
    task = tasks.run("ls")
    task.label = "List: 1"
    builder = PlanBuilder(FakeClient(), 0)
    builder.add(task)
    assert builder.entries[0][4] == 1
    assert builder.label_list() == ["List: 1"]
    assert tasks.const("x").resource_request is None
    assert tasks.save(tasks.const("x"), "/tmp/x").resource_request == tasks.cpus(1)


def test_chunks_carry_only_the_symbols_and_labels_they_add():
    builder = PlanBuilder(FakeClient(), 0)
    roots = []
    for i in range(10):
        task = tasks.merge((tasks.const(str(i)),))
        task.label = f"L{i}"
        roots.append(builder.add(task))
    chunks = list(builder.chunks(4))
    assert [len(c[2]) for c in chunks] == [4, 4, 4, 4, 4]
    assert [c.more for c in chunks] == [True, True, True, True, False]
    assert chunks[0][0] == ["loom/data/const", "loom/data/merge"] and chunks[1][0] == []
    assert sum((c[1] for c in chunks), []) == [f"L{i}" for i in range(10)]
