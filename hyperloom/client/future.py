"""Future: the client's handle to a submitted task's result."""

from __future__ import annotations

from ..protocol import local_id

RUNNING, FINISHED, FAILED, RELEASED, CANCELED = \
    "running", "finished", "failed", "released", "canceled"


class Future:
    """A remote result. ``task_id`` is the task's number within its client."""

    __slots__ = ("client", "_id", "task_id", "remote_status", "error", "_result",
                 "_has_result", "__weakref__")

    def __init__(self, client, global_id: int):
        self.client = client
        self._id = global_id
        self.task_id = local_id(global_id)
        self.remote_status = RUNNING
        self.error = None
        self._result = None
        self._has_result = False

    # status, as the original
    def finished(self) -> bool:
        return self.remote_status == FINISHED

    def running(self) -> bool:
        return self.remote_status == RUNNING

    def failed(self) -> bool:
        return self.remote_status == FAILED

    def active(self) -> bool:
        return self.remote_status in (RUNNING, FINISHED)

    def released(self) -> bool:
        return self.remote_status in (RELEASED, CANCELED)

    # operations
    def wait(self):
        self.client.wait_one(self)

    def fetch(self):
        return self.client.fetch_one(self)

    def gather(self):
        return self.client.gather_one(self)

    def release(self):
        self.client.release_one(self)

    def __del__(self):
        try:
            if self.remote_status in (RUNNING, FINISHED, FAILED):
                self.client._release_later(self)
        except Exception:  # interpreter shutdown: nothing to release any more
            pass

    def __repr__(self):
        cached = " R" if self._has_result else ""
        return f"<Future task_id={self.task_id} {self.remote_status}{cached}>"
