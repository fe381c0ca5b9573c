"""How much tracing slows a plan: 100,000 tiny tasks with and without set_trace.

    python benchmarks/trace_overhead.py [--tasks N] [--repeat R]

Prints the median time of each and the overhead in percent (the goal is < 10 %).
"""

import argparse
import statistics
import tempfile
import time

import hyperloom
from hyperloom.client import tasks


def plan(n, shape):
    if shape == "independent":
        return [tasks.const(b"x%d" % i) for i in range(n)]
    # "pairs": data dependencies, so transfers are traced too (half the merges move data)
    consts = [tasks.const(b"x%d" % i) for i in range(n // 2)]
    return [tasks.merge((consts[i], consts[(i + 1) % len(consts)])) for i in range(len(consts))]


def run_once(client, n, shape, trace_dir):
    if trace_dir is not None:
        client.set_trace(trace_dir)
    start = time.perf_counter()
    client.gather(client.submit(plan(n, shape)))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plan", choices=("pairs", "independent"), default="pairs",
                        help="pairs: merges of const pairs (with transfers); independent: consts")
    args = parser.parse_args()
    times = {"plain": [], "traced": []}
    for _ in range(args.repeat):
        for mode in ("plain", "traced"):
            with hyperloom.LocalCluster(workers=2, cpus=1) as cluster, \
                    tempfile.TemporaryDirectory() as trace_root:
                client = cluster.client()
                trace_dir = f"{trace_root}/trace" if mode == "traced" else None
                times[mode].append(run_once(client, args.tasks, args.plan, trace_dir))
    plain, traced = (statistics.median(times[m]) for m in ("plain", "traced"))
    print(f"{args.tasks} tasks ({args.plan}), 2 workers x 1 core, median of {args.repeat}:")
    print(f"  without tracing {plain:.3f} s ({args.tasks / plain:,.0f} tasks/s)")
    print(f"  with tracing    {traced:.3f} s ({args.tasks / traced:,.0f} tasks/s)")
    print(f"  overhead        {100 * (traced / plain - 1):+.1f} %")


if __name__ == "__main__":
    main()
