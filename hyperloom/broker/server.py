"""The broker's ROUTER loop: the only place with sockets and clocks.

It receives, decodes, calls a BrokerState handler, and flushes the outbox.
Everything readable is drained before anything is sent, so one flush carries
the effects of many messages: batching comes from the loop itself.

Peer loss: libzmq does not tell a ROUTER which peer left, so the loop follows
the socket monitor's ACCEPTED and DISCONNECTED events per fd and ties each peer
to the connection its Hello came in on (``SRCFD``; see connections.py). ZMTP
heartbeats make libzmq close connections to peers that went silent, which then
shows up the same way. Workers also send Heartbeat messages, checked on a
monotonic clock.
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
from .connections import ConnectionTable
from .retire import Retirements
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
    max_peers: int | None = None        # refuse more (the open-file limit allows no more)


class BrokerServer:
    def __init__(self, config: BrokerConfig):
        self.config = config
        self.state = BrokerState(overbooking=config.overbooking)
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
        self.peers = {}          # identity -> ClientState | WorkerState
        self.connections = ConnectionTable()
        self._disconnected = []  # peers whose connection closed, dropped after their messages
        self.running = True
        self.process = psutil.Process()
        self._progress_sent = {}   # ClientState -> when progress alone was last sent
        self._handlers = self._handler_table()
        self.retirements = Retirements(self.state)

    # ------------------------------------------------------------ loop

    def run(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        timeout_ms = int(self.config.heartbeat_interval * 1000)
        next_check = time.monotonic() + self.config.heartbeat_interval
        while self.running:
            events = dict(poller.poll(timeout_ms))
            # Messages first: a peer's last messages precede its disconnect event.
            drained = self._drain_router() if self.router in events else True
            if drained and (self.monitor in events or self._disconnected):
                self._read_monitor()
                self._drop_disconnected()
            self.state.scheduler.schedule()
            leaving = self.retirements.advance() if self.retirements.workers else ()
            self._flush()
            for worker in leaving:   # after the flush: its SendData orders go first
                self._send([worker.identity, protocol.encode(protocol.SHUTDOWN)])
            now = time.monotonic()
            if now >= next_check:
                self._check_heartbeats(now)
                self.state.update_overbooking(now)
                self.state.feed.tick(now)
                next_check = now + self.config.heartbeat_interval
                if self.state.tracer is not None:
                    self.state.tracer.sample(self.process.cpu_percent(),
                                             self.process.memory_info().rss)
        self._shutdown_workers()
        if self.state.tracer is not None:
            self.state.tracer.close()

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
        for identity in lost:
            self._peer_lost(identity, "connection closed")

    # ------------------------------------------------------------ dispatch

    def _on_message(self, frames):
        identity = frames[0].bytes
        if len(frames) < 2:
            self._refuse(identity, "message has no header frame")
            return
        try:
            code, fields = protocol.decode(frames[1].buffer)
        except ProtocolError as error:
            self._refuse(identity, str(error))
            return
        peer = self.peers.get(identity)
        now = time.monotonic()
        if peer is None:
            self._on_hello(identity, code, fields, frames, now)
            return
        peer.last_seen = now
        handler = self._handlers.get((type(peer).__name__, code))
        if handler is None:
            self._refuse(identity, f"{protocol.name_of(code)} is not expected from a "
                                   f"{'client' if self._is_client(peer) else 'worker'}")
            return
        handler(peer, fields, frames, now)

    def _handler_table(self):
        return {
            ("ClientState", protocol.SUBMIT): self._on_submit,
            ("ClientState", protocol.FETCH): self._on_fetch,
            ("ClientState", protocol.RELEASE): self._on_release,
            ("ClientState", protocol.GET_STATS): self._on_get_stats,
            ("ClientState", protocol.SET_TRACE): self._on_set_trace,
            ("ClientState", protocol.TERMINATE): self._on_terminate,
            ("ClientState", protocol.HEARTBEAT): self._on_heartbeat,
            ("ClientState", protocol.GOODBYE): self._on_goodbye,
            ("ClientState", protocol.GET_SNAPSHOT): self._on_get_snapshot,
            ("WorkerState", protocol.WORKER_USAGE): self._on_worker_usage,
            ("WorkerState", protocol.TASKS_DONE): self._on_tasks_done,
            ("WorkerState", protocol.UPLOADED): self._on_uploaded,
            ("WorkerState", protocol.HEARTBEAT): self._on_heartbeat,
            ("WorkerState", protocol.GOODBYE): self._on_goodbye,
            ("WorkerState", protocol.RETIRING): self._on_retiring,
        }

    @staticmethod
    def _is_client(peer) -> bool:
        return type(peer).__name__ == "ClientState"

    def _on_hello(self, identity, code, fields, frames, now):
        limit = self.config.max_peers
        if limit is not None and len(self.peers) >= limit and code in (
                protocol.HELLO_CLIENT, protocol.HELLO_WORKER):
            self._refuse(identity, f"the broker already has {len(self.peers)} peers, the most "
                                   f"its open-file limit allows (ulimit -n; raise the hard "
                                   f"limit for more)", fatal=True)
            return
        if code == protocol.HELLO_CLIENT:
            peer = self.state.on_client_hello(identity, fields[0], now)
        elif code == protocol.HELLO_WORKER:
            peer = self.state.on_worker_hello(identity, *fields, now)
        elif code in (protocol.GOODBYE, protocol.HEARTBEAT):
            return  # from a peer already dropped (its disconnect was seen first)
        else:
            self._refuse(identity, f"{protocol.name_of(code)} before HelloClient/HelloWorker",
                         fatal=True)
            return
        if peer is None:
            return
        self.peers[identity] = peer
        if code == protocol.HELLO_WORKER:
            self.state.feed.on_worker_joined(peer, now)
        # The ACCEPTED event of this connection precedes its first message: read it (and
        # what came before) so the Hello is tied to this connection, not to an older
        # one on the same fd whose DISCONNECTED event is still unread.
        self._read_monitor()
        previous = self.connections.claimed(frames[1].get(zmq.SRCFD), identity)
        if previous is not None:
            self._peer_lost(previous, "connection replaced")

    def _refuse(self, identity, message, fatal=False):
        log.warning("refused a message from %s: %s", identity.hex(), message)
        self.state.outbox.add_error((identity, message, fatal))

    # ------------------------------------------------------------ handlers

    def _on_submit(self, client, fields, frames, now):
        self.state.on_submit(client, *fields)

    def _on_fetch(self, client, fields, frames, now):
        request, ids, release = fields
        self.state.on_fetch(client, request, ids, release)

    def _on_release(self, client, fields, frames, now):
        self.state.on_release(client, fields[0])

    def _on_get_stats(self, client, fields, frames, now):
        self.state.outbox.add_reply(
            (client.identity, protocol.encode(protocol.STATS, fields[0], self.state.stats())))

    def _on_get_snapshot(self, client, fields, frames, now):
        request, since = fields
        snapshot = self.state.feed.snapshot(self.state, since, now)
        self.state.outbox.add_reply(
            (client.identity, protocol.encode(protocol.SNAPSHOT, request, snapshot)))

    def _on_worker_usage(self, worker, fields, frames, now):
        self.state.feed.on_usage(worker, *fields)

    def _on_set_trace(self, client, fields, frames, now):
        path = fields[0]
        if not os.path.isabs(path):
            self._refuse(client.identity, f"SetTrace.path must be an absolute path, got {path!r}")
            return
        try:
            self.state.start_trace(TraceWriter(path, "broker"))
        except OSError as error:
            self._refuse(client.identity, f"cannot write traces into {path}: {error}")
            return
        log.info("tracing into %s", path)

    def _on_terminate(self, client, fields, frames, now):
        log.info("client %d asked the broker to terminate", client.number)
        self.running = False

    def _on_heartbeat(self, peer, fields, frames, now):
        pass  # last_seen was updated by the dispatcher

    def _on_goodbye(self, peer, fields, frames, now):
        self._peer_lost(peer.identity, "said goodbye")

    def _on_retiring(self, worker, fields, frames, now):
        self.retirements.on_retiring(worker)

    def _on_tasks_done(self, worker, fields, frames, now):
        if self.state.feed.active:
            self.state.feed.on_tasks_done(worker, self.state.tasks, fields[0], fields[1], now)
        self.state.on_tasks_done(worker, fields[0], fields[1], now, fields[2], frames[2:])
        if fields[3]:
            self.state.on_tasks_stolen(worker, fields[3])

    def _on_uploaded(self, worker, fields, frames, now):
        client_identity, request, objects = fields
        self.state.on_uploaded(worker, client_identity, request, objects, frames[2:])

    # ------------------------------------------------------------ peers

    def _peer_lost(self, identity, why):
        """Forget a peer. Its connection stays known until its DISCONNECTED event: the
        same connection may say hello again (after Goodbye)."""
        peer = self.peers.pop(identity, None)
        if peer is None:
            return
        self._progress_sent.pop(peer, None)
        if self._is_client(peer):
            self.state.on_client_lost(peer)
        else:
            if why == "said goodbye":  # leaving cleanly, not lost
                log.info("worker %d left (%s)", peer.worker_id, why)
            else:
                log.warning("worker %d lost (%s)", peer.worker_id, why)
            if peer.retiring:
                self.retirements.on_left(peer, clean=why == "said goodbye")
            self.state.on_worker_lost(peer)
            self.state.feed.on_worker_gone(peer, why == "said goodbye", why, time.monotonic())

    def _check_heartbeats(self, now):
        limit = self.config.heartbeat_interval * self.config.heartbeat_misses
        for identity, peer in list(self.peers.items()):
            if not self._is_client(peer) and now - peer.last_seen > limit:
                self._peer_lost(identity, f"no heartbeat for {now - peer.last_seen:.1f} s")

    def _shutdown_workers(self):
        for identity, peer in list(self.peers.items()):
            if not self._is_client(peer):
                self._send([identity, protocol.encode(protocol.SHUTDOWN)])

    # ------------------------------------------------------------ output

    def _send(self, frames):
        try:
            self.router.send_multipart(frames, copy=False)
        except zmq.ZMQError as error:
            if error.errno != zmq.EHOSTUNREACH:
                raise
            # The peer is gone; its loss is handled through the monitor.

    def _flush(self):
        out = self.state.outbox
        if out.is_empty():
            return
        send = self._send
        encode = protocol.encode
        for kind, entry in out.notices:   # in the order they arose: answers keep request order
            if kind == "reply":
                send(list(entry))
            elif kind == "error":
                identity, message, fatal = entry
                send([identity, encode(protocol.ERROR, message, fatal)])
            else:
                client_identity, ids, message = entry
                send([client_identity, encode(protocol.SUBMIT_REFUSED, ids, message)])
        if out.peers_gone:  # before SendData: a worker back at that address gets a new channel
            header = encode(protocol.PEERS_GONE, out.peers_gone)
            for worker in self.state.workers.values():
                send([worker.identity, header])
        feed = self.state.feed if self.state.feed.active else None
        sent = time.monotonic() if feed is not None else 0.0
        for worker, entries in out.compute.items():
            send([worker.identity, encode(protocol.COMPUTE_TASKS, entries)])
            if feed is not None:
                feed.on_compute_sent(entries, sent)
        for worker, targets in out.sends.items():
            if not targets:
                continue  # every push in it was to a worker that left
            send([worker.identity, encode(protocol.SEND_DATA,
                                          [[address, ids] for address, ids in targets.items()])])
            if feed is not None:
                feed.on_sends(worker, targets, self.state.tasks, sent)
        for (worker, client_identity, request), ids in out.uploads.items():
            send([worker.identity, encode(protocol.UPLOAD, client_identity, request, ids)])
        for worker, ids in out.cancel.items():
            send([worker.identity, encode(protocol.CANCEL_TASKS, ids)])
        for worker, ids in out.steal.items():
            send([worker.identity, encode(protocol.STEAL_TASKS, ids)])
        for worker, ids in out.remove.items():
            send([worker.identity, encode(protocol.REMOVE_DATA, ids)])
        now = time.monotonic()
        for client in out.progressed:
            ids = out.finished.pop(client, None)
            # Progress alone is sent at most 5 times a second; with results, always.
            if ids is None and now - self._progress_sent.get(client, 0.0) < 0.2:
                continue
            self._progress_sent[client] = now
            send([client.identity, encode(protocol.TASKS_FINISHED, ids or [], client.n_done,
                                          client.n_total)])
        for client, ids in out.finished.items():
            send([client.identity, encode(protocol.TASKS_FINISHED, ids, client.n_done,
                                          client.n_total)])
        for client, failures in out.failed.items():
            send([client.identity, encode(protocol.TASKS_FAILED, failures)])
        for (client_identity, request), entries in out.data_errors.items():
            send([client_identity, encode(protocol.DATA, request, entries)])
        for (client_identity, request), inline in out.data_inline.items():
            frames = []
            entries = []
            for task_id, meta, object_frames in inline:
                entries.append([task_id, meta])
                frames.extend(object_frames)
            send([client_identity, encode(protocol.DATA, request, entries), *frames])
        out.clear()
