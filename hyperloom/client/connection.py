"""The client's connection to its broker: one DEALER socket and its monitor, the
handshake, sends that cannot block forever, and the handling of what the broker sends.

One thread at a time uses the socket, under ``_lock``: events from the broker are
processed whenever a call waits (``_process_events``). A dropped connection raises
ConnectionLost, or re-attaches the session of a broker with a journal (session.py).

A mixin of ``Client`` (client.py): the loop's ``self._on_message(...)`` costs what it
did when it was written in the class itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import data, lane, protocol, security
from ..frames import has_message, recv_frames
from ..errors import ConnectionLost, LoomError, TaskFailed
from .future import FAILED, FINISHED, RUNNING
from .releases import RELEASE_INTERVAL
from .session import SentPlans, reattach
from .waiting import FutureChanges

if TYPE_CHECKING:
    from .future import Future

log = logging.getLogger("hyperloom.client")

SEND_TIMEOUT = 30.0


class BrokerConnection:
    # given their values by Client.__init__ (client.py) and _handshake
    server_address: str
    server_port: int
    futures: dict[int, Future]
    _changes: FutureChanges
    progress: tuple[int, int]
    _context: zmq.Context
    _lock: threading.RLock
    _replies: dict[int, Any]
    _fetching: dict[int, tuple[set[int], bool]]   # request -> (ids awaited, released by it)
    _lane: bool
    _secret_file: str | None
    _session: tuple[int, bytes] | None
    _sent_plans: SentPlans
    _broken: LoomError | None

    def _open_socket(self):
        """A new DEALER (and its monitor) to the broker: at start, and to re-attach (what
        an old one still queues must not reach a restarted broker before ResumeClient)."""
        self._socket = self._context.socket(zmq.DEALER)
        if self._secret_file:
            security.secure_client(self._socket, security.load_secret_file(self._secret_file))
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | security.HANDSHAKE_FAILURES)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._socket.connect(f"tcp://{self.server_address}:{self.server_port}")

    def _close_sockets(self):
        self._monitor.close(linger=0)
        self._socket.close(linger=200)
        self._context.term()

    def _handshake(self, timeout):
        self._send(protocol.encode(protocol.HELLO_CLIENT, protocol.PROTOCOL_VERSION))
        deadline = time.monotonic() + timeout
        self._await_handshake(deadline, timeout)
        try:
            code, fields = protocol.decode(self._socket.recv())
            if code == protocol.SESSION:  # a broker with a journal sends it just before
                self._session = (fields[0], fields[1])
                # (polled too: a broker killed between the two never sends Welcome)
                self._await_handshake(deadline, timeout)
                code, fields = protocol.decode(self._socket.recv())
        except protocol.ProtocolError as error:
            raise LoomError(f"{self.server_address}:{self.server_port} does not speak the "
                            f"hyperloom protocol (is it a loom-broker?): {error}") from None
        if code == protocol.ERROR:
            raise LoomError(f"the broker refused this client: {fields[0]}")
        if code != protocol.WELCOME:
            raise LoomError(f"unexpected {protocol.name_of(code)} from the broker")
        self.number = fields[1]
        self.task_types = fields[2]
        self._early = []  # what came with Welcome: handled in the first wait
        while self._socket.poll(0) and not self._early:
            self._early.append(self._socket.recv_multipart(copy=False))
        self._first_id = self.number << protocol.CLIENT_SHIFT
        self.submit_id = self._first_id

    def _await_handshake(self, deadline: float, timeout: float) -> None:
        """Wait for the broker's next handshake message, or raise what went wrong."""
        while not self._socket.poll(100):
            if self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)
                if event["event"] & security.HANDSHAKE_FAILURES:
                    raise LoomError(
                        f"the broker at {self.server_address}:{self.server_port} refused the "
                        f"connection (security handshake failed: a missing or wrong secret "
                        f"file?)")
            if time.monotonic() > deadline:
                raise ConnectionLost(f"no answer from a broker at {self.server_address}:"
                                     f"{self.server_port} within {timeout:.0f} s")

    def _send(self, header):
        """Send, or raise ConnectionLost if no broker takes it within SEND_TIMEOUT
        (a DEALER without a connection would otherwise block forever)."""
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if has_message(self._monitor):  # the connection dropped: re-attach first, or raise
                self._handle_events({self._monitor: zmq.POLLIN})
            try:
                self._socket.send(header, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                pass
            if not self._socket.poll(int(SEND_TIMEOUT * 1000), zmq.POLLOUT):
                raise ConnectionLost(f"cannot reach the broker at {self.server_address}:"
                                     f"{self.server_port}: nothing accepted a message for "
                                     f"{SEND_TIMEOUT:.0f} s")
            self._socket.send(header, zmq.NOBLOCK, copy=False)

    def _set_failed(self, future, error):
        future.remote_status = FAILED
        self._changes.note(future._id)
        if isinstance(error, list):
            failed_id, worker, message = error
            future.error = TaskFailed(protocol.local_id(failed_id), worker, message)
        else:
            future.error = LoomError(str(error))

    def _process_events(self):
        """Wait a while for, and handle, everything the broker sent.

        Returns after at most RELEASE_INTERVAL so that releases noted by
        garbage-collected futures during a long wait go out without delay;
        callers loop until what they wait for has arrived.
        """
        with self._lock:
            if self._broken is not None:
                raise self._broken
            self._flush_releases()
            events = dict(self._poller.poll(int(RELEASE_INTERVAL * 1000)))
            self._handle_events(events)

    def _handle_events(self, events):
        while self._early:
            self._on_message(self._early.pop(0))
        if self._monitor in events:
            event = recv_monitor_message(self._monitor)
            if event["event"] != 0:
                # What the broker sent before the drop comes first: results, and the
                # Session of a client that has not waited on anything yet (without it,
                # the client could not resume after a broker restart).
                queued_error = None
                try:
                    self._receive_queued()
                except LoomError as error:   # (an Error it sent): raised once re-attached
                    queued_error = error
                if self._session is not None:
                    reattach(self)   # session.py: a new connection, the session resumed
                    if queued_error is not None:
                        raise queued_error
                    return
                self._broken = ConnectionLost(
                    f"the connection to the broker at {self.server_address}:"
                    f"{self.server_port} was lost")
                raise self._broken
        if self._socket in events:
            self._receive_queued()

    def _receive_queued(self):
        socket = self._socket
        while True:
            try:
                frames = recv_frames(socket)
            except zmq.Again:
                return
            self._on_message(frames)
            if not has_message(socket):
                return

    def _on_message(self, frames):
        try:
            code, fields = protocol.decode(frames[0].buffer)
        except protocol.ProtocolError as error:
            raise LoomError(f"the broker at {self.server_address}:{self.server_port} sent a "
                            f"malformed message: {error}") from None
        futures = self.futures
        if code == protocol.TASKS_FINISHED:
            self.progress = (fields[1], fields[2])
            note = self._changes.note
            for task_id in fields[0]:
                future = futures.pop(task_id, None)
                if future is not None and future.remote_status == RUNNING:
                    future.remote_status = FINISHED
                    note(task_id)
        elif code == protocol.RESULTS:
            self.progress = (fields[1], fields[2])
            self._on_results(fields[0], frames)
        elif code == protocol.DATA:
            self._on_data(fields[0], fields[1], fields[2], frames)
        elif code == protocol.TASKS_FAILED:
            for task_id, *failure in fields[0]:
                future = futures.pop(task_id, None)
                if future is not None and future.remote_status == RUNNING:
                    self._set_failed(future, failure)
        elif code == protocol.ACCEPTED:
            self._sent_plans.confirm(fields[0])
        elif code == protocol.SUBMIT_REFUSED:
            ids, message = fields
            self._sent_plans.refused(ids)
            for task_id in ids:
                future = futures.pop(task_id, None)
                if future is not None:
                    self._set_failed(future, f"Plan refused: {message}")
        elif code == protocol.SESSION:
            self._session = (fields[0], fields[1])
        elif code == protocol.STATS or code == protocol.SNAPSHOT:
            if fields[0] in self._replies:
                self._replies[fields[0]] = fields[1]
        elif code == protocol.ERROR:
            message, fatal = fields
            raise LoomError(f"the broker reports an error: {message}")
        else:
            log.warning("unexpected %s from the broker", protocol.name_of(code))

    def _on_data(self, request, objects, offer, frames):
        replies = self._replies.get(request)
        if offer is not None:
            if replies is None:
                return   # nobody waits for it any more: the offer expires on its worker
            frames = self._read_offer(request, objects, offer, frames[0])
            if frames is None:
                return
        for task_id, value, error in _values(objects, frames):
            if replies is not None and (error is None or task_id not in replies):
                replies[task_id] = (value, error)  # (a re-sent fetch's error never hides a value)

    def _read_offer(self, request, objects, offer, header):
        """The frames of ``objects``, read from the worker's bulk lane named in ``offer``
        (header first, as in a message); None if that failed: then this client asks
        again for them to come through the broker, and stops using the lanes if it
        could not reach this one (a timeout, no route: a client outside the workers'
        network; refused at once is more likely a holder that died meanwhile)."""
        if not protocol.is_lane_offer(offer):
            raise LoomError(f"the broker at {self.server_address}:{self.server_port} sent a "
                            f"malformed offer: {offer!r:.80}")
        address, token, sizes = offer
        try:
            return [header, *lane.fetch_frames(address, token, sizes)]
        except (OSError, ValueError) as error:
            if isinstance(error, lane.Unreachable) and not error.refused:
                self._lane = False
                log.warning("could not reach the bulk lane at %s (%s): results come through "
                            "the broker from now on", address, error)
            else:
                log.warning("could not read %d results from the bulk lane at %s (%s): asking "
                            "for them through the broker", len(objects), address, error)
            ids = [entry[0] for entry in objects if type(entry) is list and entry]
            released_by_broker = self._fetching.get(request, (None, False))[1]
            self._socket.send(protocol.encode(protocol.FETCH, request, ids,
                                              released_by_broker, False))
            return None

    def _on_results(self, objects, frames):
        """Values of small results, sent as they finished: the futures finish with them,
        and a later gather or fetch returns them without asking the broker."""
        futures = self.futures
        note = self._changes.note
        for task_id, value, _ in _values(objects, frames):
            future = futures.pop(task_id, None)
            if future is not None and future.remote_status == RUNNING:
                future._result = value
                future._has_result = True
                future.remote_status = FINISHED
                note(task_id)


def _values(objects, frames):
    """``(id, value, error)`` of each DataEntry of a Data or Results message; the objects'
    frames follow the header (``frames[0]``) in entry order."""
    position = 1
    small = data.KIND_SMALL
    for entry in objects:
        task_id, meta = entry[0], entry[1]
        if meta is None:
            yield task_id, None, entry[2]
        elif meta[0] == small:  # the common case, without building a data object
            yield task_id, meta[1], None
        else:
            obj, position = data.decode(meta, frames, position)
            yield task_id, obj.to_python(), None
