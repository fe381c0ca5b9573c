"""The original's ``loom.client.tasks``: hyperloom's task functions, requests and symbols."""

from hyperloom.client.tasks import *  # noqa: F401,F403
from hyperloom.client.tasks import __all__  # noqa: F401
