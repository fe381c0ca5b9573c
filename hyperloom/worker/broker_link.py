"""The worker's link to its broker: hello, a dropped and restored connection
(register again, or re-attach with what it holds), keep-alive (heartbeats, usage
reports, giving up on a silent broker), retirement at walltime, and sends that
never block.

A mixin of ``WorkerServer`` (server.py), which owns the sockets and gives these
attributes their values: the loop's ``self._send_frames(...)`` and
``self._keep_alive(now)`` cost what they did when they were written there.
"""

from __future__ import annotations

import logging
import socket as pysocket
import time
from typing import TYPE_CHECKING

import psutil
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import protocol
from ..frames import NOBLOCK, send_frames
from ..trace import TraceWriter
from .state import WorkerCore
from .taskdef import TaskRegistry
from .transfer import DataChannels

if TYPE_CHECKING:
    from .server import WorkerConfig

log = logging.getLogger("hyperloom.worker")

USAGE_INTERVAL = 2.0        # seconds between WorkerUsage reports (CPU, memory) to the broker
CHILDREN_REFRESH = 30.0     # seconds between scans for the worker's child processes


class BrokerLost(Exception):
    pass


class BrokerLink:
    # given their values by WorkerServer.__init__ (server.py)
    config: WorkerConfig
    registry: TaskRegistry
    core: WorkerCore
    channels: DataChannels
    dealer: zmq.Socket
    monitor: zmq.Socket
    tracer: TraceWriter | None
    process: psutil.Process
    running: bool
    disconnected_since: float | None   # when the connection dropped; None while connected
    rejoin_as: int | None              # the id to re-attach with after the broker was lost
    ever_registered: bool
    retiring: bool
    retire_at: float | None
    last_idle_check: float
    last_sample: float
    last_usage: float
    last_broker_message: float
    last_sent: float
    broker_address: str
    _children: list[psutil.Process]
    _children_listed: float

    def _hello(self):
        self._send_always(protocol.encode(
            protocol.HELLO_WORKER, protocol.PROTOCOL_VERSION, self.config.cpus,
            self.channels.address, self.registry.symbols(), pysocket.gethostname()))

    def _on_connection_events(self):
        """The broker connection dropped or came back (libzmq reconnects by itself)."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED and self.disconnected_since is None:
                log.warning("lost the connection to the broker; keeping the data and running "
                            "tasks, retrying for %.0f s", self.config.broker_timeout)
                self.disconnected_since = time.monotonic()
                if self.core.worker_id is not None:
                    # Nothing is sent until a broker takes this worker again: libzmq would
                    # queue it and deliver it before the RejoinWorker.
                    self.rejoin_as, self.core.worker_id = self.core.worker_id, None
                    self._reopen_broker_socket()
            elif event["event"] == zmq.EVENT_CONNECTED and self.disconnected_since is not None:
                # A TCP connection, not yet a broker that accepts us: the timer
                # stops only at Welcome (a refused handshake reconnects in a loop).
                if self.rejoin_as is None:
                    log.info("reconnected to the broker; registering again")
                    self._hello()
                else:
                    self._rejoin()

    def _rejoin(self):
        """Re-attach as the worker this was, with the data it holds and the tasks it runs
        (a restarted broker takes them over; see docs/reliability.md)."""
        self.core, held, running = self.core.rejoining()
        # Nobody will tell this worker which peers left while the broker was away.
        self.channels.close_peers(self.channels.open_channels())
        log.info("reconnected to the broker; re-attaching as worker %d with %d objects and "
                 "%d running tasks", self.rejoin_as, len(held), len(running))
        self._send_frames([protocol.encode(
            protocol.REJOIN_WORKER, protocol.PROTOCOL_VERSION, self.config.cpus,
            self.channels.address, self.registry.symbols(), pysocket.gethostname(),
            self.rejoin_as, held, running)], always=True)

    def _memory(self) -> int:
        """The memory of this worker with the programs and executor processes it runs.

        Finding the children reads every process's /proc entry (~9 ms with 600 processes
        on the machine: 256 workers doing it every 2 s took over half a core from a
        2-core node), so the list is refreshed every CHILDREN_REFRESH seconds only; the
        long-lived executor processes are what holds memory."""
        now = time.monotonic()
        if now - self._children_listed >= CHILDREN_REFRESH:
            self._children_listed = now
            self._children = self.process.children(recursive=True)
        memory = self.process.memory_info().rss
        for child in self._children:
            try:
                memory += child.memory_info().rss
            except psutil.Error:
                pass
        return memory

    def _retire_when_due(self, now):
        """At the end of its lifetime the worker tells the broker, which takes its work
        back and copies its data away, then sends Shutdown (broker/retire.py)."""
        if not self.retiring:
            if self.core.worker_id is not None and now >= self.retire_at:
                log.info("lifetime of %.0f s reached: retiring (no new tasks; the broker "
                         "copies the data only this worker holds, then lets it go)",
                         self.config.lifetime)
                self.retiring = True
                self._send(protocol.encode(protocol.RETIRING))
        elif now >= self.retire_at + self.config.retire_grace:
            log.warning("retired %.0f s ago and not let go by the broker: exiting",
                        now - self.retire_at)
            self.running = False

    def _keep_alive(self, now):
        if self.retire_at is not None:
            self._retire_when_due(now)
        if now - self.last_idle_check >= 1.0:
            self.last_idle_check = now
            self.channels.close_idle(now)
        if self.tracer is not None and now - self.last_sample >= 1.0:
            self.last_sample = now
            # The whole node's CPU (as the original), and the memory of this worker.
            self.tracer.sample(psutil.cpu_percent(), self._memory())
        if self.core.worker_id is not None and now - self.last_usage >= USAGE_INTERVAL:
            self.last_usage = now
            self._send(protocol.encode(protocol.WORKER_USAGE, round(psutil.cpu_percent()),
                                       self._memory()))
        if self.core.worker_id is not None \
                and now - self.last_sent >= self.config.heartbeat_interval:
            self._send(protocol.encode(protocol.HEARTBEAT))
        if self.disconnected_since is not None:
            silent = now - self.disconnected_since
        elif self.core.worker_id is None:
            silent = now - self.last_broker_message
        else:
            return
        if silent > self.config.broker_timeout:
            where = f"{self.config.broker_host}:{self.config.broker_port}"
            if self.ever_registered:
                raise BrokerLost(f"lost the broker at {where}: no connection for {silent:.0f} s")
            raise BrokerLost(
                f"could not reach a broker at tcp://{where} (tried for {silent:.0f} s); if "
                f"this node cannot reach that address, start loom-broker with --interface "
                f"NAME of a network this node shares with it (and check --secret-file)")

    def _send(self, header):
        self._send_frames([header])

    def _send_always(self, header):
        self._send_frames([header], always=True)

    def _send_frames(self, frames, always=False):
        """Never block: with no connection to the broker (refused, or gone) a DEALER
        send would wait forever; the broker counts this worker lost then anyway.
        While the broker is away only a hello goes (``always``): reports wait for the
        re-attach, which carries them."""
        if self.disconnected_since is not None and not always:
            return
        try:
            send_frames(self.dealer, frames, NOBLOCK, copy=len(frames) == 1)
        except zmq.Again:
            log.debug("no connection to the broker: a message was dropped")
        self.last_sent = time.monotonic()
