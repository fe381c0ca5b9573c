"""The client's release bookkeeping: releases sent at once, and those noted by
garbage-collected futures, sent later.

``Future.__del__`` may run on any thread at any moment, so it only appends an id
to a deque (no socket I/O, no lock); the ids go out with the client's next
wake-up inside a call, or with a small timer thread while the client is idle,
so an idle client never keeps data alive.

A mixin of ``Client`` (client.py): ``self._flush_releases()`` on the submit and
gather paths costs what it did when it was written in the class itself. It sends
through the connection's ``_send`` (connection.py).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import protocol
from ..errors import LoomError
from ..frames import has_message
from .future import CANCELED, RELEASED
from .waiting import FutureChanges

if TYPE_CHECKING:
    from .future import Future

log = logging.getLogger("hyperloom.client")

# How often an idle client sends the releases of garbage-collected futures, and
# how long a waiting call blocks before it looks at them again.
RELEASE_INTERVAL = 0.2


class Releases:
    # given their values by Client.__init__ (client.py)
    futures: dict[int, Future]
    _changes: FutureChanges
    _pending_release: deque[int]
    _lock: threading.RLock
    _closed: bool
    _monitor: Any   # the connection's monitor socket (connection.py)

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
        self._changes.note(future._id)  # a call waiting for it stops waiting
        self._pending_release.append(future._id)

    def _release_later(self, future):
        """Called from Future.__del__: no socket I/O here, only a note (sent by the next
        wake-up of a waiting call or by the release timer)."""
        if not self._closed:
            self._pending_release.append(future._id)

    def _flush_releases(self):
        ids = self._take_releases()
        if ids:
            with self._lock:
                self._send(protocol.encode(protocol.RELEASE, ids))

    def _take_releases(self):
        """The noted releases, to send now (in a Release, or along with a Submit)."""
        pending = self._pending_release
        ids = []
        if self._closed:
            return ids
        while pending:
            ids.append(pending.popleft())
        return ids

    def _flush_releases_if_idle(self):
        """From the timer thread: send noted releases unless a call is using the socket
        (that call sends them on its next wake-up)."""
        if not self._pending_release or not self._lock.acquire(blocking=False):
            return
        if has_message(self._monitor):
            # The connection dropped: re-attaching (up to the connect timeout) is for the
            # user's next call, not for this thread, which would hold the lock meanwhile
            # and make close() wait for it. The releases wait with it.
            self._lock.release()
            return
        try:
            self._flush_releases()
        except LoomError as error:  # nobody to tell from this thread; the next call raises
            log.warning("could not send releases: %s", error)
        finally:
            self._lock.release()


def release_timer(client_ref, stop: threading.Event):
    """Send the releases of garbage-collected futures while the client is idle.

    Holds only a weak reference, so an unclosed client can still be collected."""
    while not stop.wait(RELEASE_INTERVAL):
        client = client_ref()
        if client is None:
            return
        client._flush_releases_if_idle()
        del client
