"""The worker's loop: DEALER to the broker, PULL for data, and the executor's wake pipe.

Owns every socket and all worker state (one thread). Each iteration drains
the broker, the data channel and finished executions, starts what can
start, and sends one TasksDone carrying every report since the last one.
Big objects from peers arrive on the bulk lane's threads (bulk.py), which wake
the loop through a pipe it polls. The link to the broker (hello, reconnection and
rejoin, keep-alive, retirement, sends) is the ``BrokerLink`` mixin of broker_link.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket as pysocket
import time
from dataclasses import dataclass

import psutil
import zmq

from .. import data, protocol, security
from ..frames import has_message, recv_frames
from ..trace import TraceWriter
from .broker_link import CHILDREN_REFRESH, BrokerLink, BrokerLost
from .builtin import register_builtin_tasks
from .executor import Executor
from .state import NO_LONGER_HERE, WorkerCore
from .taskdef import TaskRegistry
from .transfer import DataChannels

log = logging.getLogger("hyperloom.worker")

RETIRE_LINGER_MS = 30_000   # how long a retired worker's last pushes may take to leave
TERM_GRACE = 0.5    # seconds a program's SIGTERM death waits for the worker's own SIGTERM
RETRY_MS = 10               # how soon pushes that found a peer's queue full are tried again


@dataclass(frozen=True)
class WorkerConfig:
    broker_host: str
    broker_port: int
    cpus: int
    work_dir: str = "/tmp"
    pin: bool = True
    host: str | None = None              # data address host; default: the one reaching the broker
    heartbeat_interval: float = 1.0
    broker_timeout: float = 30.0         # give up after this long without the broker
    extensions: tuple = ()               # modules with register_tasks(registry)
    secret_file: str | None = None       # CURVE on the broker and data connections
    lifetime: float | None = None        # retire this many seconds after start (walltime)
    retire_grace: float = 60.0           # after retiring, exit anyway this much later
    core_ids: tuple = ()                 # cores run tasks are pinned to; (): the first cpus
    bulk: bool = True                    # offer big objects on the plain-TCP bulk lane


def standard_registry() -> TaskRegistry:
    """Built-in tasks plus run and the Python tasks."""
    from .py_task import execute_py_call, execute_py_value
    from .run_task import execute_run
    registry = TaskRegistry()
    register_builtin_tasks(registry)
    registry.register(protocol.TASK_RUN, execute_run, "thread")
    # py_value only unpickles, and its PyObj keeps the pickle: a thread is cheaper
    # than an executor process, which would unpickle it a second time.
    registry.register(protocol.TASK_PY_VALUE, execute_py_value, "thread")
    registry.register(protocol.TASK_PY_CALL, execute_py_call, "python")
    return registry


def local_address_towards(host: str, port: int) -> str:
    """The local IP address this machine uses to reach ``host`` (no packet is sent)."""
    try:
        with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class WorkerServer(BrokerLink):
    def __init__(self, config: WorkerConfig, registry: TaskRegistry | None = None):
        self.config = config
        self.registry = registry or standard_registry()
        for module in config.extensions:
            module.register_tasks(self.registry)
        host = config.host or local_address_towards(config.broker_host, config.broker_port)
        self.work_dir = os.path.join(
            config.work_dir, f"worker-{pysocket.gethostname()}-{os.getpid()}")
        os.makedirs(os.path.join(self.work_dir, "run"), exist_ok=True)
        os.makedirs(os.path.join(self.work_dir, "data"), exist_ok=True)
        self.context = zmq.Context()
        self.keys = security.load_secret_file(config.secret_file) if config.secret_file else None
        self.authenticator = None
        if self.keys is not None:
            self.authenticator = security.start_authenticator(self.context, self.keys, log)
        self.poller = zmq.Poller()
        self._open_broker_socket()
        self.channels = DataChannels(self.context, host, self.keys, self.registry.data_types,
                                     bulk=config.bulk)
        self.core = WorkerCore(config.cpus)
        self.executor = Executor(self.registry, config.cpus, self.work_dir, config.pin,
                                 list(config.core_ids) or _core_ids(config.cpus))
        self.disconnected_since = None
        self.tracer = None
        self.process = psutil.Process()
        self.last_sample = 0.0
        self.last_usage = 0.0         # when WorkerUsage was last sent (for dashboards)
        self._children: list[psutil.Process] = []   # see _memory
        self._children_listed = -CHILDREN_REFRESH
        self.running = True
        self.rejoin_as = None         # the id to re-attach with after the broker was lost
        self.ever_registered = False
        self.retiring = False
        self.last_idle_check = time.monotonic()
        self.retire_at = time.monotonic() + config.lifetime if config.lifetime else None
        self.last_broker_message = time.monotonic()
        self.last_sent = 0.0
        self.broker_address = f"tcp://{config.broker_host}:{config.broker_port}"

    # ------------------------------------------------------------ lifecycle

    def _open_broker_socket(self):
        """The DEALER to the broker, its connection monitor, both polled by the loop."""
        self.dealer = self.context.socket(zmq.DEALER)
        if self.keys is not None:
            security.secure_client(self.dealer, self.keys)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.setsockopt(zmq.SNDHWM, 0)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        interval_ms = int(self.config.heartbeat_interval * 1000)
        self.dealer.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        self.dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, interval_ms * 5)
        self.monitor = self.dealer.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.poller.register(self.dealer, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def _reopen_broker_socket(self):
        """The connection dropped: a new DEALER. libzmq would deliver what the old one
        still queued (reports sent before the loss was seen) to the next broker ahead
        of the RejoinWorker, which that broker refuses; the rejoin carries them."""
        for socket in (self.dealer, self.monitor):
            self.poller.unregister(socket)
            socket.close(linger=0)
        self._open_broker_socket()
        self.dealer.connect(self.broker_address)

    def run(self):
        self.dealer.connect(self.broker_address)
        self._hello()
        log.info("worker started: %d cpus, data at %s, broker %s", self.config.cpus,
                 self.channels.address, self.broker_address)
        poller = self.poller
        poller.register(self.channels.pull, zmq.POLLIN)
        poller.register(self.executor.wake_read, zmq.POLLIN)
        bulk_wake = self.channels.wake.read_fd if self.channels.wake is not None else None
        if bulk_wake is not None:
            poller.register(bulk_wake, zmq.POLLIN)
        interval_ms = int(self.config.heartbeat_interval * 1000)
        while self.running:
            # Pushes waiting for a busy peer are retried soon (they are rare).
            timeout_ms = RETRY_MS if self.channels.n_waiting else interval_ms
            events = dict(poller.poll(timeout_ms))
            if self.dealer in events:
                self._drain_broker()
            if self.monitor in events:
                self._on_connection_events()
            if self.channels.pull in events:
                self._drain_data()
            if bulk_wake in events:
                for source, received in self.channels.take_fetched():
                    self._on_data(source, received)
            if self.executor.wake_read in events:
                for task, result, error in self.executor.take_completions():
                    self._task_done(task, result, error)
            self._start_tasks()
            self._flush_reports()
            self.channels.retry()
            self._keep_alive(time.monotonic())

    def stop(self, *_):
        self.running = False

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def close(self):
        if self.core.worker_id is not None:
            try:
                self.dealer.send(protocol.encode(protocol.GOODBYE), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self.tracer is not None:
            self.tracer.close()
        self._kill_children()
        self.executor.close()
        # Retired: what it was told to push must still reach the peers (see retire.py).
        self.channels.close(linger_ms=RETIRE_LINGER_MS if self.retiring else 0)
        self.monitor.close(linger=0)
        self.dealer.close(linger=100)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _kill_children(self):
        """Programs and executor processes still running die with the worker."""
        for child in self.process.children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass

    # ------------------------------------------------------------ broker messages

    def _drain_broker(self):
        dealer = self.dealer
        while True:
            try:
                frames = recv_frames(dealer)
            except zmq.Again:
                return
            self.last_broker_message = time.monotonic()
            try:
                code, fields = protocol.decode(frames[0].buffer)
            except protocol.ProtocolError as error:
                log.error("malformed message from the broker: %s", error)
                continue
            self._on_broker_message(code, fields)
            if not has_message(dealer):
                return

    def _on_broker_message(self, code, fields):
        """Decoded message -> the core's handler; the server only does the I/O it returns."""
        core = self.core
        if code == protocol.COMPUTE_TASKS:
            core.on_compute(fields[0])
        elif code == protocol.SEND_DATA:
            for address, objects in core.on_send_data(fields[0]):
                self.channels.push(address, objects)
                if self.tracer is not None:
                    for data_id, obj in objects:
                        self.tracer.data_sent(data_id, obj.size, address)
        elif code == protocol.UPLOAD:
            client, request, ids, lane = fields
            self._send_upload(client, request, core.on_upload(ids), lane)
        elif code == protocol.REMOVE_DATA:
            core.on_remove(fields[0])
        elif code == protocol.CANCEL_TASKS:
            core.on_cancel(fields[0])
            stopped = self.executor.stop(fields[0])  # cores come free with their completions
            if stopped:
                log.debug("stopping %d canceled tasks", stopped)
        elif code == protocol.PEERS_GONE:
            self.channels.close_peers(fields[0])
        elif code == protocol.STEAL_TASKS:
            core.on_steal(fields[0])
            log.debug("asked to give back %d tasks", len(fields[0]))
        elif code == protocol.WELCOME:
            core.on_welcome(fields[1])
            self.rejoin_as = None
            self.ever_registered = True
            self.disconnected_since = None
        elif code == protocol.ERROR:
            core.on_error(*fields)
            if core.refusal is not None:
                raise BrokerLost(f"the broker refused this worker: {core.refusal}")
        elif code == protocol.START_TRACE:
            self._start_trace(*fields)
        elif code == protocol.SHUTDOWN:
            core.on_shutdown()
            self.running = False
        else:
            log.error("unexpected %s from the broker", protocol.name_of(code))

    def _start_trace(self, path, worker_id):
        if self.tracer is not None:
            self.tracer.close()
        try:
            self.tracer = TraceWriter(path, f"worker-{worker_id}")
        except OSError as error:
            log.error("cannot write traces into %s: %s", path, error)

    def _send_upload(self, client, request, objects, lane):
        entries = []
        frames = []
        for data_id, obj in objects:
            if obj is None:
                entries.append([data_id, None, NO_LONGER_HERE])
                continue
            # The client may not see our file system nor know our extension types.
            meta, _ = data.encode(data.for_client(obj), frames)
            entries.append([data_id, meta])
        offer = self.channels.offer_to_client(client, entries, frames) if lane else None
        if offer is not None:
            frames = []   # they wait on the bulk lane for the client
        self._send_frames([protocol.encode(protocol.UPLOADED, client, request, entries, offer),
                           *frames])

    # ------------------------------------------------------------ data and tasks

    def _drain_data(self):
        while True:
            message = self.channels.receive()
            if message is None:
                return
            self._on_data(*message)

    def _on_data(self, source, received):
        for data_id, obj in received:
            self.core.on_data(data_id, obj)
            if self.tracer is not None:
                self.tracer.data_received(data_id, obj.size, source)  # duration unknown

    def _task_done(self, task, result, error):
        if error is not None and "terminated by signal 15 (SIGTERM)" in str(error):
            # A batch system ending the job (scancel, preemption) signals this worker and
            # its programs at once; give our own SIGTERM a moment to arrive.
            deadline = time.monotonic() + TERM_GRACE
            while self.running and time.monotonic() < deadline:
                time.sleep(0.01)
        if not self.running:
            # Stopping: a program killed with us has not failed. The broker takes back
            # what this worker held when it says goodbye, and runs it elsewhere.
            return
        self.core.on_task_done(task, result, error)
        if self.tracer is not None:
            self.tracer.task_finished(task.id, result.size if result is not None else 0,
                                      error is None)

    def _start_tasks(self):
        core = self.core
        while True:
            started = core.take_startable()
            if not started:
                return
            if self.tracer is not None:
                self._start_traced(started)
                continue
            for task in started:
                outcome = self.executor.start(task, core.inputs_of(task), core)
                if outcome is not None:  # it ran inline
                    core.on_task_done(task, *outcome)

    def _start_traced(self, started):
        """``_start_tasks``'s loop, recording what ran inline with one clock read per task: a
        task starts when the one before it ended (the loop does nothing else in between)."""
        core, tracer = self.core, self.tracer
        clock = tracer.now
        ran = []  # flat, six fields a task: no tuple per task for the GC to track
        begin = clock()
        for task in started:
            outcome = self.executor.start(task, core.inputs_of(task))
            if outcome is None:  # runs elsewhere: traced as start, then finish
                tracer.task_started(task.id, task.cpu_ids)
                begin = clock()
                continue
            result, error = outcome
            core.on_task_done(task, result, error)
            end = clock()
            ran += (begin, task.id, end, result.size if result is not None else 0,
                    error is None, task.cpu_ids)
            begin = end
        tracer.tasks_ran(ran)

    def _flush_reports(self):
        if self.disconnected_since is not None:
            return  # kept for the broker that takes this worker again
        finished, failed, results, stolen = self.core.take_reports()
        if not (finished or failed or stolen):
            return
        entries = []
        frames = []
        for task_id, obj in results:
            if isinstance(obj, data.File):
                continue  # fetched through Upload, which reads the file
            first = len(frames)
            meta, _ = data.encode(data.for_client(obj), frames)
            entries.append([task_id, meta, len(frames) - first])
        self._send_frames([protocol.encode(protocol.TASKS_DONE, finished, failed, entries,
                                           stolen), *frames])


def _core_ids(cpus: int):
    """Real core ids to pin to (for taskset), cycling if asked for more than exist."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        available = list(range(os.cpu_count() or 1))
    return [available[i % len(available)] for i in range(cpus)]
