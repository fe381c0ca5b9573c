"""Thin alias of hyperloom.client, so ``from loom.client import Client, tasks`` works."""

from hyperloom.client import *  # noqa: F401,F403
from hyperloom.client import __all__  # noqa: F401
from hyperloom.client import tasks  # noqa: F401
