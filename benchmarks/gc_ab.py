"""The broker's and workers' garbage-collection tuning, A/B: the same plan with CPython's default
thresholds and with hyperloom's (``GC_THRESHOLDS`` in hyperloom/cli.py), alternating.

    python benchmarks/gc_ab.py [--plan pairs|independent] [--tasks N] [--repeat R]

Each repetition runs the plan once with ``HYPERLOOM_GC_THRESHOLDS=700,10,10`` (CPython's default)
in the environment of the broker and workers and once without it, each on a fresh local cluster
(2 workers x 1 core) warmed up by a small plan first; the order alternates. Prints the median wall
time and the broker's and workers' CPU of each, and the per-repetition ratios.
"""

import argparse
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.trace_overhead import measure_plan

DEFAULT = "700,10,10"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--plan", choices=("pairs", "independent"), default="independent")
    args = parser.parse_args()
    runs = {"default": [], "tuned": []}
    for i in range(args.repeat):
        for mode in ("default", "tuned") if i % 2 == 0 else ("tuned", "default"):
            if mode == "default":
                os.environ["HYPERLOOM_GC_THRESHOLDS"] = DEFAULT  # the cluster inherits it
            else:
                os.environ.pop("HYPERLOOM_GC_THRESHOLDS", None)
            runs[mode].append(measure_plan(args.tasks, args.plan, traced=False))
    os.environ.pop("HYPERLOOM_GC_THRESHOLDS", None)
    print(f"{args.tasks} tasks ({args.plan}), 2 workers x 1 core, {args.repeat} repetitions:")
    for mode, label in (("default", f"CPython default ({DEFAULT})"), ("tuned", "hyperloom's")):
        wall, broker, workers = (statistics.median(run[i] for run in runs[mode]) for i in range(3))
        print(f"  {label:<26} median {wall:.3f} s ({args.tasks / wall:,.0f} tasks/s), "
              f"CPU: broker {broker:.2f} s, workers {workers:.2f} s")
    ratios = [t[0] / d[0] for d, t in zip(runs["default"], runs["tuned"])]
    print(f"  tuned / default wall: median {statistics.median(ratios):.2f} "
          f"(per repetition: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
