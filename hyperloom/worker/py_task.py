"""The worker side of ``loom/py/value`` and ``loom/py/call``: running user Python code.

Owns what user functions see (the ``Data`` input wrapper and the ``Context``),
the call convention (context, then direct arguments, then inputs), the
conversion of return values into data objects or a task redirection
(reference §4), and ``execute_python_task``, the single entry point used both
by the executor processes of ``hyperloom.worker.py_pool`` and by the worker
thread that runs a task with big inputs in place (one-core workers).

Differences from the original, on purpose:
- ``Data.read()`` of a non-D-object returns ``b""`` (documented behaviour; the
  original returned garbage);
- ``Data.length()`` exists (documented; the original only had ``len()``);
- ``w[i]`` accepts Python-style negative indexes (the original raised IndexError);
- an invalid element nested in a returned list, and a redirection whose inputs
  are Tasks, fail the task instead of crashing the worker.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import operator
import traceback
from collections.abc import Sequence

import cloudpickle

from .. import protocol
from ..data import Array, DataObject, File, Plain, PyObj
from .taskdef import Redirect, TaskContext, TaskError

INVALID_RESULT = "Invalid result from python code"


class Data:
    """What a user function receives for each input data object."""

    __slots__ = ("_obj",)

    def __init__(self, obj: DataObject):
        self._obj = obj

    def read(self) -> bytes:
        """The content of a D-object; ``b""`` for other objects."""
        raw = self._obj.raw()
        if raw is None:
            return b""
        if type(raw) is bytes:
            return raw
        data = bytes(raw)
        if isinstance(self._obj, File) and isinstance(raw, mmap.mmap):
            raw.close()  # File.raw() made a fresh mmap just for us
        return data

    def size(self) -> int:
        return self._obj.size

    def length(self) -> int:
        return self._obj.length

    def __len__(self) -> int:
        return self._obj.length

    def __getitem__(self, index) -> Data:
        index = operator.index(index)
        length = self._obj.length
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError("index out of range")
        return Data(self._obj.get(index))

    def __iter__(self):
        for index in range(self._obj.length):
            yield Data(self._obj.get(index))

    def unwrap(self):
        """The Python object of a PyObj; None for other data objects."""
        return self._obj.obj if isinstance(self._obj, PyObj) else None

    @property
    def data_object(self) -> DataObject:
        return self._obj

    def __repr__(self):
        return f"<Data {self._obj!r}>"


class Context:
    """The first argument of a function called with ``context=True``."""

    __slots__ = ("task_id", "_log")

    def __init__(self, task_id: int, log: logging.Logger):
        self.task_id = task_id
        self._log = log

    def wrap(self, obj) -> Data:
        """Make ``obj`` a PyObj result (a wrapper is returned unchanged)."""
        return obj if isinstance(obj, Data) else Data(PyObj(obj))

    def _emit(self, level: int, message) -> None:
        self._log.log(level, "PyTask id=%s: %s", self.task_id, message)

    def log_debug(self, message) -> None:
        self._emit(logging.DEBUG, message)

    def log_info(self, message) -> None:
        self._emit(logging.INFO, message)

    def log_warn(self, message) -> None:
        self._emit(logging.WARNING, message)

    def log_error(self, message) -> None:
        self._emit(logging.ERROR, message)

    def log_critical(self, message) -> None:
        self._emit(logging.CRITICAL, message)


# ---------------------------------------------------------------- task types

def execute_py_value(ctx: TaskContext) -> PyObj:
    """``loom/py/value``: the config is the cloudpickled object."""
    config = bytes(ctx.config)
    try:
        obj = cloudpickle.loads(config)
    except Exception:
        raise TaskError("Python exception:\n" + traceback.format_exc()) from None
    # The config already is the pickle: a transfer will not pickle again.
    return PyObj(obj, pickled=config)


def execute_py_call(ctx: TaskContext) -> DataObject | Redirect:
    """``loom/py/call``: call the function held by input 0 on the other inputs."""
    if not ctx.inputs or not isinstance(ctx.inputs[0], PyObj):
        raise TaskError("The first argument is not PyObj")
    direct_args, context_flag = _decode_call_config(ctx.config)
    fn = ctx.inputs[0].obj
    has_context = False
    if isinstance(fn, tuple):  # (callable, has_context), as py_task makes it
        if len(fn) != 2:
            raise TaskError("The first argument must hold a callable or (callable, has_context)")
        fn, has_context = fn
    args = [Data(obj) for obj in ctx.inputs[1:]]
    if has_context or context_flag:
        context = Context(protocol.local_id(ctx.task_id), ctx.log)
        call_args = (context, *direct_args, *args)
    else:
        call_args = (*direct_args, *args)
    try:
        result = fn(*call_args)
    except (Exception, SystemExit):  # sys.exit() in user code must not end the worker
        raise TaskError("Python exception:\n" + traceback.format_exc()) from None
    try:
        return convert_result(result)
    except TaskError:
        raise
    except RecursionError:  # a list that contains itself
        raise TaskError(INVALID_RESULT) from None
    except Exception:  # a user Sequence whose methods raise
        raise TaskError("Python exception:\n" + traceback.format_exc()) from None


def _decode_call_config(config) -> tuple[tuple, bool]:
    try:
        direct_args, context_flag = cloudpickle.loads(bytes(config))
        return tuple(direct_args), bool(context_flag)
    except Exception:
        raise TaskError("Invalid py_call configuration:\n" + traceback.format_exc()) from None


# ---------------------------------------------------------------- results

def convert_result(value) -> DataObject | Redirect:
    """A user function's return value as a data object or a redirection (§4.3)."""
    if _is_task(value):
        return _redirect(value)
    return _to_data(value)


