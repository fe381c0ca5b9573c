"""Task and ResourceRequest: the nodes a user chains into a plan."""

from __future__ import annotations

import os

from ..errors import LoomError
from ..protocol import RESOURCE_CPUS


class ResourceRequest:
    """What a task needs from a worker; today only ``loom/resource/cpus``."""

    __slots__ = ("resources",)

    def __init__(self):
        self.resources = {}

    def add_resource(self, name: str, value: int):
        self.resources[name] = value

    @property
    def names(self):
        return list(self.resources)

    @property
    def n_cpus(self) -> int:
        return int(self.resources.get(RESOURCE_CPUS, 0))

    def __eq__(self, other):
        return isinstance(other, ResourceRequest) and self.resources == other.resources

    def __hash__(self):
        return hash(tuple(sorted(self.resources.items())))

    def __repr__(self):
        return f"<ResourceRequest {self.resources}>"


def cpus(n: int) -> ResourceRequest:
    """A request for ``n`` cores."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"cpus() needs a non-negative integer, got {n!r}")
    request = ResourceRequest()
    request.add_resource(RESOURCE_CPUS, n)
    return request


class Task:
    """A node of a plan. Class-level defaults as in the original client.

    Hashable by identity: the same Task object used twice in one ``submit``
    is computed once; submitting it again later computes it again.
    """

    task_type = None
    inputs = ()
    config = b""
    resource_request = None
    label = None
    metadata = None
    checkpoint_path = None

    def validate(self):
        if self.checkpoint_path is not None and not os.path.isabs(self.checkpoint_path):
            raise LoomError("Checkpoint has to be absolute path")
        if not isinstance(self.task_type, str) or not self.task_type:
            raise LoomError(f"{self!r} has no task_type")

    @property
    def n_cpus(self) -> int:
        request = self.resource_request
        return request.n_cpus if request is not None else 0

    def __repr__(self):
        return f"<Task {self.label or self.task_type!r}>"
