"""Many workers: registration time and the broker's CPU per task, at 2 .. 256 workers.

    python benchmarks/cluster_scale.py --workers 2,16,64,256 \
        [--independent 60000] [--layers 10 --width 10000]

For each worker count W it starts a broker and W one-core ``loom-worker`` processes
(oversubscribed where W exceeds the cores), and prints

* ``register``: seconds from starting the workers until the broker counts all W;
* ``independent``: N tiny independent tasks (``const``) submitted and gathered: tasks/s
  and the broker's CPU (user + system, from psutil) per task;
* ``crossing``: a plan of LAYERS x WIDTH tasks with dependencies, whose inputs cross
  between workers: layer 0 is WIDTH ``const`` tasks, each task of layer k merges task i
  and task (7 i + 1) mod WIDTH of layer k - 1, so almost every task needs an object
  from another worker (pushed worker to worker, never through the broker); the last
  layer is waited for (not fetched). Default 10 x 10,000 = 100,000 tasks.

Each measurement is one run (this is a scaling curve, not a comparison); the machine's
load average at start is printed, since oversubscribed workers share the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from hyperloom import LocalCluster
from hyperloom.client import tasks


def broker_cpu(cluster) -> float:
    times = psutil.Process(cluster.broker_pid).cpu_times()
    return times.user + times.system


def register(n_workers: int) -> tuple[LocalCluster, float]:
    cluster = LocalCluster(workers=0, cpus=1, log_level="warning")
    cluster.start()
    start = time.perf_counter()
    for _ in range(n_workers):
        cluster.add_worker(cpus=1)
    cluster.wait_for_workers(n_workers, timeout=600)
    return cluster, time.perf_counter() - start


def independent(cluster, n: int) -> tuple[float, float]:
    client = cluster.client()
    cpu0, t0 = broker_cpu(cluster), time.perf_counter()
    results = client.gather(client.submit([tasks.const(b"x%d" % i) for i in range(n)]))
    elapsed, cpu = time.perf_counter() - t0, broker_cpu(cluster) - cpu0
    assert len(results) == n and results[-1] == b"x%d" % (n - 1)
    client.close()
    return n / elapsed, cpu / n * 1e6


def crossing(cluster, layers: int, width: int) -> tuple[float, float]:
    client = cluster.client()
    previous = [tasks.const(b"x") for _ in range(width)]
    for _ in range(1, layers):
        previous = [tasks.merge([previous[i], previous[(7 * i + 1) % width]])
                    for i in range(width)]
    n = layers * width
    cpu0, t0 = broker_cpu(cluster), time.perf_counter()
    futures = client.submit(previous)
    client.wait(futures)
    elapsed, cpu = time.perf_counter() - t0, broker_cpu(cluster) - cpu0
    sample = client.fetch_one(futures[0])
    assert sample == b"x" * 2 ** (layers - 1), len(sample)
    client.close()
    return n / elapsed, cpu / n * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2,16", help="worker counts (default 2,16)")
    parser.add_argument("--independent", type=int, default=60_000, metavar="N")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--width", type=int, default=10_000)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    print(f"cores {os.cpu_count()}, load average at start {os.getloadavg()[0]:.1f}; "
          f"independent: {args.independent} tasks; crossing: {args.layers} x {args.width} = "
          f"{args.layers * args.width} tasks", flush=True)
    print(f"{'workers':>7} {'register':>9} {'indep tasks/s':>13} {'broker µs/task':>14} "
          f"{'cross tasks/s':>13} {'broker µs/task':>14}", flush=True)
    for count in counts:
        cluster, registration = register(count)
        try:
            indep_rate, indep_cpu = independent(cluster, args.independent)
            cross_rate, cross_cpu = crossing(cluster, args.layers, args.width)
        finally:
            cluster.stop(timeout=60)
        print(f"{count:>7} {registration:>8.1f}s {indep_rate:>13,.0f} {indep_cpu:>14.1f} "
              f"{cross_rate:>13,.0f} {cross_cpu:>14.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
