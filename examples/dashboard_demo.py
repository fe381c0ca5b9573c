"""A plan to watch on the live dashboard: a local cluster with loom-dashboard, a few hundred
tasks in four label groups, data moving between workers, and one task that fails.

    python examples/dashboard_demo.py [--workers 2] [--cpus 2] [--screenshot PNG] [--trace DIR]

Open the printed URL while it runs. ``--screenshot PNG`` has headless Chromium photograph
the page half-way through (how docs/dashboard.png was made); ``--trace DIR`` traces the run
for ``loom-report DIR`` (docs/report.png is the report of ``--chunks 40 --trace DIR``).
"""

import argparse
import shutil
import subprocess
import tempfile
import time

from hyperloom import LocalCluster
from hyperloom.client import tasks


def build_plan(n_chunks):
    """chunks of random bytes -> compressed -> sizes -> one summary; plus a broken task."""
    results = []
    for i in range(n_chunks):
        script = f"sleep 0.{3 + i % 5}; head -c {20000 + 997 * i} /dev/urandom"
        make = tasks.run(["sh", "-c", script])
        make.label = f"generate:{i}"
        pack = tasks.run("gzip -1", stdin=make)
        pack.label = f"compress:{i}"
        size = tasks.run(["sh", "-c", "sleep 0.2; wc -c"], stdin=pack)
        size.label = f"measure:{i}"
        results.append(size)
    summary = tasks.merge(results, delimiter="")
    summary.label = "summary"
    broken = tasks.run(["sh", "-c", "echo 'cannot open chunk-42.dat: no such file' >&2; exit 2"])
    broken.label = "load:chunk-42"
    return [summary, broken]


def screenshot(url, path):
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([shutil.which("chromium") or "chromium", "--headless", "--no-sandbox",
                        "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                        "--hide-scrollbars", f"--user-data-dir={profile}",
                        "--virtual-time-budget=3000", "--window-size=1400,1350",
                        f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--screenshot", metavar="PNG")
    parser.add_argument("--trace", metavar="DIR", help="write trace files there")
    args = parser.parse_args()
    with LocalCluster(workers=args.workers, cpus=args.cpus, dashboard=True) as cluster:
        print(f"dashboard: {cluster.dashboard_url}", flush=True)
        client = cluster.client()
        if args.trace:
            client.set_trace(args.trace)
        summary, broken = client.submit(build_plan(args.chunks))
        if args.screenshot:
            while client.progress[1] == 0 or client.progress[0] < client.progress[1] // 2:
                client.info()  # handles the broker's progress messages meanwhile
                time.sleep(0.2)
            screenshot(cluster.dashboard_url, args.screenshot)
            print(f"screenshot: {args.screenshot}")
        print(f"{len(summary.gather().split())} chunk sizes measured")
        try:
            broken.gather()
        except Exception as error:
            print(f"the broken task failed, as planned: {error}".splitlines()[0])


if __name__ == "__main__":
    main()
