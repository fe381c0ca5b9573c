"""What a task implementation sees and returns, and the registry of task types.

A task type is a symbol (``loom/data/merge``, ``my/count``) bound to a
function ``fn(ctx: TaskContext) -> DataObject | Redirect`` and a mode that
says where it runs:

- ``inline``: in the worker's loop; only for cheap work (no I/O, bounded CPU).
- ``thread``: in a thread pool; for blocking work that releases the GIL
  (subprocesses, file I/O).
- ``python``: user Python code; runs where it does not hold the worker's GIL
  (an executor process per core, tiny tasks in batches: ``executor.py``).

A failing implementation raises TaskError(message); any other exception is a
bug in the implementation and is reported as such, never crashing the worker.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..data import DataObject, ExtensionData
    from .run_task import RunDirs

    # What a task implementation is: a DataObject, or a Redirect (python mode may also
    # return plain values, which py_task converts).
    TaskFn = Callable[["TaskContext"], object]

_F = TypeVar("_F", bound="TaskFn")

MODES = ("inline", "thread", "python")


class TaskError(Exception):
    """The task failed; the message goes to the client as TaskFailed."""


class Cancellation:
    """How the worker's loop stops a task that runs outside it (a thread, a process).

    The implementation says how it can be stopped (``on_cancel(stop)``: kill my
    program); the loop calls ``cancel()``. Either may come first. ``stop`` runs
    under a lock, so once ``on_cancel(None)`` returns it will not run any more
    (the program it kills has been reaped, its pid may be reused).
    """

    __slots__ = ("_lock", "_stop", "canceled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], object] | None = None
        self.canceled = False

    def on_cancel(self, stop: Callable[[], object] | None) -> None:
        """Call ``stop()`` on cancel, or now if canceled already; None: nothing to stop."""
        with self._lock:
            self._stop = stop
            if self.canceled and stop is not None:
                stop()

    def cancel(self) -> None:
        with self._lock:
            if self.canceled:
                return
            self.canceled = True
            if self._stop is not None:
                self._stop()


class TaskContext:
    """Everything one execution of a task sees. A plain slotted class: one is made
    per task, on the hot path of tiny tasks. ``cancel`` is a Cancellation for tasks
    that run outside the worker's loop, None for inline ones. ``run_dirs`` is the
    worker's ``run_task.RunDirs`` (reusable run directories), None outside a worker."""

    __slots__ = ("task_id", "task_type", "config", "inputs", "cpu_ids", "work_dir", "pin",
                 "label", "log", "cancel", "run_dirs")

    def __init__(self, task_id: int, task_type: str, config: bytes, inputs: list[DataObject],
                 cpu_ids: tuple[int, ...] = (), work_dir: str = "", pin: bool = False,
                 label: str | None = None, log: logging.Logger | None = None):
        self.task_id = task_id
        self.task_type = task_type
        self.config = config
        self.inputs = inputs
        self.cpu_ids = cpu_ids
        self.work_dir = work_dir
        self.pin = pin
        self.label = label
        self.log = log if log is not None else logging.getLogger("hyperloom.worker")
        self.cancel: Cancellation | None = None
        self.run_dirs: RunDirs | None = None

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_id} {self.task_type}>"


@dataclass
class Redirect:
    """A Python task's answer "run this task in my place" (task redirection).

    ``inputs`` are data objects (already converted from wrappers/values).
    """
    task_type: str
    config: bytes
    inputs: list[DataObject]


@dataclass(frozen=True)
class TaskKind:
    symbol: str
    fn: TaskFn
    mode: str


class TaskRegistry:
    """The task types one worker provides. Registering a symbol twice is an error."""

    def __init__(self) -> None:
        self._kinds: dict[str, TaskKind] = {}
        self.data_types: dict[str, type[ExtensionData]] = {}   # symbol -> its class

    def register(self, symbol: str, fn: TaskFn, mode: str = "thread") -> None:
        if not isinstance(symbol, str) or "/" not in symbol:
            raise ValueError(f"task type symbol {symbol!r} must be namespaced with '/'")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if symbol in self._kinds:
            raise ValueError(f"task type {symbol!r} is already registered")
        self._kinds[symbol] = TaskKind(symbol, fn, mode)

    def register_data_type(self, cls: object) -> None:
        """Register an ``ExtensionData`` subclass under its ``symbol``."""
        from ..data import ExtensionData
        symbol = getattr(cls, "symbol", "")
        if not (isinstance(cls, type) and issubclass(cls, ExtensionData)):
            raise ValueError(f"{cls!r} is not an ExtensionData subclass")
        if not isinstance(symbol, str) or "/" not in symbol or symbol.startswith("loom/"):
            raise ValueError(f"data type symbol {symbol!r} must be namespaced with '/' "
                             f"and not start with 'loom/'")
        if symbol in self.data_types:
            raise ValueError(f"data type {symbol!r} is already registered")
        self.data_types[symbol] = cls

    def task(self, symbol: str, mode: str = "thread") -> Callable[[_F], _F]:
        """Decorator form of ``register``."""
        def decorator(fn: _F) -> _F:
            self.register(symbol, fn, mode)
            return fn
        return decorator

    def get(self, symbol: str) -> TaskKind | None:
        return self._kinds.get(symbol)

    def symbols(self) -> list[str]:
        return sorted(self._kinds)
