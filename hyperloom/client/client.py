"""Client: connect to a broker, submit plans, wait for, fetch and release results.

The user's API. The class is composed of its sub-protocols, as mixins (a call on
the submit or gather path costs what it did when all was written here):

- connection.py: the one DEALER socket (used by one thread at a time under
  ``_lock``), the handshake, and the handling of what the broker sends, processed
  whenever a call waits;
- waiting.py: ``wait``, ``fetch``, ``gather`` and ``as_completed``, which look at
  the futures that changed since their last wake-up;
- releases.py: ``release()`` is sent at once; releases noted by garbage-collected
  futures (``Future.__del__`` does no socket I/O) are sent on the client's next
  wake-up inside a call, or by a small timer thread while the client is idle, so
  an idle client never keeps data alive.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import weakref
from collections import deque
from typing import Any

import zmq

from .. import protocol
from ..errors import LoomError
from ..frames import has_message
from .connection import BrokerConnection
from .future import Future
from .plan import PlanBuilder
from .releases import Releases, release_timer
from .session import SentPlans
from .waiting import FutureChanges, Waiting

log = logging.getLogger("hyperloom.client")

CONNECT_TIMEOUT = 30.0
# Tasks per Submit message: the broker checks one chunk while the next is encoded,
# and its temporary objects are reused instead of piling up.
SUBMIT_CHUNK = 20000


class Client(BrokerConnection, Releases, Waiting):
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
        self._changes = FutureChanges()   # what waiting calls look at (waiting.py)
        self._next_request = 1
        self._closed = False
        self._timer = None
        self.progress = (0, 0)   # (tasks done, tasks submitted) by this client, from the broker
        self._secret_file = secret_file
        self._reattach_timeout = connect_timeout
        # A broker with a journal gives a session (Session): with it, a lost connection is
        # re-attached (session.py) instead of raising ConnectionLost.
        self._session = None
        self._sent_plans = SentPlans()   # plans such a broker has not journaled yet
        self._broken = None      # the ConnectionLost of a re-attach that failed: raised again
        # request -> (ids still awaited, whether the broker releases them) of a fetch
        self._fetching: dict[int, tuple[set[int], bool]] = {}
        # Big values are read from the workers' bulk lanes until a read fails (a client
        # outside the cluster's network): then they come through the broker.
        self._lane = True
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
            target=release_timer, args=(weakref.ref(self), self._timer_stop),
            name="hyperloom-client-releases", daemon=True)
        self._timer.start()
        if dashboard and self._cluster is None:
            from ..dashboard import start_dashboard
            self._dashboard = start_dashboard(address, port, secret_file)
            self.dashboard_url = self._dashboard.url

    # ------------------------------------------------------------ submit

    def submit(self, tasks, load: bool = False) -> list:
        """Submit tasks (and what they need); one Future per task, same order."""
        self._check_open()
        with _collection_paused():
            return self._submit(tasks, load)

    def _submit(self, tasks, load):
        first_id = self.submit_id
        builder = PlanBuilder(self, first_id)
        roots = [builder.add(task) for task in tasks]
        if not roots:
            return []
        result_ids = dict.fromkeys(roots)
        for task_id in result_ids:
            builder.mark_result(task_id)
        self.submit_id = builder.next_id
        created = {task_id: Future(self, task_id) for task_id in result_ids}
        # The futures join the table the broker's answers go to once the plan is sent,
        # under the socket's lock: a re-attach (session.py) in between, here or on the
        # release timer's thread, would name them to a restarted broker that never got
        # them, which fails them as unknown.
        # A broker with a journal (a session) may lose the plan until it says Accepted: its
        # chunks are kept from the first one sent till then, and sent again by a re-attach
        # (session.py), which may also happen inside a _send below (then those sent so far
        # go again first).
        with self._lock:
            if self._sent_plans and has_message(self._socket):
                # Accepted of earlier plans (and results) read now: a client that only
                # submits, never waiting, would otherwise keep every plan it sent.
                self._receive_queued()
            released = self._take_releases()   # they go with the first chunk
            kept = None
            midway = False   # a chunk with more=True sent, the last one not yet
            try:
                for chunk in builder.chunks(SUBMIT_CHUNK):
                    header = protocol.encode(protocol.SUBMIT, *chunk, bool(load), chunk.more,
                                             released)
                    self._send(header)
                    midway = chunk.more
                    if kept is None and self._session is not None:
                        kept = self._sent_plans.keep(first_id, builder.next_id)
                    if kept is not None:
                        kept.append(header)
                    released = []
            except BaseException:
                if midway:   # (a Ctrl-C, an error raised by a re-attach inside _send)
                    self._abandon_plan(first_id)
                raise
            self.futures.update(created)
        return [created[task_id] for task_id in roots]

    def _abandon_plan(self, first_id: int) -> None:
        """A submit stopped between two chunks: the broker drops those it got, or they
        would open the client's next plan (whose tables they would shift), and a
        re-attach does not send them again."""
        self._sent_plans.abandon(first_id)
        try:
            self._send(protocol.encode(protocol.ABANDON_PLAN))
        except LoomError as error:  # a lost connection drops the chunks too (a cut)
            log.warning("could not tell the broker to drop a plan submitted halfway: %s",
                        error)

    def submit_one(self, task, load: bool = False) -> Future:
        return self.submit((task,), load)[0]

    # ------------------------------------------------------------ wait / fetch

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
            # Goodbye (with the last releases) only over a live connection: a dropped one
            # is not re-attached just for that (up to the connect timeout); a broker with
            # sessions releases what a client that never comes back held.
            if not has_message(self._monitor):
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _request_number(self):
        request = self._next_request
        self._next_request += 1
        return request

    def _check_open(self):
        if self._closed:
            raise LoomError("the client is closed")


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
