"""The original's ``loom.client.plan``, where the client walks a submit into a plan.

The original's ``Plan`` built protobuf messages of its own wire format; here
the same job is done by ``PlanBuilder`` (hyperloom's wire format), which is
internal to ``Client.submit``: code written for the original never made one.
"""

from hyperloom.client.plan import PlanBuilder

__all__ = ["PlanBuilder"]
