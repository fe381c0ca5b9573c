"""The waiting calls: ``wait``, ``fetch``, ``gather`` and ``as_completed``, and which
futures changed while they waited.

Each call looks, after a wake-up, at the futures that changed since its last one,
not at every future it still waits for: rescanning them all made a wait for N
tasks that finish one per wake-up cost O(N²) in the client (10,000 tasks: 50
million looks). A waiting call opens a reader of ``FutureChanges`` and gets a
cursor; the connection's message handlers (and a release) note the id of each
future whose status changed or whose value arrived; the reader takes the ids noted
since its cursor. Ids are kept only while a call reads, and dropped when the last
one closes, so a client that is not waiting keeps none. Opening and closing happen
under the client's socket lock, as the handlers do; ``note`` may also run without
it (a release from another thread), where a list append is atomic.

A mixin of ``Client`` (client.py), as connection.py and releases.py are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import LoomError
from .future import CANCELED, FAILED, FINISHED, RELEASED, RUNNING
from .progress import ProgressBar

if TYPE_CHECKING:
    from .future import Future


class FutureChanges:
    """Ids of futures that changed while some call waited, in order (see above)."""

    def __init__(self) -> None:
        self._ids: list[int] = []
        self._first = 0      # the position of _ids[0] in everything ever noted
        self._readers = 0

    def note(self, task_id: int) -> None:
        if self._readers:
            self._ids.append(task_id)

    def open(self) -> int:
        """Start reading: a cursor past everything noted so far."""
        self._readers += 1
        return self._first + len(self._ids)

    def since(self, cursor: int) -> tuple[list[int], int]:
        """The ids noted after ``cursor``, and the cursor past them."""
        new = self._ids[cursor - self._first:]
        return new, cursor + len(new)

    def close(self) -> None:
        self._readers -= 1
        if not self._readers:
            self._first += len(self._ids)
            self._ids.clear()


class Waiting:
    # given their values by Client.__init__ (client.py)
    futures: dict[int, Future]
    _changes: FutureChanges
    _lock: threading.RLock
    _replies: dict[int, Any]
    _fetching: dict[int, tuple[set[int], bool]]   # request -> (ids awaited, released by it)
    _lane: bool                           # connection.py: big values from bulk lanes
    _process_events: Callable[[], None]   # connection.py
    _flush_releases: Callable[[], None]   # releases.py

    def wait(self, futures, progress: bool = False):
        """Block until every future is finished; raise TaskFailed if one failed.

        ``progress=True`` shows a progress bar of this client's finished / submitted tasks.
        """
        futures = list(futures)
        for future in futures:
            self._raise_if_foreign(future)  # this client would wait for it forever
        self._flush_releases()
        bar = ProgressBar(self) if progress else None
        cursor = self._open_changes()
        try:
            pending = {f._id: f for f in futures if f.remote_status == RUNNING}
            while pending:
                self._process_events()
                changed, cursor = self._changes.since(cursor)
                for task_id in changed:
                    future = pending.get(task_id)
                    if future is not None and future.remote_status != RUNNING:
                        del pending[task_id]
                if bar is not None:
                    bar.update()
        finally:
            self._close_changes()
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
        released = set()
        if missing:
            self._flush_releases()
            released = self._collect(missing, release)
        if release:
            # Values the client had (most came with Results, unasked): their releases
            # go with the next message to the broker (or the release timer's), not
            # as a message of their own on the way back from gather.
            for future in futures:
                if future._has_result and future._id not in released and future.active():
                    self._note_release(future)
        for future in futures:
            if future.remote_status == FAILED:
                raise future.error
        return [future._result for future in futures]

    def _collect(self, missing, release):
        """Wait for the values of ``missing`` futures; the ids the broker released.

        Small results come unasked as they finish (Results). The others are fetched
        once the client knows they finished (at once if it already does), with one
        Fetch per wake-up, so that big values travel while other tasks still run.
        Asking before a task finished would cost every round trip a message.
        """
        requests = []      # numbers of the Fetches sent
        asked = set()
        released = set()
        pending = dict(missing)
        cursor = self._open_changes()
        look_at = list(pending)   # at first all of them, then those that changed
        try:
            while True:
                for request in requests:
                    replies = self._replies[request]
                    # What came is no longer awaited: a re-attach asks only for the rest
                    # (asked again, a released value would come back as an error).
                    awaited, released_by_broker = self._fetching[request]
                    awaited.difference_update(replies)
                    self._take_replies(replies, missing, released_by_broker, released)
                changed, cursor = self._changes.since(cursor)
                look_at.extend(changed)
                ask = []
                for task_id in dict.fromkeys(look_at):   # an id may be noted twice
                    future = pending.get(task_id)
                    if future is None:
                        continue
                    if future._has_result or future.remote_status == FAILED:
                        del pending[task_id]
                    elif future.remote_status == FINISHED and task_id not in asked:
                        ask.append(task_id)
                look_at = []
                if not pending:
                    return released
                if ask:
                    request = self._request_number()
                    requests.append(request)
                    asked.update(ask)
                    self._replies[request] = {}
                    # A client that reads big values from the workers' bulk lanes releases
                    # them itself once it has them (a failed read asks again): _download.
                    wire_release = release and not self._lane
                    self._fetching[request] = (set(ask), wire_release)
                    self._send(protocol.encode(protocol.FETCH, request, ask, wire_release,
                                               self._lane))
                self._process_events()
        finally:
            self._close_changes()
            for request in requests:
                del self._replies[request]
                del self._fetching[request]

    def _take_replies(self, replies, missing, release, released):
        """Fetched values and errors (Data) into their futures."""
        while replies:
            task_id, (value, error) = replies.popitem()
            future = missing[task_id]
            if error is not None:
                # A refusal that came first explains more; a value that came first stays
                # (an error of a fetch asked again never undoes it).
                if future.remote_status != FAILED and not future._has_result:
                    self._set_failed(future, error)
            elif not future._has_result:
                future._result = value
                future._has_result = True
                self._changes.note(task_id)
                if release:
                    future.remote_status = RELEASED  # the broker released it with the fetch
                    released.add(task_id)
                elif future.remote_status == RUNNING:  # the value says it finished
                    future.remote_status = FINISHED
                self.futures.pop(task_id, None)  # its TasksFinished may be left out

    def as_completed(self, futures):
        """Yield futures as they finish (already finished ones first, in the order given;
        the others in the order they finish)."""
        cursor = self._open_changes()
        try:
            pending = {}   # id -> the futures given with it (one given twice: twice)
            for future in futures:
                self._raise_if_unusable(future)
                if future.remote_status == RUNNING:
                    pending.setdefault(future._id, []).append(future)
                else:
                    yield future
            while pending:
                self._process_events()
                changed, cursor = self._changes.since(cursor)
                for task_id in changed:
                    same = pending.get(task_id)
                    if same is None or same[0].remote_status == RUNNING:
                        continue
                    del pending[task_id]
                    for future in same:
                        self._raise_if_unusable(future)
                        yield future
        finally:
            self._close_changes()

    # ------------------------------------------------------------ other requests

    def _open_changes(self) -> int:
        with self._lock:
            return self._changes.open()

    def _close_changes(self):
        with self._lock:
            self._changes.close()

    def _raise_if_foreign(self, future):
        if future.client is not self:
            raise LoomError(f"{future!r} belongs to another client")

    def _raise_if_unusable(self, future):
        self._raise_if_foreign(future)
        if future.remote_status == FAILED:
            raise future.error
        if future.remote_status in (RELEASED, CANCELED) and not future._has_result:
            raise LoomError(f"{future!r} was released; its result is gone")
