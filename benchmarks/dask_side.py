"""The Dask side of every scenario: one repetition per call.

Each public ``bench_*`` function takes a started DaskCluster and the case's
params and returns ``{metric: value}``. The tiny task functions live at module
level so workers import them by reference (PYTHONPATH holds the repo root).
"""

from __future__ import annotations

import statistics
import subprocess
import time

from benchmarks.common import PeakRss, rss, time_gathers, wait_until

perf = time.perf_counter


# ---------------------------------------------------------------- task bodies


def tiny(i):
    return i


def add2(a, b):
    return a + b


def leaf():
    return 1


def total(*values):
    return sum(values)


def run_true(i):
    return subprocess.run(["true"]).returncode


def make_bytes(n, fill):
    return bytes([fill]) * n


def concat_len(a, b):
    return len(a + b)


def make_array(n, fill):
    import numpy
    return numpy.full(n // 8, fill, dtype="f8")


def array_nbytes(a, b):
    return a.nbytes + b.nbytes + int(a[0] + a[-1] + b[0] + b[-1])


def ident(x):
    return x


# ---------------------------------------------------------------- helpers


def _map_gather(client, func, n):
    t0 = perf()
    futures = client.map(func, range(n), pure=False)
    results = client.gather(futures)
    elapsed = perf() - t0
    assert len(results) == n, len(results)
    del futures
    return elapsed


def warmup(cluster) -> None:
    client = cluster.client()
    _map_gather(client, tiny, 200)
    client.run(lambda: None)


# ---------------------------------------------------------------- scenarios


def bench_independent(cluster, p):
    n = p["n"]
    elapsed = _map_gather(cluster.client(), tiny, n)
    return {"throughput": n / elapsed, "overhead": elapsed / n * 1e6}


def bench_python(cluster, p):
    return bench_independent(cluster, p)


def bench_run(cluster, p):
    n = p["n"]
    elapsed = _map_gather(cluster.client(), run_true, n)
    return {"throughput": n / elapsed}


def bench_merge(cluster, p):
    client, n = cluster.client(), p["n"]
    t0 = perf()
    futures = client.map(tiny, range(n), pure=False)
    result = client.submit(total, *futures, pure=False).result()
    elapsed = perf() - t0
    assert result == n * (n - 1) // 2, result
    return {"throughput": (n + 1) / elapsed}


def tree_graph(leaves: int):
    """A dask graph dict: ``leaves`` leaf tasks reduced pairwise to one root."""
    dsk, level = {}, []
    for i in range(leaves):
        dsk[f"leaf-{i}"] = (leaf,)
        level.append(f"leaf-{i}")
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), 2):
            key = f"node-{depth}-{j // 2}"
            dsk[key] = (add2, level[j], level[j + 1])
            nxt.append(key)
        level = nxt
    return dsk, level[0]


def bench_tree(cluster, p):
    client, leaves = cluster.client(), p["leaves"]
    t0 = perf()
    dsk, root = tree_graph(leaves)
    result = client.get(dsk, root)
    elapsed = perf() - t0
    assert result == leaves, result
    return {"throughput": len(dsk) / elapsed}


