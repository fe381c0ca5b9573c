"""The original's ``loom.client``: hyperloom's client under its old names and modules.

``from loom.client import Client, tasks`` and the original's submodules
(``loom.client.tasks``, ``.task``, ``.client``, ``.errors``, ``.future``,
``.plan``) all give hyperloom's own objects, so code written for the original
runs unchanged.
"""

# hyperloom.client's names, but ``tasks``: that is the module of that name here. Named one by
# one (not ``*``) so that ``tasks`` is bound once; a name added to hyperloom.client's
# ``__all__`` and not here makes ``from loom.client import *`` fail (tested).
from hyperloom.client import (  # noqa: F401
    Client, Future, LoomError, LoomException, ResourceRequest, Task, TaskFailed, __all__)

# The submodules, as the original's package imported them all (``loom.client.errors``
# works after ``import loom.client``).
from . import client, errors, future, plan, task, tasks  # noqa: F401
