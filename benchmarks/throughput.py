"""Standalone throughput benchmark: N independent tiny tasks (N = 10,000 and
100,000) submitted at once and gathered, on W local single-core workers
(default 2); prints tasks/s for hyperloom and Dask and their ratio.

Same measurement as the suite's ``independent`` scenario (it reuses its code);
results are appended to benchmarks/results.jsonl as scenario "throughput".

    python benchmarks/throughput.py [--sizes 10000,100000] [--repeat 3]
                                    [--workers 2] [--no-dask] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import dask_side, loom_side
from benchmarks.common import (add_standalone_options, append_json,
                               prepare_environment)
from benchmarks.run import exit_on_sigterm, print_report, run_cases, suite_metadata
from benchmarks.scenarios import THROUGHPUT, Case


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    add_standalone_options(ap)
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


def main(argv=None) -> int:
    prepare_environment()
    args = parse_args(argv)
    exit_on_sigterm()
    from benchmarks.dask_cluster import quiet_client_logging
    quiet_client_logging()
    meta, started = suite_metadata(), time.perf_counter()
    cases = [Case("throughput", f"N={n:,}", {"n": n}, [THROUGHPUT],
                  loom_side.bench_independent, dask_side.bench_independent)
             for n in args.sizes]
    rows = run_cases(cases, args)
    append_json(rows, args.json, meta)
    print_report(rows, args, meta, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
