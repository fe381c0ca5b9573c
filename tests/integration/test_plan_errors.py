"""Bad plans and bad messages get errors that name the problem; the broker keeps serving."""

import os
import signal
import subprocess
import sys
import textwrap

import msgpack
import pytest
import zmq

from hyperloom import protocol
from hyperloom.client import LoomError, Task, tasks

from ..conftest import wait_until


def test_cycle_is_refused_naming_the_task(client):
    a = tasks.merge(())
    b = tasks.merge((a,))
    a.inputs = (b,)
    with pytest.raises(LoomError, match="not a DAG"):
        client.submit_one(b)


def test_invalid_input_object_is_refused(client):
    with pytest.raises(LoomError, match="Invalid object 'text' in plan"):
        client.submit_one(tasks.merge(("text",)))


def test_unknown_task_type_is_refused_naming_type_and_task(client):
    task = Task()
    task.task_type = "my/unknown"
    future = client.submit_one(task)
    with pytest.raises(LoomError, match=r"task id=\d+ has unknown task type 'my/unknown'"):
        future.wait()
    assert client.submit_one(tasks.const("ok")).gather() == b"ok"


def test_every_call_on_a_refused_plan_raises_the_refusal(client):
    # Issue 11.3: gather()/fetch() at once raced the refusal and reported "Invalid id".
    for call in ("gather", "fetch", "wait"):
        task = Task()
        task.task_type = "my/unknown"
        future = client.submit_one(task)
        with pytest.raises(LoomError, match=r"Plan refused: task id=\d+ has unknown task type "
                                            r"'my/unknown'"):
            getattr(future, call)()
        with pytest.raises(LoomError, match="unknown task type 'my/unknown'"):
            client.gather([future])  # and again, through the client
    assert client.submit_one(tasks.const("ok")).gather() == b"ok"


def test_malformed_messages_are_answered_and_the_broker_keeps_serving(shared_cluster, client):
    context = zmq.Context()
    rogue = context.socket(zmq.DEALER)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(f"tcp://{shared_cluster.host}:{shared_cluster.port}")
    try:
        submit_from_a_stranger = protocol.encode(protocol.SUBMIT, [], [], [], False, False, [])
        for frames in ([b"\xc1garbage"], [msgpack.packb({"not": "a list"})],
                       [msgpack.packb([999])], [submit_from_a_stranger]):
            rogue.send_multipart(frames)
            assert rogue.poll(5000), "the broker did not answer a malformed message"
            code, fields = protocol.decode(rogue.recv())
            assert code == protocol.ERROR
            assert fields[0]
        rogue.send(protocol.encode(protocol.HELLO_CLIENT, protocol.PROTOCOL_VERSION))
        assert rogue.poll(5000)
        rogue.recv()
        # a registered client sending wrong field types
        rogue.send(msgpack.packb([protocol.SUBMIT, "x", 1, None, False, False, []]))
        assert rogue.poll(5000)
        code, fields = protocol.decode(rogue.recv())
        assert code == protocol.ERROR and "Submit.symbols" in fields[0]
        rogue.send(protocol.encode(protocol.SUBMIT, ["loom/data/const"], [],
                                   [[1, 0, b"x", [], 0, True, -1, None]], False, False, []))
        assert rogue.poll(5000)
        code, fields = protocol.decode(rogue.recv())
        assert code == protocol.SUBMIT_REFUSED and "not in this client's range" in fields[1]
    finally:
        rogue.close()
        context.term()
    assert client.submit_one(tasks.const("alive")).gather() == b"alive"


def test_protocol_version_mismatch_is_a_clear_error(shared_cluster):
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://{shared_cluster.host}:{shared_cluster.port}")
    socket.send(protocol.encode(protocol.HELLO_CLIENT, protocol.PROTOCOL_VERSION + 41))
    assert socket.poll(5000)
    code, (message, fatal) = protocol.decode(socket.recv())
    socket.close()
    context.term()
    assert code == protocol.ERROR and fatal
    assert "protocol version mismatch" in message and str(protocol.PROTOCOL_VERSION + 41) in message


def test_killed_client_mid_plan_leaves_the_broker_serving(shared_cluster, client):
    script = textwrap.dedent(f"""
        from hyperloom.client import Client, tasks
        client = Client({shared_cluster.host!r}, {shared_cluster.port})
        futures = client.submit([tasks.run("sleep 30") for _ in range(4)]
                                + [tasks.const("held") for _ in range(100)])
        client.wait(futures[4:])
        print("submitted", flush=True)
        import time; time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline().strip() == b"submitted"
        assert client.get_stats()["n_tasks"] >= 100
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    wait_until(lambda: client.get_stats()["n_tasks"] == 0, timeout=10,
               message="the killed client's tasks to be released")
    assert client.get_stats()["n_data_objects"] == 0
    assert client.submit_one(tasks.const("next")).gather() == b"next"
