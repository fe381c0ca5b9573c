"""loom-dashboard: parse arguments into a DashboardConfig, serve the page, nothing else."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import threading

from .. import protocol
from ..cli import EXIT_WITH_PARENT_HELP, LOG_LEVELS, _exit_with_parent, _setup_logging

NEEDS_BOKEH = ("loom-dashboard needs Bokeh (its page draws with BokehJS): "
               "pip install 'hyperloom[dashboard]'")


def read_scheduler_file(path: str) -> tuple[str, int]:
    """The broker's address from a scheduler file: JSON with "host" and "port", or
    "address" as tcp://HOST:PORT. Raises ValueError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as error:
        raise ValueError(f"cannot read scheduler file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"scheduler file {path} is not JSON: {error}") from None
    if not isinstance(info, dict):
        raise ValueError(f"scheduler file {path} does not hold a JSON object")
    address = info.get("address")
    where = protocol.host_and_port(address) if isinstance(address, str) else None
    if "host" in info and "port" in info:
        host, port = info["host"], info["port"]
    elif where is not None:
        host, port = where
    else:
        raise ValueError(f"scheduler file {path} has neither \"host\" and \"port\" nor an "
                         f"\"address\" of the form tcp://HOST:PORT")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"scheduler file {path}: port {port!r} is not a number") from None
    if not isinstance(host, str) or not host or not 1 <= port <= 65535:
        raise ValueError(f"scheduler file {path}: invalid host {host!r} or port {port}")
    return host.strip("[]"), port


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="loom-dashboard",
        description="Serve a live web page of a running hyperloom cluster: progress, tasks by "
                    "state, a task stream, workers, unplaceable tasks and failures.")
    parser.add_argument("broker_host", metavar="BROKER_HOST", nargs="?")
    parser.add_argument("broker_port", metavar="BROKER_PORT", type=int, nargs="?")
    parser.add_argument("--scheduler-file", metavar="PATH",
                        help="read the broker's address from PATH (JSON: host and port, or "
                             "address tcp://HOST:PORT) instead of BROKER_HOST BROKER_PORT")
    parser.add_argument("--port", type=int, default=8787,
                        help="port of the page (default 8787; 0 picks a free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the page listens on (default: loopback only)")
    parser.add_argument("--secret-file", metavar="PATH",
                        help="the cluster's CURVE key file; the page then asks for a token, "
                             "printed (in the URL) at start")
    parser.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                        help="seconds between snapshots asked of the broker (default 0.5)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the broker before saying so on the page "
                             "and trying again (default 10)")
    parser.add_argument("--slurm-job-name", metavar="NAME",
                        help="also show the Slurm jobs named NAME (squeue every few seconds)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    parser.add_argument("--exit-with-parent", action="store_true", help=EXIT_WITH_PARENT_HELP)
    args = parser.parse_args(argv)
    if args.scheduler_file:
        if args.broker_host is not None:
            parser.error("give either BROKER_HOST BROKER_PORT or --scheduler-file, not both")
        try:
            args.broker_host, args.broker_port = read_scheduler_file(args.scheduler_file)
        except ValueError as error:
            parser.error(str(error))
    elif args.broker_host is None or args.broker_port is None:
        parser.error("BROKER_HOST and BROKER_PORT are required (or --scheduler-file PATH)")
    if not 1 <= args.broker_port <= 65535:
        parser.error(f"invalid broker port {args.broker_port}")
    if not 0 <= args.port <= 65535:
        parser.error(f"invalid port {args.port}")
    if not args.interval > 0 or not args.connect_timeout > 0:
        parser.error("--interval and --connect-timeout must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        import bokeh  # noqa: F401  (the page's plots; optional for the rest of hyperloom)
    except ImportError:
        print(NEEDS_BOKEH, file=sys.stderr)
        return 2
    _setup_logging(args.log_level, "loom-dashboard")
    from .server import Dashboard, DashboardConfig
    config = DashboardConfig(
        broker_host=args.broker_host, broker_port=args.broker_port, host=args.host,
        port=args.port, secret_file=args.secret_file, interval=args.interval,
        token=secrets.token_urlsafe(16) if args.secret_file else None,
        slurm_job_name=args.slurm_job_name, connect_timeout=args.connect_timeout)
    try:
        dashboard = Dashboard(config)
    except OSError as error:
        print(f"loom-dashboard: cannot listen on {args.host}:{args.port}: {error.strerror}",
              file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.exit_with_parent:
        _exit_with_parent("dashboard")
    dashboard.start()
    print(dashboard.url, flush=True)
    logging.getLogger("hyperloom.dashboard").info("serving %s", dashboard.url)
    while not stop.wait(1.0):
        pass
    dashboard.stop()
    return 0
