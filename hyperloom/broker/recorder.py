"""What the broker core records for traces, as an interface the core calls.

The core never writes files: it calls a ``Recorder``. ``NullRecorder`` (the
default) records nothing; the server opens a ``hyperloom.trace.TraceWriter``
(which has these methods) when a client sends SetTrace, through the factory
it gives the core; tests pass a recording fake.
"""

from __future__ import annotations

from typing import Optional, Protocol
from collections.abc import Callable, Iterable, Sequence


# (id, type, label, input ids) of a task the broker took in or created
SubmittedTask = tuple[int, str, Optional[str], Sequence[int]]


class Recorder(Protocol):
    def worker_joined(self, worker_id: int, address: str, cpus: int) -> None: ...

    def tasks_submitted(self, tasks: Iterable[SubmittedTask]) -> None: ...

    def sample(self, cpu_percent: float, mem_bytes: int) -> None: ...

    def close(self) -> None: ...


# Opens a recorder writing into a directory; raises OSError if it cannot.
RecorderFactory = Callable[[str], Recorder]


class NullRecorder:
    """Records nothing: the broker while no client asked for traces."""

    def worker_joined(self, worker_id: int, address: str, cpus: int) -> None:
        pass

    def tasks_submitted(self, tasks: Iterable[SubmittedTask]) -> None:
        pass

    def sample(self, cpu_percent: float, mem_bytes: int) -> None:
        pass

    def close(self) -> None:
        pass


NULL_RECORDER = NullRecorder()


def no_tracing(directory: str) -> Recorder:
    """The factory of a core built without one: traces cannot be written."""
    raise OSError("this broker was started without a trace writer")
