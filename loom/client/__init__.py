"""The original's ``loom.client``: hyperloom's client under its old names and modules.

``from loom.client import Client, tasks`` and the original's submodules
(``loom.client.tasks``, ``.task``, ``.client``, ``.errors``, ``.future``,
``.plan``) all give hyperloom's own objects, so code written for the original
runs unchanged.
"""

from hyperloom.client import *  # noqa: F403
from hyperloom.client import __all__  # noqa: F401

# The submodules, as the original's package imported them all (``loom.client.errors``
# works after ``import loom.client``); ``tasks`` is the module of that name here.
from . import client, errors, future, plan, task, tasks  # noqa: F401
