"""The original's ``loom.client.future``: the handle of a submitted task's result."""

from hyperloom.client.future import Future

__all__ = ["Future"]
