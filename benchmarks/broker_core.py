"""CPU per task of the broker core alone: no sockets, no workers, no noise from them.

    python benchmarks/broker_core.py [--repeat 5] [--profile independent]

For each plan shape it drives one ``BrokerState`` with two 1-core worker
records: submit, then rounds of ``on_drained`` (expand, schedule, apply) and
TasksDone for everything sent, then a fetch-and-release of the results; it
prints the best of ``--repeat`` runs in µs per task. On a shared machine the
best run is the one least disturbed; compare two versions by alternating.
``--profile SHAPE`` prints a cProfile of one run instead. ``--journal DIR``
gives the core a journal in DIR (journal.JournalWriter), committed once per
round as the server does (fsynced when results finished in it).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import tempfile
import time

from hyperloom import protocol
from hyperloom.broker.state import BrokerState

CONST, MERGE = protocol.TASK_CONST, protocol.TASK_MERGE


def plan(shape: str, n: int, base: int) -> list:
    """Submit entries: ``independent`` results, ``merge-pairs``, or a binary ``tree``."""
    leaves = [[base + i, 0, b"", [], 0, shape == "independent", -1, None] for i in range(n)]
    if shape == "independent":
        return leaves
    if shape == "merge-pairs":
        return leaves + [[base + n + i, 1, b"", [base + 2 * i, base + 2 * i + 1], 0, True, -1,
                          None] for i in range(n // 2)]
    entries, level, next_id = leaves, list(range(n)), n
    while len(level) > 1:
        upper = []
        for j in range(0, len(level), 2):
            entries.append([base + next_id, 1, b"", [base + level[j], base + level[j + 1]], 0,
                            len(level) == 2, -1, None])
            upper.append(next_id)
            next_id += 1
        level = upper
    return entries


def run(shape: str, n: int, journal_dir: str | None = None) -> float:
    """One run; µs of broker-core time per task."""
    writer = None
    if journal_dir is not None:
        from hyperloom.broker.journal import JournalWriter
        fd, path = tempfile.mkstemp(dir=journal_dir, suffix=".journal")
        os.close(fd)
        os.remove(path)
        writer = JournalWriter(path)
    state = BrokerState(journal=writer)
    client = state.on_client_hello(b"c", protocol.PROTOCOL_VERSION, 0.0)
    for i in range(2):
        state.on_worker_hello(b"w%d" % i, protocol.PROTOCOL_VERSION, 1, f"tcp://w{i}:1",
                              [CONST, MERGE], "h", 0.0)
    entries = plan(shape, n, client.number << protocol.CLIENT_SHIFT)
    start = time.perf_counter()
    state.on_submit(client, [CONST, MERGE], [], entries, False, False)
    while True:
        state.outbox.clear()
        state.on_drained(0.0)
        compute = dict(state.outbox.compute)
        if not compute:
            break
        state.outbox.clear()
        for worker, sent in compute.items():
            state.on_tasks_done(worker, [[e[0], 8, 0] for e in sent], [], 0.0)
        if writer is not None:
            writer.commit(0.0, bool(state.outbox.finished))
    state.on_fetch(client, 1, list(client.results), True)
    if writer is not None:
        writer.commit(0.0, True)
    elapsed = time.perf_counter() - start
    if writer is not None:
        writer.close()
        run.journal_bytes = os.path.getsize(writer.path)  # type: ignore[attr-defined]
        os.remove(writer.path)
    assert not state.tasks, f"{len(state.tasks)} tasks left"
    return elapsed / len(entries) * 1e6


SHAPES = {"independent": 20000, "merge-pairs": 20000, "tree": 16384}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", choices=sorted(SHAPES))
    parser.add_argument("--journal", metavar="DIR", help="with a journal in DIR")
    args = parser.parse_args()
    gc.set_threshold(20000, 10, 10)  # as loom-broker sets it (hyperloom/cli.py)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, args.profile, SHAPES[args.profile], args.journal)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        return
    for shape, n in SHAPES.items():
        best = min(run(shape, n, args.journal) for _ in range(args.repeat))
        n_tasks = len(plan(shape, n, 0))
        size = (f"  journal {run.journal_bytes / n_tasks:5.1f} bytes/task"  # type: ignore
                if args.journal else "")
        print(f"{shape:<12} {n_tasks:>7} tasks  {best:6.2f} µs/task{size}")


if __name__ == "__main__":
    main()
