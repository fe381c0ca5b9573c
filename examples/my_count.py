"""The guide's "Extending worker" example in Python: a ``my/count`` task type,
and a data object type of our own, ``my/histogram``, with two tasks using it.

Worker side: ``loom-worker --extension my_count HOST PORT`` (with this file's
directory on PYTHONPATH) imports this module and calls ``register_tasks``.
Client side: ``my_count(task, "a")`` builds the task, as in the guide's "Own tasks".
"""

import struct
from collections import Counter

from hyperloom.client import Task
from hyperloom.data import ExtensionData, Plain
from hyperloom.worker.taskdef import TaskError


def count_job(ctx):
    """Number of occurrences of the configured character in a D-object (u64, little-endian)."""
    if len(ctx.inputs) != 1 or len(ctx.config) != 1:
        raise TaskError("Invalid use of the task")
    raw = ctx.inputs[0].raw()
    if raw is None:
        raise TaskError("Input object does not contain raw data")
    return Plain(struct.pack("<Q", bytes(raw).count(ctx.config)))


class Histogram(ExtensionData):
    """How often each byte value occurs: a data object type of our own."""

    __slots__ = ("counts",)
    symbol = "my/histogram"

    def __init__(self, counts):
        self.counts = dict(counts)

    @property
    def size(self):
        return 16 * len(self.counts)

    @property
    def length(self):
        return len(self.counts)

    def encode_payload(self, frames):
        return sorted(self.counts.items())          # travels inside the header

    @classmethod
    def decode_payload(cls, payload, frames, position):
        return cls({byte: count for byte, count in payload}), position

    def to_python(self):
        return {bytes([byte]): count for byte, count in self.counts.items()}


def histogram_job(ctx):
    raw = ctx.inputs[0].raw()
    if raw is None:
        raise TaskError("my/histogram needs plain data")
    return Histogram(Counter(bytes(raw)))


def most_common_job(ctx):
    histogram = ctx.inputs[0]
    if not isinstance(histogram, Histogram):
        raise TaskError(f"my/most_common needs a my/histogram, got {histogram.info()}")
    byte, _ = max(histogram.counts.items(), key=lambda item: (item[1], -item[0]))
    return Plain(bytes([byte]))


def register_tasks(registry):
    registry.register("my/count", count_job, "thread")
    registry.register_data_type(Histogram)
    registry.register("my/histogram", histogram_job, "thread")
    registry.register("my/most_common", most_common_job, "inline")


def my_count(input, character):
    task = Task()
    task.task_type = "my/count"
    task.inputs = (input,)
    task.config = character
    return task


def _task(task_type, inputs):
    task = Task()
    task.task_type = task_type
    task.inputs = tuple(inputs)
    return task


def histogram(input):
    return _task("my/histogram", (input,))


def most_common(input):
    return _task("my/most_common", (input,))
