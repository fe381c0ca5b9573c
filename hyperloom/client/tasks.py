"""The task vocabulary users call: const, merge, run, py_call, ... (the original's names).

Each function returns a Task whose ``config`` is encoded as the worker
expects it (see hyperloom.protocol and docs/protocol.md, "Task configs").
"""

from __future__ import annotations

import struct

import cloudpickle

from .. import protocol
from ..protocol import encode_py_call_config, encode_run_config
from .task import ResourceRequest, Task, cpus

__all__ = [
    "Task", "ResourceRequest", "cpus", "cpu1", "const", "merge", "open", "split", "save",
    "array_make", "make_array", "size", "length", "get", "slice", "dslice", "dget", "run",
    "py_value", "py_call", "py_task",
    "BASE_GET", "BASE_SLICE", "BASE_SIZE", "BASE_LENGTH", "DATA_CONST", "DATA_MERGE",
    "DATA_OPEN", "DATA_SPLIT", "DATA_SAVE", "ARRAY_MAKE", "RUN", "SCHEDULER_DSLICE",
    "SCHEDULER_DGET", "PY_CALL", "PY_VALUE",
]

cpu1 = cpus(1)

# The original module's names for the task types, for code that builds its own Task
# objects (``task.task_type = tasks.RUN``).
BASE_GET = protocol.TASK_GET
BASE_SLICE = protocol.TASK_SLICE
BASE_SIZE = protocol.TASK_SIZE
BASE_LENGTH = protocol.TASK_LENGTH
DATA_CONST = protocol.TASK_CONST
DATA_MERGE = protocol.TASK_MERGE
DATA_OPEN = protocol.TASK_OPEN
DATA_SPLIT = protocol.TASK_SPLIT
DATA_SAVE = protocol.TASK_SAVE
ARRAY_MAKE = protocol.TASK_ARRAY_MAKE
RUN = protocol.TASK_RUN
SCHEDULER_DSLICE = protocol.TASK_DSLICE
SCHEDULER_DGET = protocol.TASK_DGET
PY_CALL = protocol.TASK_PY_CALL
PY_VALUE = protocol.TASK_PY_VALUE


def _make(task_type, inputs=(), config=b"", request=None, label=None) -> Task:
    task = Task()
    task.task_type = task_type
    task.inputs = tuple(inputs)
    task.config = config
    task.resource_request = request
    if label is not None:
        task.label = label
    return task


def _text(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def const(data) -> Task:
    """A plain object holding ``data`` (str is encoded as UTF-8)."""
    return _make(protocol.TASK_CONST, config=_text(data))


def merge(inputs, delimiter="") -> Task:
    """Concatenate D-objects, ``delimiter`` between consecutive ones."""
    if not isinstance(delimiter, (str, bytes)):
        raise TypeError("merge() delimiter must be str or bytes")
    return _make(protocol.TASK_MERGE, inputs, _text(delimiter))


def open(filename) -> Task:
    """A File object for a path on the worker's (shared) file system."""
    return _make(protocol.TASK_OPEN, config=_text(filename))


def split(input, char=None) -> Task:
    """An Index of ``input``'s lines (``char`` is ignored, as in the original)."""
    return _make(protocol.TASK_SPLIT, (input,))


def save(input, filename) -> Task:
    """Write a D-object to an absolute path on the worker; result ``b""``."""
    return _make(protocol.TASK_SAVE, (input,), _text(filename), cpu1)


def array_make(inputs) -> Task:
    """An Array of the inputs' data objects."""
    return _make(protocol.TASK_ARRAY_MAKE, inputs)


make_array = array_make  # the name the guide's dget example uses


def size(input) -> Task:
    """8-byte little-endian size of ``input``."""
    return _make(protocol.TASK_SIZE, (input,))


def length(input) -> Task:
    """8-byte little-endian length of ``input``."""
    return _make(protocol.TASK_LENGTH, (input,))


def get(input, index) -> Task:
    """Element ``index`` of an Array or Index."""
    return _make(protocol.TASK_GET, (input,), struct.pack("<Q", index))


def slice(input, start, end) -> Task:
    """Elements [start, end) of an Array (an Array) or of an Index (a plain object)."""
    return _make(protocol.TASK_SLICE, (input,), struct.pack("<QQ", start, end))


def dslice(input) -> Task:
    """Dynamic slice: the consumer is expanded into pieces of ``input``."""
    return _make(protocol.TASK_DSLICE, (input,))


def dget(input) -> Task:
    """Dynamic get: the consumer is expanded into one task per element."""
    return _make(protocol.TASK_DGET, (input,))


def run(args, inputs=(), outputs=(None,), stdin=None, request=cpu1) -> Task:
    """Run an external program (see the guide's "Running external programs").

    ``args``: a string split on white space, or a sequence of arguments.
    ``inputs``: ``(task, name)`` pairs; a name starting with ``$`` is a variable,
    ``None`` is standard input. ``outputs``: file names, ``None`` for stdout.
    """
    if isinstance(args, str):
        args = args.split()
    else:
        args = [str(arg) for arg in args]
    pairs = list(inputs)
    if stdin is not None:
        pairs.insert(0, (stdin, None))
    input_tasks = []
    input_names = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"run() inputs must be (task, name) pairs, got {pair!r}")
        input_tasks.append(pair[0])
        input_names.append("+in" if pair[1] is None else str(pair[1]))
    output_names = ["+out" if name is None else str(name) for name in outputs]
    config = encode_run_config(args, input_names, output_names)
    return _make(protocol.TASK_RUN, input_tasks, config, request)


def py_value(obj) -> Task:
    """A PyObj holding ``obj`` (pickled with cloudpickle)."""
    return _make(protocol.TASK_PY_VALUE, config=cloudpickle.dumps(obj), request=cpu1)


def py_call(obj, inputs=(), direct_args=(), context=False) -> Task:
    """Call the function produced by task ``obj`` with ``inputs``.

    ``obj`` produces a PyObj holding a callable, or ``(callable, has_context)``.
    ``context=True`` passes the Context as the first argument (then the direct
    arguments, then the inputs), as a ``(callable, True)`` value does.
    """
    config = encode_py_call_config(tuple(direct_args), bool(context))
    return _make(protocol.TASK_PY_CALL, (obj,) + tuple(inputs), config, cpu1)


def py_task(label=None, request=cpu1, context=False, n_direct_args=0):
    """Decorator: calling the function builds a ``py_call`` task.

    The first ``n_direct_args`` arguments are direct (any picklable value,
    sent in the config); the rest are tasks or futures. With ``context=True``
    the function gets a Context first, then the direct arguments.
    """
    def decorator(fn):
        fn_task = py_value((fn, bool(context)))
        fn_task.label = "#L:" + getattr(fn, "__name__", "fn")

        def builder(*args):
            direct = args[:n_direct_args]
            task = py_call(fn_task, args[n_direct_args:], direct)
            task.resource_request = request
            task.label = label if label is not None else getattr(fn, "__name__", None)
            return task

        builder.__name__ = getattr(fn, "__name__", "py_task")
        builder.__doc__ = getattr(fn, "__doc__", None)
        builder.function = fn
        return builder
    return decorator
