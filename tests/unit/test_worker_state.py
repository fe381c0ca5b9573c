"""The worker core without sockets: inputs, cores, cancel, tombstones."""

from hyperloom import protocol
from hyperloom.data import Plain
from hyperloom.worker.state import WorkerCore


def entry(task_id, inputs=(), cpus=0):
    return [task_id, "loom/data/merge", b"", list(inputs), cpus, None, task_id == 1, None]


def test_task_waits_for_its_inputs():
    core = WorkerCore(cpus=1)
    core.on_compute([entry(10, inputs=[1, 2])])
    assert core.take_startable() == []
    core.on_data(1, Plain(b"a"))
    assert core.take_startable() == []
    core.on_data(2, Plain(b"b"))
    [task] = core.take_startable()
    assert task.id == 10 and core.inputs_of(task)[1].data == b"b"
    core.check_invariants()


def test_a_result_computed_here_starts_the_task_waiting_for_it_as_pushed_data():
    """Task 10 waits for object 1 from a peer; that peer is lost before the push
    arrives (a bulk fetch refused) and the broker recomputes 1 here. The old core
    stored the result but left task 10 waiting for a push that never comes."""
    core = WorkerCore(cpus=1)
    core.on_compute([entry(10, inputs=[1])])
    core.on_compute([entry(1, cpus=1)])
    [producer] = core.take_startable()
    assert producer.id == 1
    core.on_task_done(producer, Plain(b"again"))
    [task] = core.take_startable()
    assert task.id == 10 and core.inputs_of(task)[0].data == b"again"
    core.check_invariants()


def test_cores_are_allocated_fifo_and_light_tasks_never_wait():
    core = WorkerCore(cpus=2)
    core.on_compute([entry(1, cpus=2), entry(2, cpus=1), entry(3, cpus=0)])
    started = core.take_startable()
    assert [t.id for t in started] == [3, 1]
    assert sorted(started[1].cpu_ids) == [0, 1]
    assert core.take_startable() == []
    core.on_task_done(started[1], Plain(b"x"))
    [task] = core.take_startable()
    assert task.id == 2 and len(task.cpu_ids) == 1
    core.check_invariants()


def test_reports_are_batched():
    core = WorkerCore(cpus=1)
    core.on_compute([entry(1), entry(2)])
    first, second = core.take_startable()
    core.on_task_done(first, Plain(b"abc"))
    core.on_task_done(second, None, "boom")
    finished, failed, results, stolen = core.take_reports()
    assert (finished, failed) == ([[1, 3, 0]], [[2, "boom"]])
    assert [(task_id, obj.data) for task_id, obj in results] == [(1, b"abc")]
    assert core.take_reports() == ([], [], [], [])
    assert core.store[1].data == b"abc"


def test_canceled_task_is_not_started_nor_reported():
    core = WorkerCore(cpus=1)
    core.on_compute([entry(1, inputs=[5])])
    core.on_cancel([1])
    core.on_data(5, Plain(b"x"))
    assert core.take_startable() == []
    assert core.take_reports() == ([], [], [], [])


def test_data_removed_before_it_arrives_is_dropped_on_arrival():
    core = WorkerCore(cpus=1)
    core.on_compute([entry(1, inputs=[5])])
    core.on_cancel([1])
    core.on_remove([5])
    core.on_data(5, Plain(b"late"))
    assert 5 not in core.store


def test_steal_gives_back_only_tasks_not_started():
    core = WorkerCore(cpus=1)
    core.on_compute([entry(1, cpus=1), entry(2, cpus=1), entry(3, cpus=1)])
    [running] = core.take_startable()
    core.on_steal([running.id, 2, 3])
    assert core.take_reports()[3] == [2, 3]
    core.on_task_done(running, Plain(b"x"))
    assert core.take_startable() == []
    assert core.take_reports()[0] == [[running.id, 1, 0]]


def test_reports_have_their_protocol_records():
    core = WorkerCore(cpus=1)
    sent = [entry(1), entry(2), entry(3, cpus=1), entry(4, cpus=1)]
    for compute in sent:
        protocol.check_entry(protocol.ComputeTask, compute)
    core.on_compute(sent)
    started = core.take_startable()
    core.on_task_done(started[0], Plain(b"result"))
    core.on_task_done(started[1], None, "it broke")
    core.on_steal([4])  # queued behind 3 on the only core
    finished, failed, results, stolen = core.take_reports()
    assert finished and failed and results and stolen == [4]
    for report in finished:
        protocol.check_entry(protocol.FinishedTask, report)
    for report in failed:
        protocol.check_entry(protocol.FailedTask, report)


def test_rejoining_keeps_data_and_started_tasks_and_drops_the_rest():
    """A worker re-attaching to a restarted broker: its data and running tasks stay (their
    cores stay taken), tasks not started are dropped for the broker to place again."""
    core = WorkerCore(cpus=2)
    core.on_data(5, Plain(b"held"))
    core.on_compute([entry(10, cpus=1), entry(11, cpus=1), entry(12, cpus=1),
                     entry(13, inputs=[99])])
    running = core.take_startable()
    assert [t.id for t in running] == [10, 11]      # 12 waits for a core, 13 for data
    core.on_task_done(running[0], Plain(b"done"))    # finished; its report not sent yet
    new, held, running_ids = core.rejoining()
    assert sorted(held) == [[5, 4, 0], [10, 4, 0]]
    assert running_ids == [11]
    assert new.free_cpus == [0] or new.free_cpus == [1]
    assert new.take_startable() == [] and not new.finished
    new.on_task_done(running[1], Plain(b"late"))     # the running task ends afterwards
    assert new.take_reports()[0] == [[11, 4, 0]] and len(new.free_cpus) == 2
    new.check_invariants()


def test_send_data_and_upload_are_answered_from_the_store_by_the_core():
    core = WorkerCore(cpus=1)
    core.on_data(5, Plain(b"five"))
    core.on_data(6, Plain(b"six"))
    pushes = core.on_send_data([["tcp://peer:1", [5, 6]], ["tcp://other:2", [6, 99]]])
    assert [(address, [i for i, _ in objects]) for address, objects in pushes] == \
        [("tcp://peer:1", [5, 6]), ("tcp://other:2", [6])]   # 99 is not here: logged, skipped
    answer = core.on_upload([6, 99])
    assert answer[0][0] == 6 and answer[0][1].data == b"six"
    assert answer[1] == (99, None)


def test_registration_refusal_and_shutdown_are_core_events():
    core = WorkerCore(cpus=1)
    assert core.worker_id is None
    core.on_welcome(4)
    assert core.worker_id == 4
    core.on_error("a passing complaint", False)
    assert core.refusal is None
    core.on_error("protocol version mismatch", True)
    assert core.refusal == "protocol version mismatch"
    assert not core.shutdown_requested
    core.on_shutdown()
    assert core.shutdown_requested
