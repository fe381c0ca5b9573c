"""hyperloom: a ZeroMQ workflow runtime for plans of millions of tasks (HyperLoom in Python)."""

__version__ = "0.1.0"

from .local import LocalCluster  # noqa: E402
from .cluster import SlurmCluster  # noqa: E402

__all__ = ["LocalCluster", "SlurmCluster", "__version__"]
