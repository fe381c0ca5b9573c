"""The original's ``loom.client.client``: the Client and the errors its calls raise."""

from hyperloom.client.client import Client
from hyperloom.errors import LoomError, LoomException, TaskFailed

__all__ = ["Client", "LoomException", "LoomError", "TaskFailed"]