def bench_chain(cluster, p):
    client, times = cluster.client(), []
    for i in range(p["n"]):
        t0 = perf()
        client.submit(tiny, i, pure=False).result()
        times.append(perf() - t0)
    times.sort()
    return {"latency": times[len(times) // 2] * 1e3}


def _cross_and_local(client, make, use, n, a, b):
    """One sample: (cross, local) seconds of ``use`` on worker b, with one of its two
    inputs made on worker a (cross) or both on b (local)."""
    fa = client.submit(make, n, 1, workers=[a], pure=False)
    fb = client.submit(make, n, 2, workers=[b], pure=False)
    client.gather([client.submit(len, f, workers=[w], pure=False)
                   for f, w in ((fa, a), (fb, b))])
    t0 = perf()
    client.submit(use, fb, fb, workers=[b], pure=False).result()
    local = perf() - t0
    t0 = perf()
    client.submit(use, fa, fb, workers=[b], pure=False).result()
    cross = perf() - t0
    del fa, fb
    return cross, local


def bench_transfer(cluster, p):
    client = cluster.client()
    a, b = cluster.worker_addresses()[:2]
    samples = [_cross_and_local(client, make_bytes, concat_len, p["nbytes"], a, b)
               for _ in range(p.get("samples", 1))]
    return transfer_metrics(p["nbytes"], samples)


def bench_array(cluster, p):
    client = cluster.client()
    a, b = cluster.worker_addresses()[:2]
    samples = [_cross_and_local(client, make_array, array_nbytes, p["nbytes"], a, b)
               for _ in range(p.get("samples", 1))]
    return transfer_metrics(p["nbytes"], samples)


def bench_gather(cluster, p):
    """A NumPy array made by a task, then gathered by the client: GB/s of the
    gather alone, and how much the scheduler's RSS rose meanwhile."""
    client = cluster.client()

    def make(i):
        future = client.submit(make_array, p["nbytes"], i, pure=False)
        client.gather([client.submit(len, future, pure=False)])   # made, not fetched
        return future
    return time_gathers(p.get("samples", 1), p["nbytes"], cluster.scheduler_pid, make,
                        lambda future: future.result())


def transfer_metrics(n, samples):
    """From (cross, local) samples: GB/s of n bytes over the median
    cross-worker consumer time (task overhead included), and over the median
    of (cross - local), the time beyond the same work with the data local."""
    cross = statistics.median(c for c, _ in samples)
    extra = statistics.median(c - loc for c, loc in samples)
    return {"gbps_raw": n / cross / 1e9,
            "gbps_effective": n / extra / 1e9 if extra > 0 else None}


def chain_graph(chains: int, length: int):
    dsk, ends = {}, []
    for c in range(chains):
        prev = f"c{c}-0"
        dsk[prev] = (leaf,)
        for j in range(1, length):
            key = f"c{c}-{j}"
            dsk[key] = (ident, prev)
            prev = key
        ends.append(prev)
    return dsk, ends


def _n_scheduler_tasks(client):
    return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def bench_plan(cluster, p):
    client = cluster.client()
    chains, length = p["chains"], p["length"]
    n_total = chains * length
    before = rss(cluster.scheduler_pid)
    with PeakRss(cluster.scheduler_pid) as peak:
        t0 = perf()
        dsk, ends = chain_graph(chains, length)
        t1 = perf()
        futures = client.get(dsk, ends, sync=False)
        t_submit = perf() - t0
        seen = {"max": 0}

        def held():
            n = _n_scheduler_tasks(client)
            done = n >= 0.99 * n_total or n < seen["max"]
            seen["last"] = n
            seen["max"] = max(seen["max"], n)
            return done

        wait_until(held, 3600, 0.01)
        t_held = perf() - t1
        rss_held = rss(cluster.scheduler_pid)
        if p.get("complete", True):
            results = client.gather(futures)
            t_total = perf() - t0
            assert len(results) == chains and all(r == 1 for r in results)
    out = {"build_submit": t_submit, "submit_to_held": t_held,
           "rss_per_task": (rss_held - before) / n_total,
           "peak_rss_per_task": (peak.peak - before) / n_total,
           "total": None, "throughput": None, "held_seen": seen["last"]}
    if p.get("complete", True):
        out.update(total=t_total, throughput=n_total / t_total)
    return out  # not complete: the (fresh) cluster is torn down with the plan


def worker_transfer_bytes(client) -> dict:
    """Per worker: bytes received from other workers (sum of
    ``transfer_incoming_log``; distributed 2026.8 keeps no incoming total) and
    ``transfer_outgoing_bytes_total`` (which also counts data sent to the
    client/scheduler on gather)."""
    def probe(dask_worker):
        incoming = sum(e.get("total", 0) for e in dask_worker.transfer_incoming_log)
        return {"incoming": incoming,
                "outgoing_total": dask_worker.transfer_outgoing_bytes_total}
    return client.run(probe)
