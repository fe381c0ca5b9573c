"""loom-dashboard: a live web page of a running cluster (docs/dashboard.md).

The dashboard is a separate program that connects to the broker like a client
and asks it for snapshots (GetSnapshot) at its own pace; the broker records
what a dashboard needs only while one asks (hyperloom/broker/snapshot.py).
"""

from .launch import start_dashboard

__all__ = ["start_dashboard"]
