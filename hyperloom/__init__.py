"""hyperloom: a ZeroMQ workflow runtime for plans of millions of tasks (HyperLoom in Python).

``hyperloom.LocalCluster`` is imported on first use, so that ``import hyperloom.protocol``
(which every process does) loads nothing but msgpack.
"""

__version__ = "0.1.0"

__all__ = ["LocalCluster", "SlurmCluster", "__version__"]


def __getattr__(name):
    if name == "LocalCluster":
        from .local import LocalCluster
        return LocalCluster
    if name == "SlurmCluster":
        from .cluster import SlurmCluster
        return SlurmCluster
    raise AttributeError(f"module 'hyperloom' has no attribute {name!r}")
