"""The original's ``loom.client.errors``: the exceptions a user catches."""

from hyperloom.errors import LoomError, LoomException, TaskFailed

__all__ = ["LoomException", "LoomError", "TaskFailed"]