def _is_task(value) -> bool:
    return all(hasattr(value, name) for name in ("task_type", "config", "inputs"))


def _to_data(value) -> DataObject:
    if isinstance(value, Data):
        return value.data_object
    if isinstance(value, str):
        return Plain(value.encode())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Plain(bytes(value))
    if isinstance(value, Sequence):
        return Array([_to_data(item) for item in value])
    raise TaskError(INVALID_RESULT)


def _redirect(task) -> Redirect:
    task_type = task.task_type
    if not isinstance(task_type, str) or not task_type:
        raise TaskError(f"{INVALID_RESULT}: the returned task has no task type")
    inputs = []
    for index, item in enumerate(task.inputs):
        # The redirected task runs here and now: its inputs must already be data.
        if _is_task(item) or type(item).__name__ == "Future":
            raise TaskError(
                f"Task redirection supports one level only: input {index} of the returned "
                f"{task_type} task is a {type(item).__name__}, not an input wrapper or a value")
        inputs.append(_to_data(item))
    config = task.config
    if config is None:
        config = b""
    elif isinstance(config, str):
        config = config.encode()
    return Redirect(task_type, bytes(config), inputs)


# ---------------------------------------------------------------- entry point

BUILTIN_FUNCTIONS = {
    "py_value": execute_py_value,
    "py_call": execute_py_call,
}


def execute_python_task(fn_name: str, ctx: TaskContext) -> DataObject | Redirect:
    """Run a ``python``-mode task: ``py_value``, ``py_call`` or ``"module:qualname"``.

    An extension task type registered in python mode is named by
    ``function_name(fn)``, so an executor process can import it.
    """
    return resolve_function(fn_name)(ctx)


def function_name(fn) -> str:
    """The name ``execute_python_task`` accepts for a module-level function ``fn``."""
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or resolve_function(name) is not fn:
        raise ValueError(f"{fn!r} is not importable as {name!r}; define it at module level")
    return name


def resolve_function(fn_name: str):
    """The function for ``fn_name``; ValueError when it cannot be found."""
    builtin = BUILTIN_FUNCTIONS.get(fn_name)
    if builtin is not None:
        return builtin
    module_name, _, qualname = fn_name.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"unknown python task function {fn_name!r}")
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"unknown python task function {fn_name!r}: {error}") from None
    return obj
