"""The original's ``loom.client.tasks``: hyperloom's task functions, requests and symbols."""

from hyperloom.client.tasks import *  # noqa: F403
from hyperloom.client.tasks import __all__  # noqa: F401
