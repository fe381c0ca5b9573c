"""The broker's ROUTER loop: the only place with sockets and clocks.

It receives, decodes, calls the core (``BrokerState``), encodes its outbox
and sends: every decision is the core's. Everything readable is drained
before anything is sent, so one flush carries the effects of many messages:
batching comes from the loop itself.

Peer loss: libzmq does not tell a ROUTER which peer left, so the loop records
each peer's socket fd from its first message (``SRCFD``) and watches the
socket monitor for DISCONNECTED events on that fd. ZMTP heartbeats make
libzmq close connections to peers that went silent, which then shows up the
same way. Workers also send Heartbeat messages; the core checks them on the
monotonic clock this loop passes in (``on_tick``). The fd <-> identity map is
the one piece of peer bookkeeping kept here: it is about sockets.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

import psutil
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import protocol, security
from ..protocol import ProtocolError
from ..trace import TraceWriter
from .outbox import messages
from .state import BrokerState

log = logging.getLogger("hyperloom.broker")

DRAIN_LIMIT = 2000          # messages handled before a flush, so replies keep flowing


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    heartbeat_interval: float = 1.0     # seconds between worker heartbeats
    heartbeat_misses: int = 5           # silent intervals before a worker is lost
    overbooking: int = 3
    secret_file: str | None = None      # CURVE: admit only peers holding this cluster key


class BrokerServer:
    def __init__(self, config: BrokerConfig):
        self.config = config
        self.core = BrokerState(
            overbooking=config.overbooking,
            heartbeat_timeout=config.heartbeat_interval * config.heartbeat_misses,
            checkpoint_exists=os.path.exists,
            open_recorder=lambda directory: TraceWriter(directory, "broker"))
        self.context = zmq.Context()
        self.authenticator = None
        self.router = self.context.socket(zmq.ROUTER)
        if config.secret_file:
            keys = security.load_secret_file(config.secret_file)
            self.authenticator = security.start_authenticator(self.context, keys, log)
            security.secure_server(self.router, keys)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 0)
        interval_ms = int(config.heartbeat_interval * 1000)
        self.router.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, interval_ms * config.heartbeat_misses)
        self.monitor = self.router.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | security.HANDSHAKE_FAILURES)
        if config.port == 0:
            self.port = self.router.bind_to_random_port(f"tcp://{config.host}")
        else:
            self.router.bind(f"tcp://{config.host}:{config.port}")
            self.port = config.port
        self.endpoint = f"tcp://{config.host}:{self.port}"
        self.fd_of = {}          # identity -> socket fd of its connection
        self.identity_at_fd = {}
        # fds of peers dropped before their DISCONNECTED event was read: that
        # event must not be taken for a newer connection that reused the fd.
        self.stale_disconnects = {}
        self.running = True
        self.process = psutil.Process()

    @property
    def state(self) -> BrokerState:
        return self.core

    # ------------------------------------------------------------ loop

    def run(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        timeout_ms = int(self.config.heartbeat_interval * 1000)
        next_check = time.monotonic() + self.config.heartbeat_interval
        core = self.core
        while self.running and not core.stop_requested:
            events = dict(poller.poll(timeout_ms))
            # Messages first: a peer's last messages precede its disconnect event.
            drained = self._drain_router() if self.router in events else True
            if self.monitor in events and drained:
                self._drain_monitor()
            now = time.monotonic()
            core.on_drained(now)
            self._flush()
            if now >= next_check:
                core.on_tick(now)
                next_check = now + self.config.heartbeat_interval
                if core.tracing:
                    core.on_sample(self.process.cpu_percent(), self.process.memory_info().rss)
        core.on_shutdown()
        self._flush()

    def stop(self, *_):
        self.running = False

    def close(self):
        self.monitor.close(linger=0)
        self.router.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _drain_router(self) -> bool:
        """Handle waiting messages; False if some are left for the next round."""
        router = self.router
        for _ in range(DRAIN_LIMIT):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            try:
                self._on_message(frames)
            except Exception:  # a bug must not take the broker down for everyone
                log.exception("error while handling a message; message dropped")
        return False

    def _drain_monitor(self):
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] != zmq.EVENT_DISCONNECTED:
                log.warning("refused a connection: handshake failed (%s)", event["event"].name)
                continue
            fd = event["value"]
            stale = self.stale_disconnects.get(fd, 0)
            if stale:
                if stale == 1:
                    del self.stale_disconnects[fd]
                else:
                    self.stale_disconnects[fd] = stale - 1
                continue
            identity = self.identity_at_fd.pop(fd, None)
            if identity is not None:
                self.fd_of.pop(identity, None)
                self.core.on_peer_disconnected(identity, time.monotonic())

    def _on_message(self, frames):
        identity = frames[0].bytes
        core = self.core
        if len(frames) < 2:
            core.on_undecodable(identity, "message has no header frame")
            return
        try:
            code, fields = protocol.decode(frames[1].buffer)
        except ProtocolError as error:
            core.on_undecodable(identity, str(error))
            return
        known = identity in core.peers
        core.on_message(identity, code, fields, frames, time.monotonic())
        if not known and identity in core.peers:
            self._map_fd(identity, frames[1].get(zmq.SRCFD))

    def _map_fd(self, identity, fd):
        """A peer said hello: tie its connection's fd to it, to see it disconnect."""
        previous = self.identity_at_fd.get(fd)
        if previous is not None and previous != identity:
            # The fd was reused: the previous connection closed and its
            # DISCONNECTED event is still on its way; it must not drop this one.
            self.stale_disconnects[fd] = self.stale_disconnects.get(fd, 0) + 1
            self.fd_of.pop(previous, None)
            self.core.on_peer_disconnected(previous, time.monotonic(), "connection replaced")
        self.fd_of[identity] = fd
        self.identity_at_fd[fd] = identity

    # ------------------------------------------------------------ output

    def _flush(self):
        out = self.core.outbox
        if out.is_empty():
            return
        send = self.router.send_multipart
        for identity, frames in messages(out):
            try:
                send([identity, *frames], copy=False)
            except zmq.ZMQError as error:
                if error.errno != zmq.EHOSTUNREACH:
                    raise
                # The peer is gone; its loss is handled through the monitor.
        out.clear()
