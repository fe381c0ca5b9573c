"""What ``loom-broker --journal`` costs: broker CPU and wall time per task, with and without.

    python benchmarks/journal_cost.py [--tasks 20000] [--round-trips 1000] [--repeat 5]
                                      [--shapes independent,tree,round-trip] [--dir DIR]

Alternates runs of one plan on a LocalCluster (2 workers) with and without a
journal (a fresh file in DIR each run, default the temp dir) and prints the
median over ``--repeat`` runs of the broker's CPU time per task (user + system,
from /proc, less disturbed by other load than wall time), the wall time, and the
journal's bytes per task. Plans: ``independent`` (N const results, gathered)
and ``tree`` (a binary merge tree over N/2 leaves), and ``round-trip``: R plans
of one task, each submitted and gathered before the next (what a journaled
broker adds per plan: its fsync before answering, and its ``Accepted``). On a
shared machine compare the CPU column; the wall column shows fsync waits too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import psutil


def plan(tasks, shape: str, n: int):
    if shape == "round-trip":
        return []   # made one task at a time (one_run)
    if shape == "independent":
        return [tasks.const(b"x%d" % i) for i in range(n)]
    level = [tasks.const(b"%d," % i) for i in range(n // 2)]
    while len(level) > 1:
        level = [tasks.merge(level[i:i + 2]) for i in range(0, len(level), 2)]
    return level


def one_run(shape: str, n: int, journal_dir: str | None) -> tuple[float, float, float]:
    """(broker CPU µs per task, wall seconds, journal bytes per task)."""
    import hyperloom
    from hyperloom.client import tasks
    broker_args = ()
    path = None
    if journal_dir is not None:
        fd, path = tempfile.mkstemp(dir=journal_dir, suffix=".journal")
        os.close(fd)
        os.remove(path)
        broker_args = ("--journal", path)
    with hyperloom.LocalCluster(workers=2, cpus=1, worker_args=("--nopin",),
                                broker_args=broker_args) as cluster:
        client = cluster.client()
        broker = psutil.Process(cluster.broker_pid)
        work = plan(tasks, shape, n)
        before = broker.cpu_times()
        start = time.perf_counter()
        if shape == "round-trip":
            for _ in range(n):
                client.gather([client.submit_one(tasks.const(b"x"))])
        else:
            client.gather(client.submit(work))
        wall = time.perf_counter() - start
        after = broker.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
        n_tasks = n - 1 if shape == "tree" else n
        size = os.path.getsize(path) / n_tasks if path else 0.0
        client.close()
    if path:
        os.remove(path)
    return cpu / n_tasks * 1e6, wall, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--round-trips", type=int, default=1000,
                        help="plans of one task in the round-trip shape")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--shapes", default="independent,tree,round-trip")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where journals go")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        n = args.round_trips if shape == "round-trip" else args.tasks
        runs: dict[str, list[tuple[float, float, float]]] = {"without": [], "with": []}
        for _ in range(args.repeat):
            runs["without"].append(one_run(shape, n, None))
            runs["with"].append(one_run(shape, n, args.dir))
        for name, results in runs.items():
            cpu = statistics.median(r[0] for r in results)
            wall = statistics.median(r[1] for r in results)
            size = statistics.median(r[2] for r in results)
            print(f"{shape:<12} {name:<8} journal: broker CPU {cpu:6.1f} µs/task, wall "
                  f"{wall:6.3f} s" + (f", journal {size:5.1f} bytes/task" if size else ""),
                  flush=True)


if __name__ == "__main__":
    main()
