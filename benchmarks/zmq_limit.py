"""Bare pyzmq limits on this machine: what no ZeroMQ-based runtime in Python beats.

``measure``: PUSH/PULL throughput between two processes, the ceiling of any
transfer. The parent binds an ack PULL socket and spawns ``python -m
benchmarks.zmq_limit --serve ACK_PORT COUNT``; the child binds a data PULL
socket, reports its port, receives one warm-up message and COUNT timed
messages, and acks each phase. The parent PUSHes the same object (zero-copy).

``round_trip``: the four hops of a one-task round trip (client -> broker ->
worker -> broker -> client) with nothing but the messages: a ROUTER relay
process (``--relay``) and a DEALER echo process (``--echo``), each a poll loop
as hyperloom's, and this process as the client, sending 20-byte messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.common import REPO_ROOT, kill_group, prepare_environment


def _serve(ack_port: int, count: int) -> None:
    import zmq
    ctx = zmq.Context()
    ack = ctx.socket(zmq.PUSH)
    ack.connect(f"tcp://127.0.0.1:{ack_port}")
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    ack.send_string(str(port))
    pull.recv(copy=False)
    ack.send(b"warm")
    for _ in range(count):
        pull.recv(copy=False)
    ack.send(b"done")
    ack.close(linger=1000)
    pull.close(linger=0)
    ctx.term()


def measure(nbytes: int, count: int = 5, timeout: float = 120.0) -> float:
    """GB/s of ``count`` messages of ``nbytes`` from this process to another."""
    import zmq
    prepare_environment()
    ctx = zmq.Context()
    ack = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    ack.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    proc = None
    try:
        ack_port = ack.bind_to_random_port("tcp://127.0.0.1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.zmq_limit", "--serve",
             str(ack_port), str(count)], cwd=REPO_ROOT, start_new_session=True)
        push.connect(f"tcp://127.0.0.1:{int(ack.recv_string())}")
        payload = bytes(nbytes)
        push.send(payload, copy=False)
        assert ack.recv() == b"warm"
        t0 = time.perf_counter()
        for _ in range(count):
            push.send(payload, copy=False)
        assert ack.recv() == b"done"
        elapsed = time.perf_counter() - t0
        proc.wait(timeout)
    finally:
        push.close(linger=0)
        ack.close(linger=0)
        ctx.term()
        if proc is not None:
            kill_group(proc)
    return nbytes * count / elapsed / 1e9


def _relay(port_file: str) -> None:
    """The broker's part: whatever the worker sends goes to the client, and back."""
    import zmq
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    worker = client = None
    while True:
        poller.poll(1000)
        while True:
            try:
                identity, body = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if body == b"worker":
                worker = identity
            elif identity == worker:
                router.send_multipart([client, body])
            elif worker is not None:  # else dropped: the client sends again
                client = identity
                router.send_multipart([worker, body])


def _echo(port: int) -> None:
    """The worker's part: every message goes straight back."""
    import zmq
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"worker")
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    while True:
        poller.poll(1000)
        while True:
            try:
                dealer.send(dealer.recv(zmq.NOBLOCK))
            except zmq.Again:
                break


def round_trip(count: int = 2000, timeout: float = 60.0) -> float:
    """Median milliseconds of ``count`` four-hop round trips (after 200 unmeasured)."""
    import tempfile
    import zmq
    prepare_environment()
    procs = []
    ctx = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        with tempfile.TemporaryDirectory() as directory:
            port_file = os.path.join(directory, "port")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.zmq_limit", "--relay", port_file],
                cwd=REPO_ROOT, start_new_session=True))
            deadline = time.monotonic() + timeout
            while not os.path.exists(port_file):
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("the pyzmq relay did not start")
                time.sleep(0.01)
            port = int(open(port_file).read())
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.zmq_limit", "--echo", str(port)],
            cwd=REPO_ROOT, start_new_session=True))
        client.connect(f"tcp://127.0.0.1:{port}")
        times = []
        perf = time.perf_counter
        message = bytes(20)
        while True:  # until the worker's hello reached the relay: a reply comes back
            client.send(message)
            if client.poll(200):
                client.recv()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the pyzmq echo did not start")
        for i in range(200 + count):
            t0 = perf()
            client.send(message)
            client.recv()
            if i >= 200:
                times.append(perf() - t0)
    finally:
        client.close(linger=0)
        ctx.term()
        for proc in procs:
            kill_group(proc)
    times.sort()
    return times[len(times) // 2] * 1e3


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--relay":
        _relay(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--echo":
        _echo(int(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "--round-trip":
        print(f"four-hop round trip: {round_trip():.3f} ms (median)")
    else:
        for size in (10_000_000, 100_000_000):
            print(f"{size / 1e6:.0f} MB: {measure(size):.2f} GB/s")
