"""The broker's ROUTER loop: the only place with sockets and clocks.

It receives, decodes, calls the core (``BrokerState``), encodes its outbox
and sends: every decision is the core's. Everything readable is drained
before anything is sent, so one flush carries the effects of many messages:
batching comes from the loop itself.

Peer loss: libzmq does not tell a ROUTER which peer left, so the loop follows
the socket monitor's ACCEPTED and DISCONNECTED events per fd and ties each peer
to the connection its Hello came in on (``SRCFD``; see connections.py). ZMTP
heartbeats make libzmq close connections to peers that went silent, which then
shows up the same way. Workers also send Heartbeat messages; the core checks
them on the monotonic clock this loop passes in (``on_tick``). Which peer a
connection carries is the one piece of peer bookkeeping kept here: it is about
sockets.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import protocol, security
from ..frames import has_message, recv_frames, send_frames
from ..protocol import ProtocolError
from ..trace import TraceWriter
from .connections import ConnectionTable
from .journal import JournalRecorder, JournalWriter, read_journal, write_journal
from .outbox import messages
from .state import BrokerState

log = logging.getLogger("hyperloom.broker")

DRAIN_LIMIT = 2000          # messages handled before a flush, so replies keep flowing
SMALL_HEADER = 4096         # bytes: see _drain_router
COMPACT_FACTOR = 4          # compact online when the journal is this much over its last size


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = protocol.DEFAULT_PORT
    heartbeat_interval: float = 1.0     # seconds between worker heartbeats
    heartbeat_misses: int = 5           # silent intervals before a worker is lost
    overbooking: int = 3
    secret_file: str | None = None      # CURVE: admit only peers holding this cluster key
    max_peers: int | None = None        # refuse more (the open-file limit allows no more)
    journal: str | None = None          # append what a restart needs here (journal.py)
    reattach_timeout: float = 10.0      # after a restart, wait this long for workers
    session_timeout: float = 120.0      # keep a disconnected client's session this long
    journal_compact_bytes: int = 64 << 20  # compact online beyond this (and 4x the last size)


class BrokerServer:
    def __init__(self, config: BrokerConfig):
        self.config = config
        self.core = BrokerState(
            overbooking=config.overbooking,
            heartbeat_timeout=config.heartbeat_interval * config.heartbeat_misses,
            checkpoint_exists=os.path.exists,
            open_recorder=lambda directory: TraceWriter(directory, "broker"),
            max_peers=config.max_peers,
            journal=JournalRecorder() if config.journal else None,
            reattach_timeout=config.reattach_timeout, session_timeout=config.session_timeout)
        self.journal = self._open_journal(config.journal) if config.journal else None
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
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | security.HANDSHAKE_FAILURES)
        if config.port == 0:
            self.port = self.router.bind_to_random_port(f"tcp://{config.host}")
        else:
            self.router.bind(f"tcp://{config.host}:{config.port}")
            self.port = config.port
        self.endpoint = f"tcp://{config.host}:{self.port}"
        self.connections = ConnectionTable()
        # peers whose connection closed, dropped after their messages are handled
        self._disconnected: list[bytes] = []
        self.running = True
        self.process = psutil.Process()

    @property
    def state(self) -> BrokerState:
        return self.core

    def _open_journal(self, path: str) -> JournalWriter:
        """Replay an existing journal into the core, compact it, and append from there.

        Raises journal.JournalError for a file of another version."""
        if os.path.exists(path) and os.path.getsize(path) > 0:
            contents = read_journal(path)
            if contents.problem:
                log.warning("journal %s is damaged: %s; read %d complete records, dropped "
                            "the last %d bytes", path, contents.problem, len(contents.records),
                            contents.dropped_bytes)
            skipped = self.core.replay(contents.records)
            if skipped:
                log.warning("journal %s: %d records did not apply (skipped)", path, skipped)
            size = write_journal(path, self.core.compact_records())
            log.info("journal %s: replayed %d records (%d bytes), compacted to %d bytes",
                     path, len(contents.records), contents.size, size)
        writer = JournalWriter(path)
        self._compact_at = max(self.config.journal_compact_bytes,
                               COMPACT_FACTOR * writer.bytes_written)
        self.core.journal = writer
        if self.core.restoring:
            self._journal_restore_deadline(writer)
        return writer

    # ------------------------------------------------------------ loop

    def run(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        timeout_ms = int(self.config.heartbeat_interval * 1000)
        next_check = time.monotonic() + self.config.heartbeat_interval
        core = self.core
        while self.running and not core.stop_requested:
            due = core.due_at()
            wait_ms = timeout_ms if due is None else min(  # +1: poll would round 0.5 ms to 0
                timeout_ms, max(0, int((due - time.monotonic()) * 1000) + 1))
            events = dict(poller.poll(wait_ms))
            # Messages first: a peer's last messages precede its disconnect event.
            drained = self._drain_router() if self.router in events else True
            if drained and (self.monitor in events or self._disconnected):
                self._read_monitor()
                self._drop_disconnected()
            now = time.monotonic()
            if now >= next_check:  # before on_drained: what it decides goes out at once
                core.on_tick(now)
                next_check = now + self.config.heartbeat_interval
                if core.tracing:
                    core.on_sample(self.process.cpu_percent(), self.process.memory_info().rss)
            core.on_drained(now)
            self._flush(now, self.journal)
        core.on_shutdown()
        if self.journal is not None:
            self.journal.close()
        self._flush(time.monotonic(), None)

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
        # After a small message, ask whether another waits (frames.has_message: cheaper
        # than the zmq.Again that ends the drain otherwise, ~30 µs a round trip). Not after
        # a big one (a plan chunk): asking reads the next one in while this one's objects
        # live, which left the broker 42 B per task larger after a 1M-task plan.
        for _ in range(DRAIN_LIMIT):
            try:
                frames = recv_frames(router)
            except zmq.Again:
                return True
            try:
                self._on_message(frames)
            except Exception:  # a bug must not take the broker down for everyone
                log.exception("error while handling a message; message dropped")
            if len(frames) > 1 and len(frames[1]) < SMALL_HEADER and not has_message(router):
                return True
        return False

    def _read_monitor(self):
        """Follow the connections; peers whose connection closed wait in _disconnected
        until the messages they sent before have been handled."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, fd = event["event"], event["value"]
            if kind == zmq.EVENT_ACCEPTED:
                self.connections.accepted(fd)
            elif kind == zmq.EVENT_DISCONNECTED:
                identity = self.connections.disconnected(fd)
                if identity is not None:
                    self._disconnected.append(identity)
            else:
                log.warning("refused a connection: handshake failed (%s)", kind.name)

    def _drop_disconnected(self):
        lost, self._disconnected = self._disconnected, []
        now = time.monotonic()
        for identity in lost:
            self.core.on_peer_disconnected(identity, now)

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
        """A peer said hello: tie it to its connection, to see that close."""
        # The ACCEPTED event of this connection precedes its first message: read it (and
        # what came before) so the Hello is tied to this connection, not to an older
        # one on the same fd whose DISCONNECTED event is still unread.
        self._read_monitor()
        previous = self.connections.claimed(fd, identity)
        if previous is not None:
            self.core.on_peer_disconnected(previous, time.monotonic(), "connection replaced")

    # ------------------------------------------------------------ output

    def _journal_restore_deadline(self, writer: JournalWriter):
        """How long this restart waits for its workers: ``reattach_timeout``, or what is
        left of it when the last restart was killed while waiting (without this, a broker
        killed more often than that would wait afresh each time and never go on)."""
        core = self.core
        deadline = core.pending_restore_deadline
        if deadline is None:
            deadline = time.time() + core.reattach_timeout
        writer.restore(deadline)
        writer.commit(time.monotonic(), True)
        core.reattach_timeout = max(0.0, deadline - time.time())

    def _compact_online(self):
        """The journal outgrew what is live: rewrite it as the records that replay to the
        present state (as at a restart), unless a chunked plan is half received or the
        broker still waits for workers to re-attach (try again after the next commit)."""
        core = self.core
        if core.restoring or any(c.pending_plan is not None for c in core.clients.values()):
            return
        assert self.journal is not None
        path, before = self.journal.path, self.journal.bytes_written
        self.journal.close()
        size = write_journal(path, core.compact_records())
        self.journal = JournalWriter(path)
        core.journal = self.journal
        self._compact_at = max(self.config.journal_compact_bytes, COMPACT_FACTOR * size)
        log.info("journal %s compacted online: %d bytes to %d (%d tasks live)", path, before,
                 size, len(core.tasks))

    def _flush(self, now: float, journal: JournalWriter | None):
        """Send what the core decided this round. With a journal, the round's records are
        written first (group commit), and what tells a client anything waits for their
        fsync (journal.JournalWriter.commit); what only workers are told does not (after
        a crash they re-attach and say what they hold and run), so tasks go out to
        their workers while the journal syncs."""
        out = self.core.outbox
        send = self._send
        if journal is None:
            if not out.is_empty():
                for identity, frames in messages(out):
                    send(identity, frames)
                out.clear()
            return
        journal.write()
        held: list[tuple[bytes, list[Any]]] = []
        if not out.is_empty():
            hold = journal.unsynced
            workers = self.core.workers
            for identity, frames in messages(out):
                if hold and identity not in workers:
                    held.append((identity, frames))
                else:
                    send(identity, frames)
            out.clear()
        journal.sync(now, bool(held))
        for identity, frames in held:
            send(identity, frames)
        if journal.bytes_written > self._compact_at:
            self._compact_online()

    def _send(self, identity: bytes, frames: list[Any]):
        try:
            send_frames(self.router, [identity, *frames], copy=False)
        except zmq.ZMQError as error:
            if error.errno != zmq.EHOSTUNREACH:
                raise
            # The peer is gone; its loss is handled through the monitor.
