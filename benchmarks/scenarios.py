"""Scenario definitions: which cases each scenario has, their sizes (full and
``--quick``), the metrics they report, and which side functions measure them.

The measuring code itself is in loom_side.py / dask_side.py / zmq_limit.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable

from benchmarks import dask_side, loom_side, zmq_limit

SCENARIOS = ("independent", "merge", "tree", "chain", "transfer", "array", "gather",
             "plan-1m", "python", "run", "scaling")


@dataclass(frozen=True)
class Metric:
    key: str          # key in the dict a side function returns
    label: str
    unit: str
    higher_is_better: bool = True


THROUGHPUT = Metric("throughput", "throughput", "tasks/s")
OVERHEAD = Metric("overhead", "per-task time", "us/task", False)
LATENCY = Metric("latency", "round trip (median of run)", "ms", False)
GBPS_EFF = Metric("gbps_effective", "bandwidth (minus local baseline)", "GB/s")
GBPS_RAW = Metric("gbps_raw", "bytes / consumer time", "GB/s")
PLAN_METRICS = [
    Metric("build_submit", "build + submit", "s", False),
    Metric("submit_to_held", "submit -> held by broker/scheduler", "s", False),
    Metric("rss_per_task", "broker/scheduler RSS per task (held)", "B/task", False),
    Metric("peak_rss_per_task", "broker/scheduler peak RSS per task", "B/task", False),
    Metric("total", "total run (build -> results)", "s", False),
    Metric("throughput", "throughput", "tasks/s"),
]


@dataclass
class Case:
    scenario: str
    name: str
    params: dict
    metrics: list
    loom: Callable | None = None
    dask: Callable | None = None
    dask_params: dict | None = None      # overrides params for the Dask side
    workers: int | None = None           # None: the suite's --workers
    fresh: bool = False                  # a new cluster for every repetition
    pin: bool = False                    # hyperloom workers pin run tasks (no --nopin)
    reference: Callable | None = None    # -> {metric: value}, system "pyzmq"
    notes: list = field(default_factory=list)

    def params_for(self, system: str) -> dict:
        if system == "dask" and self.dask_params is not None:
            return {**self.params, **self.dask_params}
        return dict(self.params)


def _k(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _sides(name):
    return getattr(loom_side, name), getattr(dask_side, name)


# ---------------------------------------------------------------- builders


def independent(args):
    sizes = [2_000] if args.quick else [10_000, 100_000]
    return [Case("independent", f"N={_k(n)}", {"n": n}, [THROUGHPUT],
                 *_sides("bench_independent")) for n in sizes]


def merge(args):
    n = 1_000 if args.quick else 10_000
    return [Case("merge", f"{_k(n)} -> 1", {"n": n}, [THROUGHPUT],
                 *_sides("bench_merge"))]


def tree(args):
    leaves = 1_024 if args.quick else 16_384
    return [Case("tree", f"{_k(leaves)} leaves ({2 * leaves - 1} tasks)",
                 {"leaves": leaves}, [THROUGHPUT], *_sides("bench_tree"))]


def chain(args):
    n = 50 if args.quick else 200
    return [Case("chain", f"{n} sequential", {"n": n}, [LATENCY],
                 *_sides("bench_chain"),
                 reference=lambda params: {"latency": zmq_limit.round_trip()})]


def _pyzmq_reference(nbytes, count):
    return lambda params: {"gbps_effective": zmq_limit.measure(nbytes, count),
                           "gbps_raw": None}


def transfer(args):
    sizes = [10_000_000] if args.quick else [10_000_000, 100_000_000]
    return [Case("transfer", f"{n // 1_000_000} MB A->B",
                 {"nbytes": n, "samples": 5 if n <= 10_000_000 else 3},
                 [GBPS_EFF, GBPS_RAW], *_sides("bench_transfer"),
                 reference=_pyzmq_reference(n, 20 if n <= 10_000_000 else 5))
            for n in sizes]


def array(args):
    """NumPy arrays between Python tasks on different workers; 1 GB only with
    HYPERLOOM_BENCH_1GB=1 (it needs ~5 GB of free memory with Dask's copies)."""
    import os
    sizes = [10_000_000] if args.quick else [100_000_000]
    if os.environ.get("HYPERLOOM_BENCH_1GB") == "1":
        sizes.append(1_000_000_000)
    return [Case("array", f"{n // 1_000_000} MB NumPy A->B",
                 {"nbytes": n, "samples": 5 if n <= 100_000_000 else 1},
                 [GBPS_EFF, GBPS_RAW], *_sides("bench_array"),
                 reference=_pyzmq_reference(n, 20 if n <= 10_000_000 else
                                            5 if n <= 100_000_000 else 2))
            for n in sizes]


GBPS_GATHER = Metric("gbps_gather", "bytes / gather time", "GB/s")
SERVER_MB = Metric("server_mb", "broker/scheduler RSS rise while gathering", "MB", False)


def gather(args):
    """A NumPy array made by a task, gathered by the client."""
    n = 10_000_000 if args.quick else 100_000_000
    return [Case("gather", f"{n // 1_000_000} MB NumPy -> client",
                 {"nbytes": n, "samples": 5}, [GBPS_GATHER, SERVER_MB],
                 *_sides("bench_gather"))]


def plan(args):
    """hyperloom: a 1M-task plan; both: a 200k-task plan (Dask's scheduler is
    cancelled once it holds the plan: running 200k tasks through it takes
    several minutes per repetition), or the small quick sizes, run to the end."""
    if args.quick:
        big, small = (50, 1000), (50, 40)
    else:
        big, small = (1000, 1000), (1000, 200)
    cases = []
    for (chains, length), label in ((big, "plan"), (small, "submit")):
        n = chains * length
        complete = n <= 50_000
        case = Case("plan-1m", f"{label}-{_k(n)} ({chains}x{length} chains)",
                    {"chains": chains, "length": length}, PLAN_METRICS,
                    loom_side.bench_plan, dask_side.bench_plan, fresh=True,
                    dask_params={"complete": complete})
        if label == "plan" and not args.dask_1m:
            case.dask = None
        cases.append(case)
    return cases


def python(args):
    n = 1_000 if args.quick else 10_000
    return [Case("python", f"{_k(n)} py tasks", {"n": n}, [THROUGHPUT],
                 loom_side.bench_python, dask_side.bench_python)]


def run(args):
    """Without pinning (as every other case), then with it (the workers' default;
    Dask, which does not pin, runs the same tasks again for the ratio)."""
    n = 200 if args.quick else 2_000
    return [Case("run", f"{_k(n)} x 'true'{', pinned' if pin else ''}",
                 {"n": n, "pin": pin}, [THROUGHPUT], *_sides("bench_run"), pin=pin)
            for pin in (False, True)]


def scaling(args):
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    cases = []
    dask_small = 1_000 if args.quick else 10_000
    for n in sizes:
        name = f"independent N={_k(n)}"
        if n == sizes[0] and dask_small != n:
            name += f" (dask N={_k(dask_small)})"
        case = Case("scaling", name, {"n": n}, [OVERHEAD],
                    *_sides("bench_independent"), dask_params={"n": dask_small})
        if n != sizes[0]:
            case.dask = None
        cases.append(case)
    hl_n, dask_n = (10_000, 1_000) if args.quick else (100_000, 10_000)
    for workers in (1, 2, 4) if args.quick else (1, 2, 4, 8):
        cases.append(Case(
            "scaling", f"W={workers} (hl N={_k(hl_n)}, dask N={_k(dask_n)})",
            {"n": hl_n, "workers": workers}, [THROUGHPUT],
            *_sides("bench_independent"), dask_params={"n": dask_n},
            workers=workers))
    return cases


BUILDERS = {"independent": independent, "merge": merge, "tree": tree,
            "chain": chain, "transfer": transfer, "array": array, "gather": gather,
            "plan-1m": plan,
            "python": python, "run": run, "scaling": scaling}


def build(name: str, args) -> list[Case]:
    return BUILDERS[name](args)
