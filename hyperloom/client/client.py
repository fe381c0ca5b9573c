"""Client: connect to a broker, submit plans, wait for, fetch and release results.

One DEALER socket, used by one thread at a time under ``_lock``: events from
the broker are processed whenever a call waits. ``release()`` is sent at once;
releases noted by garbage-collected futures (``Future.__del__`` does no socket
I/O) are sent on the client's next wake-up inside a call, or by a small timer
thread while the client is idle, so an idle client never keeps data alive.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import data, protocol, security
from ..errors import ConnectionLost, LoomError, TaskFailed
from .future import CANCELED, FAILED, FINISHED, RELEASED, RUNNING, Future
from .plan import PlanBuilder
from .progress import ProgressBar
from .session import reattach

log = logging.getLogger("hyperloom.client")

CONNECT_TIMEOUT = 30.0
SEND_TIMEOUT = 30.0
# Tasks per Submit message: the broker checks one chunk while the next is encoded,
# and its temporary objects are reused instead of piling up.
SUBMIT_CHUNK = 20000
# How often an idle client sends the releases of garbage-collected futures, and
# how long a waiting call blocks before it looks at them again.
RELEASE_INTERVAL = 0.2


class Client:
    """A connection to a broker. ``Client()`` with no address starts a local cluster.

    ``dashboard=True`` starts loom-dashboard too (with the local cluster, or against the
    broker at ``address``); its page is at ``dashboard_url``.
    """

    def __init__(self, address: str | None = None, port: int = protocol.DEFAULT_PORT,
                 connect_timeout: float = CONNECT_TIMEOUT, secret_file: str | None = None,
                 dashboard: bool = False, scheduler_file: str | None = None):
        self._cluster = None
        self._dashboard = None
        self.dashboard_url = None
        if scheduler_file is not None:  # waits up to connect_timeout for the file
            from ..scheduler_file import connect_address
            address, port = connect_address(scheduler_file, address, connect_timeout,
                                            secret_file)
        if address is None:
            from ..local import LocalCluster
            self._cluster = LocalCluster(dashboard=dashboard)
            self._cluster.start()
            assert self._cluster.port is not None  # started: it has its port
            address, port = self._cluster.host, self._cluster.port
            self.dashboard_url = self._cluster.dashboard_url
        self.server_address = address
        self.server_port = port
        # Unfinished futures by global id. Held strongly until they finish (events
        # must reach them); after that only the user's references keep them.
        self.futures: dict[int, Future] = {}
        self.trace_path: str | None = None
        # Ids to release: appended by release_one and Future.__del__ (deque appends and
        # pops are atomic, so the timer thread and __del__ need no lock between them).
        self._pending_release: deque[int] = deque()
        self._lock = threading.RLock()   # whoever uses the socket holds it
        self._replies: dict[int, Any] = {}
        self._next_request = 1
        self._closed = False
        self._timer = None
        self.progress = (0, 0)   # (tasks done, tasks submitted) by this client, from the broker
        self._secret_file = secret_file
        self._reattach_timeout = connect_timeout
        # A broker with a journal gives a session (Session): with it, a lost connection is
        # re-attached (session.py) instead of raising ConnectionLost.
        self._session = None
        self._broken = None      # the ConnectionLost of a re-attach that failed: raised again
        # request -> (ids, release) of a fetch waiting for Data
        self._fetching: dict[int, tuple[list[int], bool]] = {}
        self._context = zmq.Context()
        self._open_socket()
        try:
            self._handshake(connect_timeout)
        except BaseException:
            self._closed = True
            self._close_sockets()
            raise
        self._timer_stop = threading.Event()
        self._timer = threading.Thread(
            target=_release_timer, args=(weakref.ref(self), self._timer_stop),
            name="hyperloom-client-releases", daemon=True)
        self._timer.start()
        if dashboard and self._cluster is None:
            from ..dashboard import start_dashboard
            self._dashboard = start_dashboard(address, port, secret_file)
            self.dashboard_url = self._dashboard.url

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

    def _handshake(self, timeout):
        self._send(protocol.encode(protocol.HELLO_CLIENT, protocol.PROTOCOL_VERSION))
        deadline = time.monotonic() + timeout
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
        try:
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
        self._early = []  # what came with Welcome besides Session: handled in the first wait
        while self._socket.poll(0) and not self._early:
            frames = self._socket.recv_multipart(copy=False)
            try:
                code, fields = protocol.decode(frames[0].buffer)
            except protocol.ProtocolError:
                code = None
            if code == protocol.SESSION:  # a broker with a journal sends it with Welcome
                self._session = (fields[0], fields[1])
            else:
                self._early.append(frames)
        self._first_id = self.number << protocol.CLIENT_SHIFT
        self.submit_id = self._first_id

    # ------------------------------------------------------------ submit

    def submit(self, tasks, load: bool = False) -> list:
        """Submit tasks (and what they need); one Future per task, same order."""
        self._check_open()
        with _collection_paused():
            return self._submit(tasks, load)

    def _submit(self, tasks, load):
        builder = PlanBuilder(self, self.submit_id)
        roots = [builder.add(task) for task in tasks]
        if not roots:
            return []
        result_ids = dict.fromkeys(roots)
        for task_id in result_ids:
            builder.mark_result(task_id)
        self.submit_id = builder.next_id
        futures = self.futures
        created = {}
        for task_id in result_ids:
            future = Future(self, task_id)
            futures[task_id] = future
            created[task_id] = future
        self._flush_releases()
        for chunk in builder.chunks(SUBMIT_CHUNK):
            self._send(protocol.encode(protocol.SUBMIT, *chunk, bool(load), chunk.more))
        return [created[task_id] for task_id in roots]

    def submit_one(self, task, load: bool = False) -> Future:
        return self.submit((task,), load)[0]

    # ------------------------------------------------------------ wait / fetch

    def wait(self, futures, progress: bool = False):
        """Block until every future is finished; raise TaskFailed if one failed.

        ``progress=True`` shows a progress bar of this client's finished / submitted tasks.
        """
        futures = list(futures)
        self._flush_releases()
        pending = [f for f in futures if f.remote_status == RUNNING]
        bar = ProgressBar(self) if progress else None
        try:
            while pending:
                self._process_events()
                pending = [f for f in pending if f.remote_status == RUNNING]
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
        for future in futures:
            self._raise_if_unusable(future)

    def wait_one(self, future):
        self.wait((future,))

    def fetch(self, futures):
        """Download results (they stay on the workers). Order as given."""
        return self._download(list(futures), release=False)

    def fetch_one(self, future):
        return self.fetch((future,))[0]

    def gather(self, futures, progress: bool = False):
        """Download results and release them from the workers."""
        futures = list(futures)
        if progress:
            self.wait([f for f in futures if not f._has_result], progress=True)
        return self._download(futures, release=True)

    def gather_one(self, future):
        return self.gather((future,))[0]

    def _download(self, futures, release):
        self._check_open()
        missing = {}
        for future in futures:
            if future._has_result:
                continue
            self._raise_if_unusable(future)
            missing[future._id] = future
        if missing:
            request = self._request_number()
            self._flush_releases()
            replies = self._replies[request] = {}
            self._fetching[request] = (list(missing), release)
            self._send(protocol.encode(protocol.FETCH, request, list(missing), release))
            try:
                while len(replies) < len(missing):
                    self._process_events()
            finally:
                del self._replies[request]
                del self._fetching[request]
            for task_id, (value, error) in replies.items():
                future = missing[task_id]
                if error is not None:
                    if future.remote_status != FAILED:  # a refusal that came first explains more
                        self._set_failed(future, error)
                else:
                    future._result = value
                    future._has_result = True
                    if release:
                        future.remote_status = RELEASED  # the broker released it with the fetch
                    elif future.remote_status == RUNNING:  # the value says it finished
                        future.remote_status = FINISHED
                    self.futures.pop(task_id, None)  # its TasksFinished may be left out
        if release:
            self.release(f for f in futures if f._id not in missing and f.active())
        for future in futures:
            if future.remote_status == FAILED:
                raise future.error
        return [future._result for future in futures]

    def as_completed(self, futures):
        """Yield futures as they finish (already finished ones first)."""
        pending = list(futures)
        while pending:
            still = []
            for future in pending:
                self._raise_if_unusable(future)
                if future.remote_status == RUNNING:
                    still.append(future)
                else:
                    yield future
            pending = still
            if pending:
                self._process_events()

    # ------------------------------------------------------------ release

    def release(self, futures):
        """Release results from the workers; running tasks are canceled. Sent at once."""
        for future in futures:
            self._note_release(future)
        self._flush_releases()

    def release_one(self, future):
        self.release((future,))

    def _note_release(self, future):
        if future.remote_status in (RELEASED, CANCELED):
            return
        self.futures.pop(future._id, None)
        future.remote_status = RELEASED
        self._pending_release.append(future._id)

    def _release_later(self, future):
        """Called from Future.__del__: no socket I/O here, only a note (sent by the next
        wake-up of a waiting call or by the release timer)."""
        if not self._closed:
            self._pending_release.append(future._id)

    def _flush_releases(self):
        pending = self._pending_release
        if not pending or self._closed:
            return
        ids = []
        while pending:
            ids.append(pending.popleft())
        with self._lock:
            self._send(protocol.encode(protocol.RELEASE, ids))

    def _flush_releases_if_idle(self):
        """From the timer thread: send noted releases unless a call is using the socket
        (that call sends them on its next wake-up)."""
        if not self._pending_release or not self._lock.acquire(blocking=False):
            return
        try:
            self._flush_releases()
        except LoomError as error:  # nobody to tell from this thread; the next call raises
            log.warning("could not send releases: %s", error)
        finally:
            self._lock.release()

    # ------------------------------------------------------------ other requests

    def get_stats(self) -> dict:
        """``n_workers``, ``n_data_objects`` (finished results held), ``n_tasks``."""
        stats = self.info()
        return {"n_workers": stats["n_workers"], "n_data_objects": stats["n_data_objects"],
                "n_tasks": stats["n_tasks"]}

    def info(self) -> dict:
        """Workers (address, cpus, tasks running, bytes held) and task counts by state."""
        self._check_open()
        request = self._request_number()
        self._flush_releases()
        self._send(protocol.encode(protocol.GET_STATS, request))
        self._replies[request] = None
        while self._replies[request] is None:
            self._process_events()
        return self._replies.pop(request)

    def snapshot(self, since: int = 0) -> dict:
        """What a live dashboard shows: counters now and the events after ``since`` (the
        ``seq`` of the previous snapshot); see docs/dashboard.md."""
        self._check_open()
        request = self._request_number()
        self._send(protocol.encode(protocol.GET_SNAPSHOT, request, since))
        self._replies[request] = None
        while self._replies[request] is None:
            self._process_events()
        return self._replies.pop(request)

    def set_trace(self, trace_path: str):
        self._check_open()
        self.trace_path = os.path.abspath(trace_path)
        self._send(protocol.encode(protocol.SET_TRACE, self.trace_path))

    def terminate(self):
        """Stop the broker (and with it the workers)."""
        self._check_open()
        self._send(protocol.encode(protocol.TERMINATE))
        self.close()

    def close(self):
        if self._closed:
            return
        if self._timer is not None:
            self._timer_stop.set()
            if self._timer is not threading.current_thread():  # __del__ may run on it
                self._timer.join()
        with self._lock:
            try:
                self._flush_releases()
                self._socket.send(protocol.encode(protocol.GOODBYE), zmq.NOBLOCK)
            except (zmq.ZMQError, LoomError):
                pass
            self._closed = True
            self._close_sockets()
        if self._dashboard is not None:
            self._dashboard.stop()
            self._dashboard = None
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None

    def _close_sockets(self):
        self._monitor.close(linger=0)
        self._socket.close(linger=200)
        self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------ events

    def _send(self, header):
        """Send, or raise ConnectionLost if no broker takes it within SEND_TIMEOUT
        (a DEALER without a connection would otherwise block forever)."""
        with self._lock:
            if self._session is not None and self._monitor.poll(0):
                self._handle_events({self._monitor: zmq.POLLIN})  # re-attach first
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

    def _request_number(self):
        request = self._next_request
        self._next_request += 1
        return request

    def _check_open(self):
        if self._closed:
            raise LoomError("the client is closed")

    def _raise_if_unusable(self, future):
        if future.client is not self:
            raise LoomError(f"{future!r} belongs to another client")
        if future.remote_status == FAILED:
            raise future.error
        if future.remote_status in (RELEASED, CANCELED) and not future._has_result:
            raise LoomError(f"{future!r} was released; its result is gone")

    def _set_failed(self, future, error):
        future.remote_status = FAILED
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
            if event["event"] != 0 and self._session is not None:
                reattach(self)   # session.py: a new connection, the session resumed
                return
            if event["event"] != 0:
                raise ConnectionLost(f"the connection to the broker at {self.server_address}:"
                                     f"{self.server_port} was lost")
        if self._socket not in events:
            return
        while True:
            try:
                frames = protocol.recv_frames(self._socket)
            except zmq.Again:
                return
            self._on_message(frames)

    def _on_message(self, frames):
        try:
            code, fields = protocol.decode(frames[0].buffer)
        except protocol.ProtocolError as error:
            raise LoomError(f"the broker at {self.server_address}:{self.server_port} sent a "
                            f"malformed message: {error}") from None
        futures = self.futures
        if code == protocol.TASKS_FINISHED:
            self.progress = (fields[1], fields[2])
            for task_id in fields[0]:
                future = futures.pop(task_id, None)
                if future is not None and future.remote_status == RUNNING:
                    future.remote_status = FINISHED
        elif code == protocol.DATA:
            self._on_data(fields[0], fields[1], frames)
        elif code == protocol.TASKS_FAILED:
            for task_id, *failure in fields[0]:
                future = futures.pop(task_id, None)
                if future is not None and future.remote_status == RUNNING:
                    self._set_failed(future, failure)
        elif code == protocol.SUBMIT_REFUSED:
            ids, message = fields
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

    def _on_data(self, request, objects, frames):
        replies = self._replies.get(request)
        position = 1
        small = data.KIND_SMALL
        for entry in objects:
            task_id, meta = entry[0], entry[1]
            if meta is None:
                outcome = (None, entry[2])
            elif meta[0] == small:  # the common case, without building a data object
                outcome = (meta[1], None)
            else:
                obj, position = data.decode(meta, frames, position)
                outcome = (obj.to_python(), None)
            if replies is not None and (outcome[1] is None or task_id not in replies):
                replies[task_id] = outcome  # (a re-sent fetch's error never hides a value)


def _release_timer(client_ref, stop: threading.Event):
    """Send the releases of garbage-collected futures while the client is idle.

    Holds only a weak reference, so an unclosed client can still be collected."""
    while not stop.wait(RELEASE_INTERVAL):
        client = client_ref()
        if client is None:
            return
        client._flush_releases_if_idle()
        del client


@contextlib.contextmanager
def _collection_paused():
    """No garbage collection while a plan is walked and encoded: it allocates an object or two
    per task and keeps all of them, so every collection in between scans and promotes them for
    nothing (measured: 40-50 % of submitting 200,000 tasks).  Only for the call; a collector
    that was already off stays off."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
