"""The guide's "Extending worker" example in Python: a ``my/count`` task type.

Worker side: ``loom-worker --extension my_count HOST PORT`` (with this file's
directory on PYTHONPATH) imports this module and calls ``register_tasks``.
Client side: ``my_count(task, "a")`` builds the task, as in the guide's "Own tasks".
"""

import struct

from hyperloom.client import Task
from hyperloom.worker.taskdef import TaskError


def count_job(ctx):
    """Number of occurrences of the configured character in a D-object (u64, little-endian)."""
    if len(ctx.inputs) != 1 or len(ctx.config) != 1:
        raise TaskError("Invalid use of the task")
    raw = ctx.inputs[0].raw()
    if raw is None:
        raise TaskError("Input object does not contain raw data")
    return_value = bytes(raw).count(ctx.config)
    from hyperloom.data import Plain
    return Plain(struct.pack("<Q", return_value))


def register_tasks(registry):
    registry.register("my/count", count_job, "thread")


def my_count(input, character):
    task = Task()
    task.task_type = "my/count"
    task.inputs = (input,)
    task.config = character
    return task
