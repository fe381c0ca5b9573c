"""Standalone locality benchmark: bytes moved between workers by a pipeline
with large intermediates.

64 chains (default); each chain produces a 20 MB object, transforms it (a
new 20 MB object) and summarises it (a few bytes); one final task reduces the
64 summaries. An ideal scheduler moves only the summaries. Prints, per
system, the bytes transferred between workers and the elapsed time (medians).

Counters: hyperloom: the sum of the workers' ``bytes_received`` in
``client.info()`` (delta over the run); Dask (distributed 2026.8, which keeps
no incoming-bytes total): the sum of ``transfer_incoming_log`` totals over
workers (delta), with ``transfer_outgoing_bytes_total`` (which also counts
data the client gathers) shown for reference.

    python benchmarks/locality.py [--chains 64] [--mb 20] [--repeat 3]
                                  [--workers 2] [--no-dask] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (Row, add_standalone_options, append_json,
                               prepare_environment, time_limit)
from benchmarks.run import exit_on_sigterm, log, print_report, suite_metadata

perf = time.perf_counter


# ---------------------------------------------------------------- task bodies


def produce(n, seed):
    return bytes([seed % 256]) * n


def transform(data):
    return bytes(data)[::-1]


def summarize(data):
    data = bytes(data)
    return b"%d:%d;" % (len(data), data[0])


def reduce_all(*parts):
    return b"".join(bytes(p) for p in parts)


# ---------------------------------------------------------------- hyperloom


def run_hyperloom(cluster, chains, nbytes):
    from benchmarks.loom_side import bytes_received
    from hyperloom.client import tasks
    py_produce = tasks.py_task(n_direct_args=2)(produce)
    py_transform = tasks.py_task()(lambda a: transform(a.read()))
    py_summary = tasks.py_task()(lambda a: summarize(a.read()))
    py_reduce = tasks.py_task()(lambda *parts: reduce_all(*(p.read() for p in parts)))
    client = cluster.client()
    before = bytes_received(client)
    t0 = perf()
    summaries = [py_summary(py_transform(py_produce(nbytes, i))) for i in range(chains)]
    result = client.submit_one(py_reduce(*summaries)).gather()
    elapsed = perf() - t0
    check(result, chains, nbytes)
    after = bytes_received(client)
    moved = None if before is None or after is None else after - before
    return {"bytes": moved, "seconds": elapsed}


# ---------------------------------------------------------------- dask


def run_dask(cluster, chains, nbytes):
    from benchmarks.dask_side import worker_transfer_bytes
    client = cluster.client()
    before = worker_transfer_bytes(client)
    t0 = perf()
    summaries = []
    for i in range(chains):
        data = client.submit(produce, nbytes, i, pure=False)
        summaries.append(client.submit(summarize, client.submit(
            transform, data, pure=False), pure=False))
    result = client.submit(reduce_all, *summaries, pure=False).result()
    elapsed = perf() - t0
    check(result, chains, nbytes)
    after = worker_transfer_bytes(client)
    incoming = sum(after[w]["incoming"] - before.get(w, {}).get("incoming", 0)
                   for w in after)
    outgoing = sum(after[w]["outgoing_total"]
                   - before.get(w, {}).get("outgoing_total", 0) for w in after)
    return {"bytes": incoming, "outgoing_total": outgoing, "seconds": elapsed}


def check(result, chains, nbytes):
    parts = [p for p in result.split(b";") if p]
    assert len(parts) == chains and all(p.startswith(b"%d:" % nbytes) for p in parts)


# ---------------------------------------------------------------- driver


METRICS = (("bytes", "bytes between workers", "bytes", False),
           ("outgoing_total", "transfer_outgoing_bytes_total", "bytes", False),
           ("seconds", "elapsed", "s", False))


def measure(system, args) -> list[Row]:
    params = {"chains": args.chains, "nbytes": args.mb * 1_000_000,
              "workers": args.workers}
    rows = {key: Row("locality", f"{args.chains} x {args.mb} MB", label, unit,
                     system, params, higher_is_better=hib)
            for key, label, unit, hib in METRICS}
    fn = run_hyperloom if system == "hyperloom" else run_dask
    try:
        cluster = start(system, args.workers)
    except Exception as exc:
        return failed(rows, exc)
    try:
        for rep in range(args.repeat):
            log(f"[locality] {system}: rep {rep + 1}/{args.repeat}")
            with time_limit(args.timeout):
                values = fn(cluster, args.chains, params["nbytes"])
            log("    " + str(values))
            for key, row in rows.items():
                if values.get(key) is not None:
                    row.reps.append(values[key])
    except Exception as exc:
        return failed(rows, exc)
    finally:
        cluster.close()
    for row in rows.values():
        row.skipped = not row.reps
    return list(rows.values())


def failed(rows, exc):
    import traceback
    log(traceback.format_exc())
    for row in rows.values():
        row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return list(rows.values())


def start(system, workers):
    from benchmarks.run import start_cluster
    return start_cluster(system, workers)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--mb", type=int, default=20)
    add_standalone_options(ap)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    prepare_environment()
    args = parse_args(argv)
    exit_on_sigterm()
    from benchmarks.dask_cluster import quiet_client_logging
    quiet_client_logging()
    meta, started, rows = suite_metadata(), perf(), []
    for system in ("hyperloom", "dask"):
        if not getattr(args, "no_" + ("dask" if system == "dask" else "hyperloom")):
            rows += measure(system, args)
    append_json(rows, args.json, meta)
    print_report(rows, args, meta, started)
    print("(hyperloom bytes: sum of workers' bytes_received in client.info(); "
          "Dask bytes: sum of workers' transfer_incoming_log totals)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
