"""loom-status: the cluster's workers and task counts, as a table for a person."""

from __future__ import annotations

import argparse
import sys

from .client import Client
from .errors import LoomException


def format_status(info: dict) -> str:
    lines = [f"{info['n_workers']} workers, {info['n_clients']} clients, "
             f"{info['n_tasks']} tasks held, {info['n_data_objects']} data objects"]
    header = ("id", "address", "cpus", "used", "running", "finished", "held", "received", "sent")
    rows = [header]
    for w in sorted(info["workers"], key=lambda w: w["id"]):
        rows.append((str(w["id"]), w["address"], str(w["cpus"]), str(w["cpus_used"]),
                     str(w["running"]), str(w["tasks_finished"]), _bytes(w["bytes_held"]),
                     _bytes(w["bytes_received"]), _bytes(w["bytes_sent"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    states = ", ".join(f"{name} {count}" for name, count in info["tasks"].items() if count)
    lines.append(f"tasks by state: {states or 'none'}")
    for entry in info.get("unplaceable", []):
        lines.append(f"waiting: task {entry['id']} ({entry['type']}): {entry['reason']}")
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="loom-status",
                                     description="Show a hyperloom cluster's workers and tasks.")
    parser.add_argument("broker_host", metavar="BROKER_HOST", nargs="?")
    parser.add_argument("broker_port", metavar="BROKER_PORT", type=int, nargs="?")
    parser.add_argument("--scheduler-file", metavar="PATH",
                        help="read the broker's address from PATH (as loom-broker "
                             "--scheduler-file wrote it) instead of BROKER_HOST BROKER_PORT")
    parser.add_argument("--secret-file", metavar="PATH", help="the cluster's CURVE key file")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the broker (default 10)")
    args = parser.parse_args(argv)
    if not args.scheduler_file and (args.broker_host is None or args.broker_port is None):
        parser.error("give BROKER_HOST BROKER_PORT or --scheduler-file PATH")
    address = dict(scheduler_file=args.scheduler_file) if args.scheduler_file else dict(
        address=args.broker_host, port=args.broker_port)
    try:
        with Client(**address, connect_timeout=args.timeout,
                    secret_file=args.secret_file) as client:
            print(format_status(client.info()))
    except LoomException as error:
        print(f"loom-status: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
