"""Exceptions a user of hyperloom can catch (the original's names)."""


class LoomException(Exception):
    """Base of every hyperloom error."""


class LoomError(LoomException):
    """A request the broker or client refused (invalid plan, released future, ...)."""


class TaskFailed(LoomException):
    """A task failed; ``str()`` is the original's ``Task id=N failed: MESSAGE``.

    ``id`` is the id of the task that failed (a dependency of the waited-on
    future when that is what failed), ``worker`` the worker's address and
    ``error_msg`` the cause.
    """

    def __init__(self, id: int, worker: str, error_msg: str) -> None:
        self.id = id
        self.worker = worker
        self.error_msg = error_msg
        super().__init__(f"Task id={id} failed: {error_msg}")


class ConnectionLost(LoomError):
    """The connection to the broker is gone; nothing waiting will complete."""
