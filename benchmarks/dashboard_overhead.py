"""What a connected loom-dashboard costs a plan: the suite's ``independent`` scenario without
and with a dashboard polling the broker (every 0.5 s, as it does by default).

    python benchmarks/dashboard_overhead.py [--rounds R] [--repeat N] [--quick]

Each round runs ``python -m benchmarks --scenarios independent --no-dask`` twice, once
plain and once with ``HYPERLOOM_BENCH_DASHBOARD=1`` (LocalCluster(dashboard=True)); the
order alternates between rounds so a machine that gets busier or quieter favours neither.
Prints the median throughput of each mode per case and their ratio, and appends one JSON
line per case (scenario "dashboard-overhead") to --json. No browser is involved: a page
talks only to the dashboard process, never to the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import DEFAULT_JSON, metadata  # noqa: E402

MODES = ("plain", "dashboard")


def run_suite(mode, args, out: Path) -> None:
    env = dict(os.environ, HYPERLOOM_BENCH_DASHBOARD="1" if mode == "dashboard" else "0")
    command = [sys.executable, "-m", "benchmarks", "--scenarios", "independent", "--no-dask",
               "--repeat", str(args.repeat), "--json", str(out)]
    if args.quick:
        command.append("--quick")
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def throughputs(path: Path) -> dict:
    """case -> every repetition's throughput in the file."""
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("metric") == "throughput" and record.get("repetitions"):
            found.setdefault(record["case"], []).extend(record["repetitions"])
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per suite run")
    parser.add_argument("--quick", action="store_true", help="the suite's small sizes")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = {mode: Path(tmp) / f"{mode}.jsonl" for mode in MODES}
        for round_number in range(args.rounds):
            order = MODES if round_number % 2 == 0 else MODES[::-1]
            for mode in order:
                print(f"round {round_number + 1}/{args.rounds}: {mode}", file=sys.stderr)
                run_suite(mode, args, files[mode])
        results = {mode: throughputs(path) for mode, path in files.items()}
    meta = metadata()
    with open(args.json, "a", encoding="utf-8") as out:
        for case in results["plain"]:
            plain = statistics.median(results["plain"][case])
            watched = statistics.median(results["dashboard"].get(case, [0]))
            print(f"independent {case}: {plain:,.0f} tasks/s plain, {watched:,.0f} tasks/s with "
                  f"a dashboard ({watched / plain:.2f}x)")
            out.write(json.dumps({"scenario": "dashboard-overhead", "case": case,
                                  "unit": "tasks/s", "plain": results["plain"][case],
                                  "dashboard": results["dashboard"].get(case, []),
                                  "ratio": watched / plain, **meta}, default=str) + "\n")


if __name__ == "__main__":
    main()
