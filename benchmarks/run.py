"""The suite's runner: options, the scenario loop (hyperloom, then Dask, then
any reference measurement, for each scenario), cluster lifetime, the table
and the JSON lines. ``python -m benchmarks`` and ``python benchmarks/run.py``
both land in ``main()``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (DEFAULT_JSON, Row, append_json, errors_report,
                               metadata, prepare_environment, table, time_limit)

SYSTEMS = ("hyperloom", "dask")


def parse_args(argv=None):
    from benchmarks.scenarios import SCENARIOS
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated subset of: " + ", ".join(SCENARIOS))
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (median)")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--no-dask", action="store_true", help="hyperloom only")
    ap.add_argument("--no-hyperloom", action="store_true", help="Dask only")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes, one core each (default 2)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="JSON lines output")
    ap.add_argument("--dask-1m", action="store_true",
                    help="also submit the 1M-task plan to Dask")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds one repetition may take before it is n/a")
    args = ap.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ") + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- clusters


class ClusterSlot:
    """At most one cluster alive at a time, reused while (system, workers, pin)
    stays the same; discarded after an error so the next case starts clean."""

    def __init__(self):
        self.key, self.cluster = None, None

    def get(self, system: str, workers: int, pin: bool = False):
        pin = pin and system == "hyperloom"  # Dask has no pinning: its cluster is reused
        if self.key != (system, workers, pin):
            self.close()
            self.cluster = start_cluster(system, workers, pin)
            self.key = (system, workers, pin)
        return self.cluster

    def close(self):
        cluster, self.cluster, self.key = self.cluster, None, None
        if cluster is not None:
            try:
                cluster.close()
            except Exception as exc:
                log(f"  (error while stopping cluster: {exc!r})")


def start_cluster(system: str, workers: int, pin: bool = False):
    if system == "hyperloom":
        from benchmarks.loom_side import LoomCluster, warmup
        cluster = LoomCluster(workers, pin)
    else:
        from benchmarks.dask_cluster import DaskCluster
        from benchmarks.dask_side import warmup
        cluster = DaskCluster(workers)
    cluster.start()
    try:
        warmup(cluster)
    except BaseException:
        cluster.close()
        raise
    return cluster


def side_function(case, system):
    return case.loom if system == "hyperloom" else case.dask


# ---------------------------------------------------------------- one case


def make_rows(case, system, params):
    load = tuple(round(x, 2) for x in os.getloadavg())
    return [Row(case.scenario, case.name, m.label, m.unit, system, params,
                higher_is_better=m.higher_is_better, loadavg=load)
            for m in case.metrics]


def record(rows, case, values: dict) -> None:
    for row, metric in zip(rows, case.metrics):
        value = values.get(metric.key)
        if value is not None:
            row.reps.append(value)


def fail(rows, message: str) -> None:
    for row in rows:
        row.error = message


def one_rep(case, system, params, slot, workers, timeout):
    if system == "pyzmq":
        with time_limit(timeout):
            return case.reference(params)
    try:
        with time_limit(timeout):
            return side_function(case, system)(slot.get(system, workers, case.pin), params)
    finally:
        if case.fresh:  # outside the time limit: teardown is never cut short
            slot.close()


def run_case(case, system, args, slot) -> list[Row]:
    workers = case.workers or args.workers
    params = {**case.params_for(system), "workers": workers}
    rows = make_rows(case, system, params)
    for rep in range(args.repeat):
        log(f"[{case.scenario}] {system:9s} {case.name}: rep {rep + 1}/{args.repeat}")
        try:
            values = one_rep(case, system, params, slot, workers, args.timeout)
        except Exception as exc:
            log(traceback.format_exc())
            fail(rows, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            slot.close()
            return rows
        record(rows, case, values)
        log("    " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()
                               if isinstance(v, (int, float))))
    for row in rows:
        row.skipped = not row.reps and not row.error
    if system == "pyzmq":
        rows = [row for row in rows if not row.skipped]
    return rows


def systems_for(args):
    systems = list(SYSTEMS)
    if args.no_dask:
        systems.remove("dask")
    if args.no_hyperloom:
        systems.remove("hyperloom")
    return systems


def run_scenario(name, args) -> list[Row]:
    from benchmarks.scenarios import build
    return run_cases(build(name, args), args)


def run_cases(cases, args) -> list[Row]:
    """Every case on hyperloom, then on Dask (one cluster at a time), then
    the cases' reference measurements."""
    rows = []
    for system in systems_for(args):
        slot = ClusterSlot()
        try:
            for case in cases:
                if side_function(case, system) is not None:
                    rows += run_case(case, system, args, slot)
        finally:
            slot.close()
    for case in cases:
        if case.reference is not None:
            rows += run_case(case, "pyzmq", args, ClusterSlot())
    return rows


# ---------------------------------------------------------------- main


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every cluster's finally-block runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def main(argv=None) -> int:
    prepare_environment()
    args = parse_args(argv)
    exit_on_sigterm()
    from benchmarks.dask_cluster import quiet_client_logging
    quiet_client_logging()
    meta = suite_metadata()
    started = time.perf_counter()
    all_rows = []
    for name in args.scenarios:
        rows = run_scenario(name, args)
        append_json(rows, args.json, meta)
        all_rows += rows
    print_report(all_rows, args, meta, started)
    return 0


HYPERLOOM_DESCRIPTION = ("hyperloom: hyperloom.LocalCluster(workers=W, cpus=1, "
                         "worker_args=('--nopin',)) (loom-broker + W loom-worker processes; "
                         "cases marked 'pinned' without --nopin)")


def suite_metadata() -> dict:
    """metadata() plus how each system was set up (stored in every record)."""
    from benchmarks.dask_cluster import CONFIG_DESCRIPTION
    return {**metadata(), "setup": {"dask": CONFIG_DESCRIPTION,
                                    "hyperloom": HYPERLOOM_DESCRIPTION}}


def print_report(rows, args, meta, started) -> None:
    from benchmarks.dask_cluster import CONFIG_DESCRIPTION
    print()
    print(f"hyperloom vs Dask, {args.workers} single-core worker processes, "
          f"median of {args.repeat}{' (--quick sizes)' if getattr(args, 'quick', False) else ''}; "
          f"{meta['machine']['nproc']} x {meta['machine']['cpu_model']}; "
          f"load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(CONFIG_DESCRIPTION)
    print(HYPERLOOM_DESCRIPTION)
    print()
    print(table(rows))
    report = errors_report(rows)
    if report:
        print()
        print(report)
    print(f"\n{len([r for r in rows if not r.skipped])} rows appended to "
          f"{args.json}; took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
