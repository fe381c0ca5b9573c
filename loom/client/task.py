"""The original's ``loom.client.task``: the plan node and its resource request."""

from hyperloom.client.task import ResourceRequest, Task

__all__ = ["Task", "ResourceRequest"]
