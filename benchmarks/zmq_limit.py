"""Bare pyzmq PUSH/PULL throughput between two processes: the ceiling any
ZeroMQ-based transfer on this machine can reach.

The parent binds an ack PULL socket and spawns ``python -m
benchmarks.zmq_limit --serve ACK_PORT COUNT``; the child binds a data PULL
socket, reports its port, receives one warm-up message and COUNT timed
messages, and acks each phase. The parent PUSHes the same object (zero-copy).
"""

from __future__ import annotations

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


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        for size in (10_000_000, 100_000_000):
            print(f"{size / 1e6:.0f} MB: {measure(size):.2f} GB/s")
