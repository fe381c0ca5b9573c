"""The hyperloom side of every scenario: one repetition per call.

Each public ``bench_*`` function takes a started LoomCluster and the case's
params and returns ``{metric: value}``; they mirror benchmarks/dask_side.py.
hyperloom is imported lazily so the Dask side runs even when it is broken.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import PeakRss, rss, time_gathers, wait_until
from benchmarks.dask_side import transfer_metrics

perf = time.perf_counter


class LoomCluster:
    """``hyperloom.LocalCluster(workers=W, cpus=1)`` plus one shared client.

    Workers run with ``--nopin``: Dask does not pin programs to cores either,
    and the original's published figures were taken with ``--nopin``; ``pin``
    leaves pinning on (the workers' default) for the cases that measure it.
    """

    def __init__(self, workers: int = 2, pin: bool = False):
        self.n_workers = workers
        self.pin = pin
        self.cluster = None
        self._client = None

    def start(self) -> LoomCluster:
        import hyperloom
        # benchmarks/dashboard_overhead.py sets this to measure a connected loom-dashboard.
        dashboard = os.environ.get("HYPERLOOM_BENCH_DASHBOARD") == "1"
        # HYPERLOOM_BENCH_JOURNAL=DIR: the broker keeps a journal in DIR (its cost, see
        # docs/reliability.md); a fresh file per cluster, so nothing is replayed.
        broker_args = ()
        journal_dir = os.environ.get("HYPERLOOM_BENCH_JOURNAL")
        if journal_dir:
            import tempfile
            fd, path = tempfile.mkstemp(prefix="bench-", suffix=".journal", dir=journal_dir)
            os.close(fd)
            os.remove(path)
            broker_args = ("--journal", path)
        self.cluster = hyperloom.LocalCluster(workers=self.n_workers, cpus=1,
                                              worker_args=() if self.pin else ("--nopin",),
                                              dashboard=dashboard,
                                              broker_args=broker_args)
        self.cluster.__enter__()
        return self

    def close(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        except Exception:
            pass
        self._client = None
        if self.cluster is not None:
            self.cluster.__exit__(None, None, None)
            self.cluster = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def broker_pid(self) -> int:
        return self.cluster.broker_pid

    def client(self):
        if self._client is None:
            self._client = self.cluster.client()
        return self._client


def _tasks():
    from hyperloom.client import tasks
    return tasks


def _py_tasks():
    """py_task builders, made on first use (hyperloom imported lazily)."""
    global _PY
    if _PY is None:
        tasks = _tasks()
        _PY = {"ok": tasks.py_task()(_ok),
               # two functions: each producer's own py_value input, so neither
               # drags the other to its worker by locality
               "make_a": tasks.py_task(n_direct_args=2)(_make_bytes_a),
               "make_b": tasks.py_task(n_direct_args=2)(_make_bytes_b),
               "array_a": tasks.py_task(context=True, n_direct_args=2)(_make_array_a),
               "array_b": tasks.py_task(context=True, n_direct_args=2)(_make_array_b),
               "array_use": tasks.py_task()(_array_nbytes)}
    return _PY


_PY = None


def _ok():
    return b"ok"


def _make_bytes_a(n, fill):
    return bytes([fill]) * n


def _make_bytes_b(n, fill):
    return bytes([fill]) * n


def _make_array_a(ctx, n, fill):
    import numpy
    return ctx.wrap(numpy.full(n // 8, fill, dtype="f8"))


def _make_array_b(ctx, n, fill):
    import numpy
    return ctx.wrap(numpy.full(n // 8, fill, dtype="f8"))


def _array_nbytes(a, b):
    """Touches both arrays (first and last element), as a consumer would."""
    a, b = a.unwrap(), b.unwrap()
    return b"%d" % (a.nbytes + b.nbytes + int(a[0] + a[-1] + b[0] + b[-1]))


def warmup(cluster) -> None:
    client, tasks = cluster.client(), _tasks()
    client.gather(client.submit([tasks.const(b"w%d" % i) for i in range(200)]))
    # Workers start their Python executor processes on the first Python task (as
    # Dask's warm-up runs its tiny function): not inside the first measurement.
    ok = _py_tasks()["ok"]
    client.gather(client.submit([ok() for _ in range(20)]))


def _submit_gather(client, task_list):
    t0 = perf()
    results = client.gather(client.submit(task_list))
    elapsed = perf() - t0
    assert len(results) == len(task_list), len(results)
    return elapsed, results


# ---------------------------------------------------------------- scenarios


def bench_independent(cluster, p):
    n, tasks = p["n"], _tasks()
    t0 = perf()
    task_list = [tasks.const(b"x%d" % i) for i in range(n)]
    results = cluster.client().gather(cluster.client().submit(task_list))
    elapsed = perf() - t0
    assert len(results) == n and results[-1] == b"x%d" % (n - 1)
    return {"throughput": n / elapsed, "overhead": elapsed / n * 1e6}


def bench_python(cluster, p):
    n, ok = p["n"], _py_tasks()["ok"]
    t0 = perf()
    results = cluster.client().gather(cluster.client().submit([ok() for _ in range(n)]))
    elapsed = perf() - t0
    assert len(results) == n and results[0] == b"ok", results[:1]
    return {"throughput": n / elapsed}


def bench_run(cluster, p):
    n, tasks = p["n"], _tasks()
    t0 = perf()
    results = cluster.client().gather(
        cluster.client().submit([tasks.run("true") for _ in range(n)]))
    elapsed = perf() - t0
    assert len(results) == n
    return {"throughput": n / elapsed}


def bench_merge(cluster, p):
    n, tasks = p["n"], _tasks()
    t0 = perf()
    root = tasks.merge([tasks.const(b"x") for _ in range(n)])
    result = cluster.client().submit_one(root).gather()
    elapsed = perf() - t0
    assert result == b"x" * n, len(result)
    return {"throughput": (n + 1) / elapsed}


def bench_tree(cluster, p):
    leaves, tasks = p["leaves"], _tasks()
    t0 = perf()
    level = [tasks.const(b"x") for _ in range(leaves)]
    count = len(level)
    while len(level) > 1:
        level = [tasks.merge((level[j], level[j + 1]))
                 for j in range(0, len(level), 2)]
        count += len(level)
    result = cluster.client().submit_one(level[0]).gather()
    elapsed = perf() - t0
    assert len(result) == leaves, len(result)
    return {"throughput": count / elapsed}


def bench_chain(cluster, p):
    client, tasks, times = cluster.client(), _tasks(), []
    for _ in range(p["n"]):
        t0 = perf()
        client.submit_one(tasks.const(b"x")).gather()
        times.append(perf() - t0)
    times.sort()
    return {"latency": times[len(times) // 2] * 1e3}


def bytes_received(client):
    """Sum of the workers' ``bytes_received`` in client.info(), or None."""
    try:
        workers = client.info()["workers"]
        return sum(w["bytes_received"] for w in workers)
    except (AttributeError, KeyError, TypeError):
        return None


def _timed_size(client, tasks, a, b):
    t0 = perf()
    client.submit_one(tasks.size(tasks.merge((a, b)))).gather()
    return perf() - t0


def _cross_and_local(client, producers, timed, n):
    """One sample: (cross, local) seconds of ``timed(x, y)`` on the two objects the
    ``producers`` make (one per worker): one object twice (local), then both (cross);
    checks that bytes really moved."""
    fa, fb = client.submit(producers)
    client.wait([fa, fb])
    local = timed(fb, fb)
    received = bytes_received(client)
    cross = timed(fa, fb)
    moved = None if received is None else bytes_received(client) - received
    client.release([fa, fb])
    if moved is not None and moved < n:
        raise RuntimeError(f"no cross-worker transfer seen (bytes_received +{moved}): "
                           "both producers ran on the same worker")
    return cross, local


def bench_transfer(cluster, p):
    """Two cpus(1) producers (distinct functions, so no shared locality hint;
    the broker overbooks workers 3x, so cpus(1) alone does not spread them)
    land on the two workers; the consumer merges both, so one object must
    cross. Baseline: the same merge of one object with itself (no transfer).
    Checked with the workers' bytes_received counters."""
    client, tasks, py = cluster.client(), _tasks(), _py_tasks()
    n = p["nbytes"]
    samples = [_cross_and_local(client, [py["make_a"](n, 1), py["make_b"](n, 2)],
                                lambda a, b: _timed_size(client, tasks, a, b), n)
               for _ in range(p.get("samples", 1))]
    return transfer_metrics(p["nbytes"], samples)


def _timed_array_use(client, use, a, b):
    t0 = perf()
    client.submit_one(use(a, b)).gather()
    return perf() - t0


def bench_array(cluster, p):
    """A NumPy array made by a Python task, used by a Python task on the other
    worker (pickle protocol 5: the array travels as its own zero-copy frame)."""
    client, py = cluster.client(), _py_tasks()
    n = p["nbytes"]
    samples = [_cross_and_local(client, [py["array_a"](n, 1), py["array_b"](n, 2)],
                                lambda a, b: _timed_array_use(client, py["array_use"], a, b), n)
               for _ in range(p.get("samples", 1))]
    return transfer_metrics(n, samples)


def bench_gather(cluster, p):
    """A NumPy array made by a Python task, then gathered by the client: GB/s of
    the gather alone, and how much the broker's RSS rose meanwhile (it relays the
    value from the worker that holds it)."""
    client, py = cluster.client(), _py_tasks()

    def make(i):
        future = client.submit_one(py["array_a"](p["nbytes"], i))
        client.wait([future])
        return future
    return time_gathers(p.get("samples", 1), p["nbytes"], cluster.broker_pid, make,
                        lambda future: future.gather())


def _held(client, n_total, seen):
    n = client.get_stats()["n_tasks"]
    done = n >= 0.99 * n_total or n < seen["max"]
    seen["last"] = n
    seen["max"] = max(seen["max"], n)
    return done


def build_chains(tasks, chains, length):
    ends = []
    for _ in range(chains):
        t = tasks.const(b"x")
        for _ in range(length - 1):
            t = tasks.merge((t,))
        ends.append(t)
    return ends


def bench_plan(cluster, p):
    client, tasks = cluster.client(), _tasks()
    chains, length = p["chains"], p["length"]
    n_total = chains * length
    before = rss(cluster.broker_pid)
    with PeakRss(cluster.broker_pid) as peak:
        t0 = perf()
        ends = build_chains(tasks, chains, length)
        t1 = perf()
        futures = client.submit(ends)
        t_submit = perf() - t0
        seen = {"max": 0}
        wait_until(lambda: _held(client, n_total, seen), 3600, 0.01)
        t_held = perf() - t1
        rss_held = rss(cluster.broker_pid)
        results = client.gather(futures)
        t_total = perf() - t0
    assert len(results) == chains and all(r == b"x" for r in results)
    return {"build_submit": t_submit, "submit_to_held": t_held,
            "rss_per_task": (rss_held - before) / n_total,
            "peak_rss_per_task": (peak.peak - before) / n_total,
            "total": t_total, "throughput": n_total / t_total,
            "held_seen": seen["last"]}
