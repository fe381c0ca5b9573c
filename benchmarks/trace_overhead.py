"""How much tracing slows a plan: 100,000 tiny tasks with and without set_trace.

    python benchmarks/trace_overhead.py [--tasks N] [--repeat R] [--plan pairs|independent]
                                        [--control]

Each repetition runs the plan once untraced and once traced, each on a fresh local cluster that
first runs a small warm-up plan; the order alternates (plain-traced, traced-plain, ...) so a
machine that slowly gets busier or quieter favours neither. Prints the median wall time of
each mode, the median of the per-repetition ratios (the overhead; the goal is < 10 %), and the
CPU seconds the broker and the workers spent on the timed plan.

On a shared VM, runs of the same plan differ by ±10 % from one minute to the next.
``--control`` runs the same comparison with tracing off on both sides: the "overhead" it prints
is the noise floor of the measurement on this machine right now.
"""

import argparse
import statistics
import tempfile
import time

import psutil

import hyperloom
from hyperloom.client import tasks


def plan(n, shape):
    if shape == "independent":
        return [tasks.const(b"x%d" % i) for i in range(n)]
    # "pairs": data dependencies, so transfers are traced too (half the merges move data)
    consts = [tasks.const(b"x%d" % i) for i in range(n // 2)]
    return [tasks.merge((consts[i], consts[(i + 1) % len(consts)])) for i in range(len(consts))]


def cpu_seconds(processes):
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def measure_plan(n, shape, traced):
    """(wall s, broker CPU s, workers' CPU s) of one timed run of the plan on a fresh cluster."""
    with hyperloom.LocalCluster(workers=2, cpus=1) as cluster, \
            tempfile.TemporaryDirectory() as trace_root:
        client = cluster.client()
        # Warm both modes alike (imports, first connections between workers) before timing.
        client.gather(client.submit(plan(min(n, 5_000), shape)))
        if traced:
            client.set_trace(f"{trace_root}/trace")
        broker = [psutil.Process(cluster.broker.pid)]
        workers = [psutil.Process(p.pid) for p in cluster.workers]
        cpu_before = cpu_seconds(broker), cpu_seconds(workers)
        start = time.perf_counter()
        client.gather(client.submit(plan(n, shape)))
        wall = time.perf_counter() - start
        return wall, cpu_seconds(broker) - cpu_before[0], cpu_seconds(workers) - cpu_before[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--plan", choices=("pairs", "independent"), default="pairs",
                        help="pairs: merges of const pairs (with transfers); independent: consts")
    parser.add_argument("--control", action="store_true",
                        help="trace neither side: measures the noise floor")
    args = parser.parse_args()
    runs = {"plain": [], "traced": []}
    for i in range(args.repeat):
        order = ("plain", "traced") if i % 2 == 0 else ("traced", "plain")
        for mode in order:
            runs[mode].append(measure_plan(args.tasks, args.plan,
                                          traced=mode == "traced" and not args.control))
    wall = {mode: statistics.median(run[0] for run in runs[mode]) for mode in runs}
    broker = {mode: statistics.median(run[1] for run in runs[mode]) for mode in runs}
    workers = {mode: statistics.median(run[2] for run in runs[mode]) for mode in runs}
    ratios = [t[0] / p[0] for p, t in zip(runs["plain"], runs["traced"])]
    cpu_ratios = [(t[1] + t[2]) / (p[1] + p[2]) for p, t in zip(runs["plain"], runs["traced"])]
    second = "plain again (control)" if args.control else "with tracing"
    print(f"{args.tasks} tasks ({args.plan}), 2 workers x 1 core, {args.repeat} repetitions:")
    for mode, label in (("plain", "without tracing"), ("traced", second)):
        print(f"  {label:<22} median {wall[mode]:.3f} s ({args.tasks / wall[mode]:,.0f} tasks/s),"
              f" CPU: broker {broker[mode]:.2f} s, workers {workers[mode]:.2f} s")
    print(f"  overhead               {100 * (statistics.median(ratios) - 1):+.1f} % wall "
          f"(per-repetition: {', '.join(f'{100 * (r - 1):+.0f}' for r in ratios)}), "
          f"{100 * (statistics.median(cpu_ratios) - 1):+.1f} % CPU of broker and workers")
    for name, cpu in (("broker", broker), ("workers", workers)):
        extra = (cpu["traced"] - cpu["plain"]) / args.tasks
        print(f"  {name + ' CPU':<22} {1e6 * extra:+.2f} µs per task")


if __name__ == "__main__":
    main()
