"""Probe of the hot paths of issue 16, with each process's CPU time per task.

    python benchmarks/hot_paths.py rt,chain,run,py [--pin] [--cpus=N]

A LocalCluster of 2 workers (1 cpu each unless --cpus; --nopin unless --pin),
warmed up, then: ``rt`` 300 one-task round trips (median of the last 250),
``chain`` a chain of 200 merges submitted at once (ms per link), ``run`` 1,000
``run("true")``, ``py`` tiny ``py_task``s (PYN in the environment, default
5,000). Prints one JSON line: the figures, the load average, and µs of CPU per
task of the broker, the workers (with the programs they reaped), the workers'
executor processes and this client (psutil); for ``run`` also per thread
(``run_threads_us``, from /proc on Linux: the broker's and workers' main
threads, their libzmq threads, the workers' task threads, and the programs).
Run it with PYTHONPATH set to another tree, from a directory outside this one,
to measure that tree the same way (the benchmarks README's before/after
figures were taken so).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import psutil

import hyperloom
from hyperloom.client import tasks

perf = time.perf_counter


def tiny():
    return b"x"


class CpuMeter:
    """CPU seconds of the cluster's processes, per group."""

    def __init__(self, cluster):
        self.groups = {"broker": [psutil.Process(cluster.broker_pid)],
                       "workers": [psutil.Process(w.pid) for w in cluster.workers],
                       "client": [psutil.Process()]}

    def read(self) -> dict:
        self.groups["executors"] = [child for w in self.groups["workers"]
                                    for child in w.children(recursive=True)]
        return {name: sum(sum(p.cpu_times()[:4]) for p in processes)
                for name, processes in self.groups.items()}

    def per_task(self, before: dict, n: int) -> dict:
        after = self.read()
        return {k: round((after[k] - before.get(k, 0.0)) / n * 1e6) for k in after}

    def threads(self) -> dict:
        """CPU seconds of the broker's and workers' threads by role, and the programs."""
        out = {"programs": sum(p.cpu_times().children_user + p.cpu_times().children_system
                               for p in self.groups["workers"])}
        for group in ("broker", "workers"):
            for process in self.groups[group]:
                for thread in process.threads():
                    try:
                        with open(f"/proc/{process.pid}/task/{thread.id}/comm") as f:
                            name = f.read().strip()
                    except OSError:
                        continue
                    role = ("main" if thread.id == process.pid else
                            "zmq" if name.startswith("ZMQbg") else "task threads")
                    key = f"{group} {role}"
                    out[key] = out.get(key, 0.0) + thread.user_time + thread.system_time
        return out


def measure(client, what, meter, out):
    py = tasks.py_task()(tiny)
    if "rt" in what:
        before, times = meter.read(), []
        for _ in range(300):
            t0 = perf()
            client.submit_one(tasks.const(b"x")).gather()
            times.append(perf() - t0)
        out["rt_ms"] = round(statistics.median(times[50:]) * 1e3, 3)
        out["rt_cpu_us"] = meter.per_task(before, 300)
    if "chain" in what:
        last = tasks.const(b"x")
        for _ in range(200):
            last = tasks.merge((last,))
        t0 = perf()
        client.submit_one(last).gather()
        out["chain_ms_link"] = round((perf() - t0) / 200 * 1e3, 3)
    if "run" in what:
        threads = meter.threads() if sys.platform == "linux" else None
        before, t0 = meter.read(), perf()
        client.gather(client.submit([tasks.run("true") for _ in range(1000)]))
        out["run_s"] = round(1000 / (perf() - t0))
        out["run_cpu_us"] = meter.per_task(before, 1000)
        if threads is not None:
            out["run_threads_us"] = {k: round((v - threads.get(k, 0.0)) / 1000 * 1e6)
                                     for k, v in meter.threads().items()}
    if "py" in what:
        n = int(os.environ.get("PYN", 5000))
        before, t0 = meter.read(), perf()
        results = client.gather(client.submit([py() for _ in range(n)]))
        out["py_s"] = round(n / (perf() - t0))
        out["py_cpu_us"] = meter.per_task(before, n)
        assert results[0] == b"x"


def main(argv):
    what = argv[0].split(",") if argv else ["rt", "chain", "run", "py"]
    pin = "--pin" in argv
    cpus = next((int(a[7:]) for a in argv if a.startswith("--cpus=")), 1)
    out = {"tree": hyperloom.__file__.split("/hyperloom/")[0], "pin": pin,
           "load": os.getloadavg()[0]}
    with hyperloom.LocalCluster(workers=2, cpus=cpus,
                                worker_args=() if pin else ("--nopin",)) as cluster:
        client = cluster.client()
        client.gather(client.submit([tasks.const(b"w%d" % i) for i in range(200)]))
        client.gather(client.submit([tasks.py_task()(tiny)() for _ in range(100)]))
        measure(client, what, CpuMeter(cluster), out)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
