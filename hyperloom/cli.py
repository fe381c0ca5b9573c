"""loom-broker / loom-worker: parse arguments into a config, start, nothing else."""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import threading
import time

import psutil

from . import protocol, scheduler_file
from .errors import LoomError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _setup_logging(level: str, name: str):
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")


def _run_profiled(name, fn):
    """Run ``fn``; under HYPERLOOM_PROFILE_DIR, with cProfile dumped there on exit."""
    directory = os.environ.get("HYPERLOOM_PROFILE_DIR")
    if not directory:
        return fn()
    import cProfile
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(fn)
    finally:
        os.makedirs(directory, exist_ok=True)
        profiler.dump_stats(os.path.join(directory, f"{name}-{os.getpid()}.prof"))


# Collect the youngest generation every 20,000 allocations instead of every 700: the broker and
# workers keep batches of task objects alive for a few thousand allocations, and with CPython's
# default each of them was scanned and promoted towards the expensive full collections.
# Measured with 2 single-core workers, 100,000 tiny tasks (benchmarks/gc_ab.py): 25-31 % less
# wall time, 30-37 % less broker CPU.
GC_THRESHOLDS = (20_000, 10, 10)


def _tune_gc():
    """Freeze what importing created (never garbage) and collect less often; see GC_THRESHOLDS.
    HYPERLOOM_GC_THRESHOLDS="700,10,10" (CPython's default) overrides them, for comparisons."""
    override = os.environ.get("HYPERLOOM_GC_THRESHOLDS")
    if override:
        try:
            gc.set_threshold(*(int(x) for x in override.split(",")))
        except (ValueError, TypeError):
            sys.exit(f"HYPERLOOM_GC_THRESHOLDS must be up to three integers, got {override!r}")
        return
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _exit_with_parent(name):
    """Stop this process, through its SIGTERM handler (a clean shutdown), once the process
    that started it has ended: the embedded cluster of a client that was killed must not
    outlive it.  A daemon thread, so the server's loop stays free of the check."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:  # re-parented (to init or a subreaper) once it dies
            time.sleep(0.5)
        logging.getLogger(f"hyperloom.{name}").info(
            "the process that started this one (pid %d) ended: shutting down", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


EXIT_WITH_PARENT_HELP = ("exit when the process that started this one ends (the embedded "
                         "local cluster of a client uses it)")


def broker_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="loom-broker", description="Run the hyperloom broker (holds plans, schedules tasks).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; use 0.0.0.0 or an "
                             "interface address to serve other machines)")
    parser.add_argument("--port", type=int, default=protocol.DEFAULT_PORT,
                        help=f"TCP port (default {protocol.DEFAULT_PORT}; 0 picks a free port)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                        help="expected worker heartbeat interval (default 1.0)")
    parser.add_argument("--heartbeat-misses", type=int, default=5, metavar="N",
                        help="missed heartbeats before a worker is declared lost (default 5)")
    parser.add_argument("--secret-file", metavar="PATH",
                        help="authenticate and encrypt every connection with the CURVE key in "
                             "PATH (make one with loom-keygen)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="logging level on stderr (default info)")
    parser.add_argument("--exit-with-parent", action="store_true", help=EXIT_WITH_PARENT_HELP)
    parser.add_argument("--journal", metavar="PATH",
                        help="record plans, results and sessions in PATH; started again with "
                             "the same PATH, the broker resumes where it was "
                             "(docs/reliability.md)")
    parser.add_argument("--reattach-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="after a restart from --journal, wait this long for the workers "
                             "holding data to re-attach before recomputing it (default 10)")
    parser.add_argument("--session-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="with --journal, keep a disconnected client's session and data "
                             "this long for it to re-attach (default 120)")
    parser.add_argument("--journal-compact-bytes", type=int, default=64 << 20, metavar="N",
                        help="with --journal, rewrite it while running once it exceeds N "
                             "bytes and 4 times its size after the last compaction (default "
                             "64 MiB)")
    _add_cluster_options(parser, "broker")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("Invalid port number")
    _setup_logging(args.log_level, "loom-broker")
    _tune_gc()
    host = _interface_or(parser, args.interface, args.host)
    max_peers = _raise_fd_limit("loom-broker")
    from .broker.server import BrokerConfig, BrokerServer
    config = BrokerConfig(host=host, port=args.port, heartbeat_interval=args.heartbeat,
                          heartbeat_misses=args.heartbeat_misses, secret_file=args.secret_file,
                          max_peers=max_peers, journal=args.journal,
                          reattach_timeout=args.reattach_timeout,
                          session_timeout=args.session_timeout,
                          journal_compact_bytes=args.journal_compact_bytes)
    from .broker.journal import JournalError
    import zmq
    try:
        server = BrokerServer(config)
    except JournalError as error:
        parser.exit(2, f"loom-broker: {error}\n")
    except zmq.ZMQError as error:  # e.g. the port is taken: one line, not a traceback
        parser.exit(2, f"loom-broker: cannot listen on tcp://{host}:{args.port}: "
                       f"{zmq.strerror(error.errno)} (another broker there? choose --port)\n")
    server.install_signal_handlers()
    if args.exit_with_parent:
        _exit_with_parent("broker")
    if args.scheduler_file:  # before the endpoint line: who read that line finds the file
        info = scheduler_file.describe(scheduler_file.advertised_host(host), server.port,
                                       curve=bool(args.secret_file))
        scheduler_file.write(args.scheduler_file, info)
        logging.getLogger("hyperloom.broker").info(
            "wrote scheduler file %s (%s)", args.scheduler_file, info.address)
    print(server.endpoint, flush=True)
    logging.getLogger("hyperloom.broker").info("listening on %s", server.endpoint)
    try:
        _run_profiled("broker", server.run)
    finally:
        server.close()
        if args.scheduler_file:
            scheduler_file.remove(args.scheduler_file)
    return 0


def _add_cluster_options(parser, role):
    parser.add_argument("--scheduler-file", metavar="PATH",
                        help="write the broker's address to PATH (JSON, atomically; removed at "
                             "exit)" if role == "broker" else
                        "read the broker's address from PATH, as written by loom-broker "
                        "--scheduler-file (waits for it to appear)")
    parser.add_argument("--interface", metavar="NAME",
                        help="listen on and advertise the IPv4 address of network interface "
                             "NAME (e.g. ib0, eth0); overrides --host")


def _interface_or(parser, interface, host):
    if not interface:
        return host
    try:
        return scheduler_file.interface_address(interface)
    except LoomError as error:
        parser.error(str(error))


def _raise_fd_limit(name) -> int | None:
    """Each peer connection costs a file descriptor: lift the soft limit to the hard one,
    warn when that is low, and return how many peers fit (None: no limit to speak of)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, FD_WANTED)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            logging.getLogger(f"hyperloom.{name}").warning(
                "cannot raise the open-file limit from %d to %d (%s)", soft, wanted, error)
    peers = max(1, soft - FD_RESERVE)
    if soft < FD_WANTED:
        logging.getLogger(f"hyperloom.{name}").warning(
            "%s may open at most %d files (ulimit -n; hard limit %s): room for about %d "
            "peers, more are refused; ask for a higher hard limit", name, soft, hard, peers)
    return peers


