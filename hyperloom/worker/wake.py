"""WakePipe: how threads of the worker wake its loop, which polls the read end of a pipe
(the executor's completions, the bulk lane's fetches and its accept thread's stop)."""

from __future__ import annotations

import os
import threading


class WakePipe:
    """A pipe the loop polls; threads write a byte to wake it, one while it is unread.

    One wake-up per round of the loop, not per event (a batch of tiny Python tasks
    completes together). The loop drains the pipe, which clears the flag, and only
    then takes what the threads left for it: an event left before the clearing is
    taken, and a thread that leaves one after it sees the flag clear and wakes the
    loop again.
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._pending = False   # a byte is in the pipe, not yet drained
        # A thread that ends after close must not write into a reused descriptor number.
        self._lock = threading.Lock()
        self._closed = False

    def wake(self) -> None:
        if self._pending:   # the loop is due to wake anyway
            return
        with self._lock:
            if self._closed:
                return
            self._pending = True
            try:
                os.write(self._write_fd, b"x")
            except BlockingIOError:
                pass  # full: the loop is due to wake anyway

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 65536):
                pass
        except BlockingIOError:
            pass
        self._pending = False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self.read_fd)
            os.close(self._write_fd)
