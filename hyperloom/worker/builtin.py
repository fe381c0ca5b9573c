"""Built-in tasks that run no user code (const, merge, open, split, ...).

Names, configs and results follow the original HyperLoom (reference §1);
where the original crashed the worker on bad input, these fail the task with
a message instead. run and the Python tasks live in run_task.py / py_task.py.
"""

from __future__ import annotations

import os
import struct

from .. import protocol
from ..data import Array, DataError, File, Index, Plain, clamp_slice
from .taskdef import TaskContext, TaskError, TaskRegistry

_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")


def _raw(ctx: TaskContext, index: int):
    obj = ctx.inputs[index]
    raw = obj.raw()
    if raw is None:
        raise TaskError(f"{ctx.task_type}: input {index} is {obj.info()}, not a D-object "
                        f"(plain data or a file)")
    return raw


def const(ctx: TaskContext):
    return Plain(ctx.config)


def merge(ctx: TaskContext):
    parts = [_raw(ctx, i) for i in range(len(ctx.inputs))]
    if len(parts) == 1:
        return Plain(bytes(parts[0]))
    return Plain(bytes(ctx.config).join(parts))


def open_file(ctx: TaskContext):
    path = ctx.config.decode(errors="surrogateescape")
    try:
        return File(path, os.stat(path).st_size)
    except OSError as error:
        raise TaskError(f"Opening '{path}' failed: {error.strerror}") from None


def split(ctx: TaskContext):
    """Index of lines; every item keeps its newline; empty data is one empty item."""
    raw = _raw(ctx, 0)
    data = bytes(raw) if not isinstance(raw, bytes) else raw
    offsets = [0]
    end = len(data)
    position = data.find(b"\n")
    while position != -1 and position + 1 < end:
        offsets.append(position + 1)
        position = data.find(b"\n", position + 1)
    offsets.append(end)
    return Index(ctx.inputs[0], offsets)


def save(ctx: TaskContext):
    path = ctx.config.decode(errors="surrogateescape")
    if not os.path.isabs(path):
        raise TaskError(f"Path '{path}' is not absolute path")
    raw = _raw(ctx, 0)
    try:
        with open(path, "wb") as f:
            f.write(raw)
    except OSError as error:
        raise TaskError(f"Openning '{path}' failed: {error.strerror}") from None
    return Plain(b"")


def array_make(ctx: TaskContext):
    return Array(ctx.inputs)


def size(ctx: TaskContext):
    return Plain(_U64.pack(sum(obj.size for obj in ctx.inputs)))


def length(ctx: TaskContext):
    return Plain(_U64.pack(sum(obj.length for obj in ctx.inputs)))


def get(ctx: TaskContext):
    (index,) = _config(ctx, _U64)
    try:
        return ctx.inputs[0].get(index)
    except DataError as error:
        raise TaskError(str(error)) from None


def slice_(ctx: TaskContext):
    start, end = _config(ctx, _U64X2)
    obj = ctx.inputs[0]
    if not isinstance(obj, (Array, Index)):
        raise TaskError(f"loom/base/slice on {obj.info()}: only an Array or an Index "
                        f"can be sliced")
    start, end = clamp_slice(obj.length, start, end)
    return obj.slice(start, end)


def _config(ctx: TaskContext, layout: struct.Struct):
    if len(ctx.inputs) != 1:
        raise TaskError(f"{ctx.task_type} takes exactly one input, got {len(ctx.inputs)}")
    try:
        return layout.unpack(ctx.config)
    except struct.error:
        raise TaskError(f"{ctx.task_type}: invalid configuration") from None


def register_builtin_tasks(registry: TaskRegistry):
    """Register the built-in tasks. ``inline`` ones are cheap enough for the loop."""
    registry.register(protocol.TASK_CONST, const, "inline")
    registry.register(protocol.TASK_MERGE, merge, "inline")
    registry.register(protocol.TASK_OPEN, open_file, "inline")
    registry.register(protocol.TASK_SPLIT, split, "thread")
    registry.register(protocol.TASK_SAVE, save, "thread")
    registry.register(protocol.TASK_ARRAY_MAKE, array_make, "inline")
    registry.register(protocol.TASK_SIZE, size, "inline")
    registry.register(protocol.TASK_LENGTH, length, "inline")
    registry.register(protocol.TASK_GET, get, "inline")
    registry.register(protocol.TASK_SLICE, slice_, "inline")