FD_RESERVE = 48     # descriptors the process itself uses (zmq context, sockets, logs, pipes)
FD_WANTED = 4096    # one per peer connection and some spare: about 4,000 peers


def worker_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="loom-worker", description="Run a hyperloom worker and connect it to a broker.")
    parser.add_argument("broker_host", metavar="BROKER_HOST", nargs="?",
                        help="broker address (or give --scheduler-file)")
    parser.add_argument("broker_port", metavar="BROKER_PORT", type=int, nargs="?",
                        help="broker port")
    parser.add_argument("--cpus", type=int, default=psutil.cpu_count(logical=True) or 1,
                        help="cores this worker offers (default: all cores psutil reports)")
    parser.add_argument("--wdir", default="/tmp",
                        help="directory in which the worker makes its own work directory "
                             "(default /tmp; removed on exit)")
    parser.add_argument("--nopin", action="store_true",
                        help="do not pin run tasks to their cores")
    parser.add_argument("--cores", metavar="LIST",
                        help="comma-separated ids of the cores that run tasks are pinned to, "
                             "as many as --cpus (default: the first --cpus cores this worker "
                             "may run on); workers sharing a machine pin to distinct cores")
    parser.add_argument("--host", default=None,
                        help="address peers use to reach this worker's data socket "
                             "(default: the local address that reaches the broker)")
    parser.add_argument("--no-bulk", action="store_true",
                        help="send big objects to other workers over ZeroMQ, not over the "
                             "plain-TCP bulk lane (this worker still fetches what others "
                             "offer there; off anyway with --secret-file)")
    parser.add_argument("--extension", action="append", default=[], metavar="MODULE",
                        help="import MODULE and call its register_tasks(registry) to add "
                             "task types (repeatable)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                        help="heartbeat interval towards the broker (default 1.0)")
    parser.add_argument("--broker-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="exit if the broker cannot be reached for this long (default "
                             "30); until then it keeps its data and running tasks and "
                             "re-attaches to a broker that comes back")
    parser.add_argument("--secret-file", metavar="PATH",
                        help="the cluster's CURVE key file (as given to loom-broker)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="logging level on stderr (default info)")
    parser.add_argument("--exit-with-parent", action="store_true", help=EXIT_WITH_PARENT_HELP)
    _add_cluster_options(parser, "worker")
    parser.add_argument("--lifetime", default="auto", metavar="SECONDS",
                        help="retire after SECONDS: take no new tasks, let the broker copy "
                             "the data only this worker holds, exit (default 'auto': in a "
                             "Slurm job, shortly before the job's end time; else never)")
    parser.add_argument("--scheduler-file-timeout", type=float, metavar="SECONDS",
                        default=scheduler_file.DEFAULT_WAIT,
                        help="how long to wait for the scheduler file to appear (default "
                             f"{scheduler_file.DEFAULT_WAIT:g})")
    args = parser.parse_args(argv)
    if args.cpus < 0:
        parser.error("Invalid number of cpus")
    core_ids = _core_list(parser, args.cores, args.cpus)
    _setup_logging(args.log_level, "loom-worker")
    _broker_address(parser, args)
    if not 1 <= args.broker_port <= 65535:
        parser.error("Invalid port number")
    _tune_gc()
    lifetime = _lifetime(parser, args.lifetime)
    args.host = _interface_or(parser, args.interface, args.host)
    _raise_fd_limit("loom-worker")
    extensions = tuple(importlib.import_module(name) for name in args.extension)
    from .worker.server import BrokerLost, WorkerConfig, WorkerServer
    config = WorkerConfig(
        broker_host=args.broker_host, broker_port=args.broker_port, cpus=args.cpus,
        work_dir=args.wdir, pin=not args.nopin, core_ids=core_ids, host=args.host,
        heartbeat_interval=args.heartbeat, broker_timeout=args.broker_timeout,
        extensions=extensions, secret_file=args.secret_file, lifetime=lifetime,
        bulk=not args.no_bulk)
    server = WorkerServer(config)
    server.install_signal_handlers()
    if args.exit_with_parent:
        _exit_with_parent("worker")
    code = 0
    try:
        _run_profiled("worker", server.run)
    except BrokerLost as error:
        logging.getLogger("hyperloom.worker").error("%s; exiting", error)
        code = 2
    finally:
        server.close()
    # Threads may still run user code that cannot be interrupted (a Python task in
    # a loop); the worker must exit anyway, so it does not wait to join them.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


def _broker_address(parser, args):
    """BROKER_HOST BROKER_PORT, or the address the scheduler file gives (waiting for it)."""
    if args.scheduler_file:
        if args.broker_host is not None:
            parser.error("give either BROKER_HOST BROKER_PORT or --scheduler-file, not both")
        try:
            info = scheduler_file.read(args.scheduler_file, args.scheduler_file_timeout)
        except LoomError as error:
            parser.exit(2, f"loom-worker: {error}\n")
        if info.curve and not args.secret_file:
            parser.exit(2, f"loom-worker: the broker in {args.scheduler_file} demands the "
                           f"cluster's secret file: give --secret-file\n")
        args.broker_host, args.broker_port = info.host, info.port
    elif args.broker_host is None or args.broker_port is None:
        parser.error("give BROKER_HOST BROKER_PORT or --scheduler-file PATH")


def _core_list(parser, value, cpus) -> tuple:
    if value is None:
        return ()
    try:
        cores = tuple(int(core) for core in value.split(","))
    except ValueError:
        parser.error(f"--cores must be comma-separated core ids, got {value!r}")
    if len(cores) != cpus or min(cores, default=0) < 0:
        parser.error(f"--cores must list {cpus} core ids (one per --cpus), got {value!r}")
    return cores


def _lifetime(parser, value):
    if value == "auto":
        from .cluster.walltime import slurm_lifetime
        return slurm_lifetime()
    try:
        seconds = float(value)
    except ValueError:
        parser.error(f"--lifetime must be a number of seconds or 'auto', got {value!r}")
    if seconds <= 0:
        parser.error(f"--lifetime must be positive, got {value}")
    return seconds
