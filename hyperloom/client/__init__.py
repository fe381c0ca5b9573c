"""The Python client: build plans, submit them, gather results."""

from ..errors import LoomError, LoomException, TaskFailed
from . import tasks
from .client import Client
from .future import Future
from .task import ResourceRequest, Task


def make_dry_report(tasks, report_filename):
    raise LoomException("Not implemented in this version")


__all__ = ["Client", "Future", "Task", "ResourceRequest", "tasks", "LoomException",
           "LoomError", "TaskFailed", "make_dry_report"]
