"""The Python client: build plans, submit them, gather results."""

from ..errors import LoomError, LoomException, TaskFailed
from . import tasks
from .client import Client
from .future import Future
from .task import ResourceRequest, Task

__all__ = ["Client", "Future", "Task", "ResourceRequest", "tasks", "LoomException",
           "LoomError", "TaskFailed"]
