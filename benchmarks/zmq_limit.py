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
Two variants bound what a different design would gain (``python -m
benchmarks.zmq_limit --round-trip`` prints all three, with each process's CPU
per round trip): ``zmq3``, three hops, the echo answering the client itself
through a PUSH socket to the client's PULL (a worker sending a small result
straight to its client); ``tcp4``, the same four hops over plain TCP sockets
(TCP_NODELAY, epoll loops, no ZeroMQ I/O threads).
"""

from __future__ import annotations

import functools
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
        proc = _spawn("--serve", str(ack_port), str(count))
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


def _write_port(port_file: str, port: int) -> None:
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)


def _relay(port_file: str) -> None:
    """The broker's part: whatever the worker sends goes to the client, and back."""
    import zmq
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    _write_port(port_file, router.bind_to_random_port("tcp://127.0.0.1"))
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


def _echo(port: int, reply_to: str = "") -> None:
    """The worker's part: every message goes straight back, through the relay
    or (``reply_to``, a PULL address of the client) to the client itself."""
    import zmq
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    answer = dealer
    if reply_to:
        answer = ctx.socket(zmq.PUSH)
        answer.connect(reply_to)
    dealer.send(b"worker")
    poller = zmq.Poller()
    poller.register(dealer, zmq.POLLIN)
    while True:
        poller.poll(1000)
        while True:
            try:
                answer.send(dealer.recv(zmq.NOBLOCK))
            except zmq.Again:
                break


MESSAGE_BYTES = 20


def _recv_exactly(sock, n: int = MESSAGE_BYTES) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("peer closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _tcp_connect(port: int, hello: bytes):
    import socket
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(hello.ljust(MESSAGE_BYTES))
    return sock


def _tcp_relay(port_file: str) -> None:
    """``_relay`` over plain TCP: an epoll loop, fixed-size messages."""
    import select
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    _write_port(port_file, listener.getsockname()[1])
    peers = {}
    for _ in range(2):
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peers[_recv_exactly(sock).strip()] = sock
    worker, client = peers[b"worker"], peers[b"client"]
    other = {worker.fileno(): client, client.fileno(): worker}
    by_fd = {worker.fileno(): worker, client.fileno(): client}
    epoll = select.epoll()
    for fd in by_fd:
        epoll.register(fd, select.EPOLLIN)
    try:
        while True:
            for fd, _ in epoll.poll(1.0):
                other[fd].sendall(_recv_exactly(by_fd[fd]))
    except ConnectionError:  # the client is done
        return


def _tcp_echo(port: int) -> None:
    """``_echo`` over plain TCP."""
    import select
    sock = _tcp_connect(port, b"worker")
    epoll = select.epoll()
    epoll.register(sock.fileno(), select.EPOLLIN)
    try:
        while True:
            if epoll.poll(1.0):
                sock.sendall(_recv_exactly(sock))
    except ConnectionError:  # the relay is done
        return


def _spawn(*args: str):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.zmq_limit", *args],
                            cwd=REPO_ROOT, start_new_session=True)


def _wait_for_port(port_file: str, proc, deadline: float) -> int:
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the relay did not start")
        time.sleep(0.01)
    return int(open(port_file).read())


def round_trip(count: int = 2000, timeout: float = 60.0, variant: str = "zmq4",
               cpu: dict | None = None) -> float:
    """Median milliseconds of ``count`` round trips (after 200 unmeasured) of
    ``variant`` (``zmq4``, ``zmq3``, ``tcp4``: see the module's document).
    ``cpu``, if given, receives each process's µs of CPU per round trip."""
    import tempfile
    import psutil
    import zmq
    prepare_environment()
    procs = []
    ctx = zmq.Context()
    sockets = []
    deadline = time.monotonic() + timeout
    message = bytes(MESSAGE_BYTES)
    try:
        with tempfile.TemporaryDirectory() as directory:
            port_file = os.path.join(directory, "port")
            procs.append(_spawn("--tcp-relay" if variant == "tcp4" else "--relay", port_file))
            port = _wait_for_port(port_file, procs[0], deadline)
        if variant == "tcp4":
            procs.append(_spawn("--tcp-echo", str(port)))
            client = _tcp_connect(port, b"client")
            sockets.append(client)
            client.settimeout(timeout)
            send, recv = client.sendall, functools.partial(_recv_exactly, client)
        else:
            dealer = ctx.socket(zmq.DEALER)
            sockets.append(dealer)
            dealer.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
            reply_to = ""
            answers = dealer
            if variant == "zmq3":
                answers = ctx.socket(zmq.PULL)
                sockets.append(answers)
                answers.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
                reply_to = f"tcp://127.0.0.1:{answers.bind_to_random_port('tcp://127.0.0.1')}"
            procs.append(_spawn("--echo", str(port), *([reply_to] if reply_to else [])))
            dealer.connect(f"tcp://127.0.0.1:{port}")
            while True:  # until the worker's hello reached the relay: a reply comes back
                dealer.send(message)
                if answers.poll(200):
                    answers.recv()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the pyzmq echo did not start")
            send, recv = dealer.send, answers.recv
        times = []
        perf = time.perf_counter
        meters = {"client": psutil.Process(), "relay": psutil.Process(procs[0].pid),
                  "echo": psutil.Process(procs[1].pid)}
        for i in range(200 + count):
            if i == 200:
                before = {name: sum(p.cpu_times()[:2]) for name, p in meters.items()}
            t0 = perf()
            send(message)
            recv()
            if i >= 200:
                times.append(perf() - t0)
        if cpu is not None:
            for name, p in meters.items():
                cpu[name] = round((sum(p.cpu_times()[:2]) - before[name]) / count * 1e6)
    finally:
        for sock in sockets:
            sock.close(**({} if variant == "tcp4" else {"linger": 0}))
        ctx.term()
        for proc in procs:
            kill_group(proc)
    times.sort()
    return times[len(times) // 2] * 1e3


def print_round_trips(repeat: int = 3) -> None:
    for _ in range(repeat):
        for variant in ("zmq4", "zmq3", "tcp4"):
            cpu: dict = {}
            ms = round_trip(variant=variant, cpu=cpu)
            per_process = ", ".join(f"{k} {v}" for k, v in cpu.items())
            print(f"{variant}: {ms:.3f} ms (median); µs of CPU per round trip: {per_process}",
                  flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--relay":
        _relay(sys.argv[2])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "--echo":
        _echo(int(sys.argv[2]), *sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "--tcp-relay":
        _tcp_relay(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--tcp-echo":
        _tcp_echo(int(sys.argv[2]))
    elif len(sys.argv) == 2 and sys.argv[1] == "--round-trip":
        print_round_trips()
    else:
        for size in (10_000_000, 100_000_000):
            print(f"{size / 1e6:.0f} MB: {measure(size):.2f} GB/s")
