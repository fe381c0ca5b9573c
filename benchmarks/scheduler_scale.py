"""Cost of the broker's scheduler alone (no sockets): many ready tasks, many workers.

    python benchmarks/scheduler_scale.py

For each case it submits N ready tasks to a BrokerState with W workers of C
cores, runs one scheduling round (the pure ``schedule`` and the state applying
its answer: transitions, compute entries) and prints how long it took, how
many tasks it placed and the cost per placed task. The round's work is bounded by what
the workers can take (cores x overbooking, or the light-task queue), not by N.
"""

import time

from hyperloom import protocol
from hyperloom.broker.state import BrokerState

RUN, CONST = protocol.TASK_RUN, protocol.TASK_CONST


def one_round(n_tasks, n_workers, cpus, task_type, n_cpus, with_inputs=False):
    state = BrokerState()
    client = state.on_client_hello(b"c", protocol.PROTOCOL_VERSION, 0.0)
    workers = [state.on_worker_hello(b"w%d" % i, protocol.PROTOCOL_VERSION, cpus,
                                     f"tcp://w{i}:1", [RUN, CONST], "h", 0.0)
               for i in range(n_workers)]
    base = client.number << protocol.CLIENT_SHIFT
    entries = []
    if with_inputs:  # one finished 100 MiB input per task, spread over the workers
        sources = [[base + i, 1, b"", [], 0, True, -1, None] for i in range(n_tasks)]
        state.on_submit(client, [RUN, CONST], [], sources, False, False)
        state.schedule_round()
        state.outbox.clear()
        for worker in workers:
            for node in list(worker.assigned):
                state._finish(node, worker, 100 * 2**20, 0)
        offset = n_tasks
        entries = [[base + offset + i, 0, b"", [base + i], n_cpus, True, -1, None]
                   for i in range(n_tasks)]
    else:
        entries = [[base + i, 0 if task_type == RUN else 1, b"", [], n_cpus, True, -1, None]
                   for i in range(n_tasks)]
    state.on_submit(client, [RUN, CONST], [], entries, False, False)
    state.outbox.clear()
    start = time.perf_counter()
    state.schedule_round()
    elapsed = time.perf_counter() - start
    placed = sum(len(v) for v in state.outbox.compute.values())
    return elapsed, placed


def main():
    print(f"{'ready':>8} {'workers':>7} {'cpus':>4} {'kind':<14} {'round':>9} {'placed':>7} "
          f"{'per task':>9}")
    cases = [
        (200_000, 8, 24, RUN, 1, False, "1-core tasks"),
        (600_000, 100, 24, RUN, 1, False, "1-core tasks"),
        (200_000, 320, 24, RUN, 1, False, "1-core tasks"),
        (200_000, 100, 24, CONST, 0, False, "light tasks"),
        (50_000, 100, 24, RUN, 1, True, "with inputs"),
    ]
    for n, w, c, task_type, n_cpus, inputs, kind in cases:
        elapsed, placed = one_round(n, w, c, task_type, n_cpus, inputs)
        print(f"{n:>8} {w:>7} {c:>4} {kind:<14} {elapsed * 1000:>7.1f}ms {placed:>7} "
              f"{elapsed / max(placed, 1) * 1e6:>7.1f}µs")


if __name__ == "__main__":
    main()
